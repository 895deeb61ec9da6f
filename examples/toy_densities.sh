#!/usr/bin/env bash
# Fit the residual flow and NSF to three 2-D toys with the same wall-clock budget (one thread,
# seed 0), then draw every learned density beside the data in one figure.
#   bash examples/toy_densities.sh [MINUTES] [OUT_DIR] [FIGURE] [JOBS]
# JOBS fits run at a time (default 1), each on one thread.
set -euo pipefail
minutes=${1:-2}
out=${2:-runs/toys}
figure=${3:-docs/toy_densities.png}
jobs=${4:-1}
mkdir -p "$out"
fit() {  # toy flow minutes out
  pushforward fit --data "$1" --flow "$2" --epochs 1000 --max-minutes "$3" --threads 1 --seed 0 --quiet \
    --overwrite --out "$4/$1-$2" > "$4/$1-$2.log" 2>&1 || echo "$1 $2 failed: $(tail -1 "$4/$1-$2.log")"
}
export -f fit
for toy in moons 8gaussians checkerboard; do
  for flow in residual nsf; do
    echo "$toy $flow $minutes $out"
  done
done | xargs -P "$jobs" -L 1 bash -c 'fit "$@"' _
python3 examples/toy_figure.py "$out" "$figure"
