"""One figure of the runs of examples/toy_densities.sh: for each 2-D toy, the test data beside
the density of every fitted flow on the same box, titled with its test log-likelihood (nats).

    python examples/toy_figure.py runs/toys docs/toy_densities.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pushforward import data as datasets  # noqa: E402
from pushforward.experiment import load_run  # noqa: E402

TOYS = ("moons", "8gaussians", "checkerboard")
FLOWS = ("residual", "nsf")


def main(runs: Path, output: Path, resolution: int = 120) -> None:
    fig, axes = plt.subplots(len(TOYS), 1 + len(FLOWS), figsize=(2.4 * (1 + len(FLOWS)), 2.4 * len(TOYS)))
    for row, toy in zip(axes, TOYS):
        test = datasets.load(toy, seed=0).test
        lo, hi = test.min(0).values, test.max(0).values
        lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
        extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
        xs = torch.linspace(extent[0], extent[1], resolution)
        ys = torch.linspace(extent[2], extent[3], resolution)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
        row[0].hist2d(test[:, 0].numpy(), test[:, 1].numpy(), bins=resolution // 2, range=[extent[:2], extent[2:]])
        row[0].set_title(f"{toy}: test data", fontsize=9)
        for ax, name in zip(row[1:], FLOWS):
            run = runs / f"{toy}-{name}"
            flow = load_run(run)[0]
            with torch.no_grad():
                density = flow.log_prob(grid).exp().reshape(resolution, resolution)
            metrics = json.loads((run / "metrics.json").read_text())
            ax.imshow(density.numpy(), origin="lower", extent=extent, aspect="auto")
            ax.set_title(f"{name}: {metrics['log_likelihood_nats']:.3f} ± {metrics['stderr_nats']:.3f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=70)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
