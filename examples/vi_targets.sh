#!/usr/bin/env bash
# Fit planar (K=32), radial (K=32), IAF, NSF and Sylvester flows to the energies U1-U4 of
# Rezende & Mohamed 2015 and print a markdown table of ELBO and log Z (importance sampling).
#   bash examples/vi_targets.sh [STEPS] [OUT_DIR] [JOBS]
# JOBS runs in parallel, one thread each (default 1). Learning rates: 1e-2 for the planar,
# radial and Sylvester flows (few parameters), 1e-3 for IAF and NSF (MADE / MLP conditioners,
# which diverge at 1e-2).
set -euo pipefail
steps=${1:-2000}
out=${2:-runs/vi}
jobs=${3:-1}
mkdir -p "$out"
fit() {  # target flow
  local extra=() lr=1e-2
  case $2 in planar|radial) extra=(--transforms 32) ;; iaf|nsf) lr=1e-3 ;; esac
  pushforward vi --target "$1" --flow "$2" "${extra[@]}" --steps "$steps" --samples 256 --lr "$lr" \
    --schedule cosine --threads 1 --quiet --json --overwrite --out "$out/$1-$2" > "$out/$1-$2.json" 2>/dev/null \
    || echo '{"failed": true}' > "$out/$1-$2.json"
}
export -f fit
export steps out
for target in u1 u2 u3 u4; do for flow in planar radial iaf nsf sylvester; do echo "$target $flow"; done; done \
  | xargs -P "$jobs" -L 1 bash -c 'fit "$0" "$1"'
echo "| target | flow | ELBO (nats) | log Z ± stderr | reference log Z | ESS fraction |"
echo "|---|---|---|---|---|---|"
for target in u1 u2 u3 u4; do
  for flow in planar radial iaf nsf sylvester; do
    tail -1 "$out/$target-$flow.json" | python3 -c "
import json, sys
m = json.load(sys.stdin)
if m.get('failed'):
    print('| $target | $flow | failed | | | |')
else:
    print(f\"| $target | $flow | {m['elbo']:.4f} | {m['log_z']:.4f} ± {m['log_z_stderr']:.4f} | {m['reference_log_z']:.4f} | {m['ess_fraction']:.2f} |\")"
  done
done
