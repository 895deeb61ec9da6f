r"""PNG figures of a run: learning curve, 2-D density beside the data, and image sample grids.

Figures are :class:`matplotlib.figure.Figure` objects made without pyplot, so that importing
this module leaves matplotlib's backend (and a user's interactive session) alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.image
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .atomic import atomic_write
from .core import Flow
from .targets import grid_log_z
from .transforms.numerical import ConvergenceError

__all__ = ["learning_curve", "density_2d", "image_grid", "save_figure", "subplots", "fit_figures", "vi_figures",
           "target_density", "vae_figures"]


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4)):
    """A new figure (not registered with pyplot) and its axes, as ``pyplot.subplots`` returns them."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Save ``fig`` as a PNG through :func:`~pushforward.atomic.atomic_write`.

    Raises:
        OSError: naming ``path`` if it cannot be written (an old file there is kept).
    """
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def learning_curve(history: list[dict], path: str | os.PathLike) -> None:
    """Plot the training loss and the validation log-likelihood (nats) per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, ax = subplots()
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
    fig, axes = subplots(1, 2, figsize=(10, 5))
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=resolution // 2, range=[extent[:2], extent[2:]])
    axes[0].set_title("data")
    axes[1].imshow(density.numpy(), origin="lower", extent=extent, aspect="auto")
    axes[1].set_title("learned density")
    fig.tight_layout()
    save_figure(fig, path)


def image_grid(images: Tensor, image_shape: tuple[int, ...], levels: int, path: str | os.PathLike,
               cols: int | None = None) -> None:
    """Save images in [0, levels) as one grid PNG (values clipped), row by row with ``cols``
    images a row (default: a square grid): grey for one channel, in colour for three (other
    channel counts are averaged to grey).

    Shapes: images (N, C*H*W) or (N, C, H, W) with image_shape (C, H, W).
    """
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
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
    atomic_write(path, lambda f: matplotlib.image.imsave(f, canvas, format="png"))


# --- the figures of a run folder -------------------------------------------------------------

def fit_figures(out: Path, flow: Flow, dataset, history: list[dict]) -> None:
    """The PNGs of a ``fit`` run: learning curve, the density of 2-D data beside its test
    points, and a grid of 64 samples (seeded, in the data space) for images."""
    if history:
        learning_curve(history, out / "learning_curve.png")
    if dataset.features == 2:
        density_2d(flow, dataset.test, out / "density.png")
    if dataset.image_shape is not None:
        torch.manual_seed(0)
        samples = flow.sample((64,)).float()
        if dataset.to_data is not None:
            with torch.no_grad():
                samples = dataset.to_data(samples)[0]
        image_grid(samples, dataset.image_shape, dataset.levels or 256, out / "samples.png")


def vi_figures(out: Path, flow: Flow, target, history: list[dict]) -> None:
    """The PNGs of a ``vi`` run: the ELBO per step (with the reference log Z where known) and,
    for 2-D targets, :func:`target_density`."""
    if history:
        fig, ax = subplots()
        ax.plot([h["step"] for h in history], [h["elbo"] for h in history], label="ELBO (beta = 1)")
        if target.log_z is not None:
            ax.axhline(target.log_z, color="k", ls="--", lw=1, label="reference log Z")
        ax.set_xlabel("step")
        ax.set_ylabel("nats")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, out / "elbo.png")
    if target.dim == 2:
        target_density(flow, target, out / "density.png")


def target_density(flow: Flow, target, path: Path, resolution: int = 200, samples: int = 100_000) -> None:
    r"""Save the target density beside q's density and a histogram of q's samples (2-D targets).

    The target is shown normalised by its log Z on the plotting box (grid estimate); q's
    density needs its inverse, and is left out (with a note) where that fails to converge.
    """
    box = target.box
    if box is None:
        with torch.no_grad():
            x = flow.sample((10_000,)).double()
        lo, hi = torch.quantile(x, 0.005, 0), torch.quantile(x, 0.995, 0)
        box = tuple((float(a) - 0.5, float(b) + 0.5) for a, b in zip(lo, hi))
    (x0, x1), (y0, y1) = box
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    param = next(flow.parameters())
    with torch.no_grad():
        log_p = target.log_prob(grid)
        log_p = log_p - grid_log_z(target.log_prob, box, 400)
        try:
            log_q = flow.log_prob(grid.to(param)).double().cpu()
        except (ConvergenceError, ValueError):
            log_q = None
        x = flow.sample((samples,)).double().cpu()
    extent = (x0, x1, y0, y1)
    fig, axes = subplots(1, 3, figsize=(15, 5))
    axes[0].imshow(log_p.exp().reshape(resolution, resolution).numpy(), origin="lower", extent=extent, aspect="auto")
    axes[0].set_title(f"target {target.name}")
    if log_q is not None:
        axes[1].imshow(log_q.exp().reshape(resolution, resolution).numpy(), origin="lower", extent=extent,
                       aspect="auto")
    else:
        axes[1].text(0.5, 0.5, "q's inverse did not converge", ha="center", transform=axes[1].transAxes)
    axes[1].set_title("q density")
    axes[2].hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=resolution // 2, range=[(x0, x1), (y0, y1)])
    axes[2].set_title("q samples")
    fig.tight_layout()
    save_figure(fig, path)


def vae_figures(out: Path, model, image_shape: tuple[int, ...], history: list[dict]) -> None:
    """The PNGs of a ``vae`` run: train loss and validation -ELBO per epoch (nats per image) and
    a grid of 64 decoded samples."""
    if history:
        fig, ax = subplots()
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (warmed-up -ELBO)")
        ax.plot(epochs, [h["valid_neg_elbo"] for h in history], label="validation -ELBO")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, out / "learning_curve.png")
    image_grid(model.sample(64).cpu() * 256, image_shape, 256, out / "samples.png")
