"""One figure of the U1-U4 runs of examples/vi_targets.sh: each target beside the samples of
every fitted flow q (histograms of 100,000 draws on the target's box).

    python examples/vi_figure.py runs/vi docs/vi_targets.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pushforward.flows import PRESETS  # noqa: E402
from pushforward.targets import get_target  # noqa: E402

TARGETS = ("u1", "u2", "u3", "u4")
FLOWS = ("planar", "radial", "iaf", "nsf", "sylvester")


def load_q(run: Path):
    """The flow q of a ``pushforward vi`` run folder."""
    config = json.loads((run / "config.json").read_text())
    flow = PRESETS[config["flow"]](config["features"], **config["flow_kwargs"])
    flow.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    return flow.eval()


def main(runs: Path, output: Path, resolution: int = 150, samples: int = 100_000) -> None:
    fig, axes = plt.subplots(len(TARGETS), 1 + len(FLOWS), figsize=(2.2 * (1 + len(FLOWS)), 2.2 * len(TARGETS)))
    for row, name in zip(axes, TARGETS):
        target = get_target(name, 2)
        (x0, x1), (y0, y1) = target.box
        xs, ys = torch.linspace(x0, x1, resolution), torch.linspace(y0, y1, resolution)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2).double()
        row[0].imshow(target.log_prob(grid).exp().reshape(resolution, resolution), origin="lower",
                      extent=(x0, x1, y0, y1), aspect="auto")
        row[0].set_title(f"{name.upper()} target", fontsize=9)
        for ax, flow in zip(row[1:], FLOWS):
            run = runs / f"{name}-{flow}"
            metrics = json.loads((run / "metrics.json").read_text())
            with torch.no_grad():
                x = load_q(run).sample((samples,))
            ax.hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=resolution, range=[(x0, x1), (y0, y1)])
            ax.set_title(f"{flow}: ELBO {metrics['elbo']:.2f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=70)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
