#!/usr/bin/env bash
# FFJORD with and without Finlay et al.'s regularisers beside MAF and NSF on three 2-D toys, the
# same wall-clock budget each (one thread, seed 0), then a table of test nats and the function
# evaluations per training step (python3 examples/toy_ffjord_table.py).
#   bash examples/toy_ffjord.sh [MINUTES] [OUT_DIR] [JOBS]
set -euo pipefail
minutes=${1:-2}
out=${2:-runs/toys-ffjord}
jobs=${3:-1}
mkdir -p "$out"
fit() {  # toy label minutes out [options...]
  local toy=$1 label=$2 minutes=$3 out=$4
  shift 4
  pushforward fit --data "$toy" --epochs 1000 --max-minutes "$minutes" --threads 1 --seed 0 --quiet \
    --overwrite --out "$out/$toy-$label" "$@" > "$out/$toy-$label.log" 2>&1 \
    || echo "$toy $label failed: $(tail -1 "$out/$toy-$label.log")"
}
export -f fit
for toy in moons 8gaussians checkerboard; do
  echo "$toy maf $minutes $out --flow maf"
  echo "$toy nsf $minutes $out --flow nsf"
  echo "$toy ffjord $minutes $out --flow ffjord"
  echo "$toy ffjord-regularised $minutes $out --flow ffjord --kinetic 0.1 --jacobian 0.1"
done | xargs -P "$jobs" -L 1 bash -c 'fit "$@"' _
python3 examples/toy_ffjord_table.py "$out"
