"""The README's table of binarized-MNIST VAEs from ``pushforward vae`` run folders.

    python examples/vae_table.py runs/vae/gaussian runs/vae/planar runs/vae/iaf runs/vae/sylvester

Prints one markdown row per run: the posterior and its size, the epochs reached in the time
budget, the test negative ELBO and importance-weighted -log p(x) (nats per image, ± standard
error over the test images), and the figure published by van den Berg et al. 2018 (Table 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# van den Berg et al. 2018, Sylvester normalizing flows, Table 1: -log p(x) on binarized MNIST.
PUBLISHED = {"gaussian": 86.55, "planar": 86.06, "iaf": 84.20, "sylvester-orthogonal": 83.32}


def size(model: dict) -> str:
    """The posterior's size as the paper states it: K layers, M columns, MADE widths."""
    kind, k = model["posterior"], model["transforms"]
    if kind == "gaussian":
        return "diagonal"
    if kind.startswith("sylvester-orthogonal"):
        return f"K={k or 16}, M={model['columns']}"
    if kind == "iaf":
        return f"K={k or 4}, MADE {'x'.join(map(str, model['flow_hidden_features']))}"
    return f"K={k or 16}"


def row(run: Path) -> str:
    """One markdown row from a run folder's config.json and metrics.json (nats per image)."""
    model = json.loads((run / "config.json").read_text())["model"]
    m = json.loads((run / "metrics.json").read_text())
    published = PUBLISHED.get(model["posterior"])
    return (f"| {model['posterior']} | {size(model)} | {m['epochs']} ({m['seconds'] / 60:.0f} min, {m['stopped']}) "
            f"| {m['neg_elbo']:.2f} ± {m['neg_elbo_stderr']:.2f} | {m['nll']:.2f} ± {m['nll_stderr']:.2f} "
            f"| {m['samples']} × {m['n_examples']} | {published if published else ''} |")


def main(runs: list[Path]) -> None:
    """Print the table's header and one row per run folder."""
    print("| posterior | size | epochs (training time, stopped by) | test -ELBO (nats) | test -log p(x) (nats) "
          "| importance samples × test images | published -log p(x) |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        print(row(run))


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
