r"""PNG figures of a run: learning curve, 2-D density beside the data, and image sample grids."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .core import Flow  # noqa: E402
from .train import atomic_write  # noqa: E402

__all__ = ["learning_curve", "density_2d", "image_grid", "save_figure"]


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """Save ``fig`` as a PNG through :func:`~pushforward.train.atomic_write` and close it.

    Raises:
        OSError: naming ``path`` if it cannot be written (an old file there is kept).
    """
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def learning_curve(history: list[dict], path: str | os.PathLike) -> None:
    """Plot the training loss and the validation log-likelihood (nats) per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [-h["train_loss"] for h in history], label="train log-likelihood")
    ax.plot(epochs, [h["valid_log_likelihood"] for h in history], label="validation log-likelihood")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def density_2d(flow: Flow, data: Tensor, path: str | os.PathLike, resolution: int = 200) -> None:
    """Plot 2-D data (a histogram) beside the flow's density on a grid over the same box.

    Shapes: data (N, 2).
    """
    lo, hi = data.min(0).values, data.max(0).values
    pad = 0.05 * (hi - lo)  # inside the support of a `fit --base box` flow (the training range + 10%)
    lo, hi = lo - pad, hi + pad
    xs = torch.linspace(float(lo[0]), float(hi[0]), resolution)
    ys = torch.linspace(float(lo[1]), float(hi[1]), resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    param = next(flow.parameters())
    flow.eval()
    with torch.no_grad():
        density = flow.log_prob(grid.to(param)).exp().reshape(resolution, resolution).cpu()
    extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=resolution // 2, range=[extent[:2], extent[2:]])
    axes[0].set_title("data")
    axes[1].imshow(density.numpy(), origin="lower", extent=extent, aspect="auto")
    axes[1].set_title("learned density")
    fig.tight_layout()
    save_figure(fig, path)


def image_grid(images: Tensor, image_shape: tuple[int, ...], levels: int, path: str | os.PathLike) -> None:
    """Save images in [0, levels) as one grid PNG (values clipped): grey for one channel, in colour
    for three (other channel counts are averaged to grey).

    Shapes: images (N, C*H*W) or (N, C, H, W) with image_shape (C, H, W).
    """
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    c, h, w = image_shape
    pixels = images.reshape(n, c, h, w).floor().clamp(0, levels - 1) / (levels - 1)
    pixels = (pixels if c == 3 else pixels.mean(1, keepdim=True).expand(n, 3, h, w)).permute(0, 2, 3, 1).numpy()
    canvas = np.zeros((rows * (h + 1), cols * (w + 1), 3))
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, k * (w + 1) : k * (w + 1) + w] = pixels[i]
    zoom = max(1, 512 // max(canvas.shape[:2]))  # small images (8 x 8 digits) enlarged, pixels kept sharp
    canvas = canvas.repeat(zoom, 0).repeat(zoom, 1)
    atomic_write(path, lambda f: plt.imsave(f, canvas, format="png"))
