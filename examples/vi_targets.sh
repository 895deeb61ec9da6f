#!/usr/bin/env bash
# Fit planar (K=32), radial (K=32), IAF, NSF and Sylvester flows to the energies U1-U4 of
# Rezende & Mohamed 2015 and print a markdown table of ELBO and log Z (importance sampling).
#   bash examples/vi_targets.sh [STEPS] [OUT_DIR]
set -euo pipefail
steps=${1:-2000}
out=${2:-runs/vi}
mkdir -p "$out"
echo "| target | flow | ELBO (nats) | log Z ± stderr | reference log Z | ESS fraction |"
echo "|---|---|---|---|---|---|"
for target in u1 u2 u3 u4; do
  for flow in planar radial iaf nsf sylvester; do
    extra=()
    case $flow in planar|radial) extra=(--transforms 32) ;; esac
    pushforward vi --target "$target" --flow "$flow" "${extra[@]}" --steps "$steps" --samples 256 --lr 1e-2 \
      --schedule cosine --threads 2 --quiet --json --overwrite --out "$out/$target-$flow" 2>/dev/null \
      | tail -1 | python3 -c "import json,sys; m=json.load(sys.stdin); print(f\"| $target | $flow | {m['elbo']:.4f} | {m['log_z']:.4f} ± {m['log_z_stderr']:.4f} | {m['reference_log_z']:.4f} | {m['ess_fraction']:.2f} |\")" \
      || echo "| $target | $flow | failed | | | |"
  done
done
