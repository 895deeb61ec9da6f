#!/usr/bin/env bash
# Binarized-MNIST VAEs with a Gaussian, planar, IAF and orthogonal-Sylvester posterior, each
# trained for at most MINUTES of wall clock on one thread, two at a time (one per core), then
# evaluated on the 10,000 test images (negative ELBO and importance-weighted -log p(x)).
# Usage: bash examples/vae_mnist.sh [MINUTES] [OUT] [IW_SAMPLES] [DATA_DIR]
# Prints the README's table (examples/vae_table.py) when all four are done.
set -euo pipefail
MINUTES=${1:-30}
OUT=${2:-runs/vae}
IW=${3:-1000}
DATA=${4:-../shared/data/mnist}
mkdir -p "$OUT"
run() {  # name, then the posterior's options
    local name=$1; shift
    pushforward vae --data-dir "$DATA" --max-minutes "$MINUTES" --threads 1 --iw-samples "$IW" \
        --out "$OUT/$name" --json "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
}
run gaussian --posterior gaussian &
run sylvester --posterior sylvester-orthogonal --transforms 8 --columns 16 --context-features 64 &
wait
run planar --posterior planar &
run iaf --posterior iaf &
wait
python "$(dirname "$0")/vae_table.py" "$OUT"/gaussian "$OUT"/planar "$OUT"/iaf "$OUT"/sylvester
