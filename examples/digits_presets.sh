#!/usr/bin/env bash
# Train every preset on `digits` within a wall-clock budget and print a markdown table of the
# test log-likelihoods (nats, bits/dim) beside the full-covariance Gaussian.
#   bash examples/digits_presets.sh [MINUTES] [OUT_DIR] [PRESET ...]
set -euo pipefail
minutes=${1:-4}
out=${2:-runs/digits-presets}
shift $(( $# > 2 ? 2 : $# ))
presets=${*:-$(python3 -c "from pushforward.flows import PRESETS; print(' '.join(sorted(PRESETS)))")}
mkdir -p "$out"
for flow in $presets; do
  extra=()
  [ "$flow" = nsf ] && extra=(--autoregressive --hidden-features 256,256)
  pushforward fit --data digits --flow "$flow" --epochs 1000 --max-minutes "$minutes" --threads 1 --quiet \
    --overwrite --out "$out/$flow" "${extra[@]}" > "$out/$flow.log" 2>&1 || echo "$flow failed: $(tail -1 "$out/$flow.log")"
done
python3 examples/results_table.py "$out"/*/
