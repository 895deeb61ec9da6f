r"""``pushforward interpolate`` and ``pushforward manipulate``: images made by moving in the
latent space of a trained image flow (:mod:`pushforward.latent`).

    pushforward interpolate RUN --a 0 --b 1 --steps 8 [--slerp] -o strip.png
    pushforward manipulate RUN --source 0 --positive 3 --negative 1,7 --alphas -1,0,1 -o grid.png

An example is a test-set index of the run's data or an image file; an attribute is a class
list of labelled data (digits, mnist, fashion-mnist) or a folder of images. A pixel value
v in 0..255 of an image file is read as the level v (levels - 1) / 255 of the run's data,
plus 1/2 (the middle of its dequantization bin), the inverse of how the PNGs are written, so
that 8-bit files are pixels + 1/2 for MNIST and the strips written for digits read back as
digits.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np
import torch

from .. import data as datasets
from .. import latent
from .common import load_data, check_output_file, number, one_line_errors, stacked, torch_device
from ..config import FitConfig
from ..experiment import load_run
from ..flows import IMAGE_PRESETS

__all__ = ["interpolate", "manipulate"]


class _Run:
    """A run folder of an image flow, its data loaded when first needed."""

    def __init__(self, run: str, device: str):
        self.path = run
        self.flow, self.config = load_run(run)
        if not isinstance(self.config, FitConfig) or not self.config.event_shape:
            what = self.config.flow if isinstance(self.config, FitConfig) else "a flow fitted to a density"
            raise click.ClickException(f"'{run}' holds a vector flow ({what}): interpolate and manipulate need an "
                                       f"image flow ({', '.join(IMAGE_PRESETS)}) trained on images")
        self.shape = tuple(self.config.event_shape)
        self.levels = self.config.data.levels or 256
        self.device = torch_device(device)
        self.flow.to(self.device)
        self._dataset = None

    @property
    def dataset(self) -> datasets.DataSet:
        if self._dataset is None:
            self._dataset = load_data(self.config.data.model_dump())
        return self._dataset

    def pixels(self, values: np.ndarray, where: str) -> torch.Tensor:
        """8-bit image(s) (..., C, H, W) as data of the run: the level v (levels - 1) / 255 + 1/2."""
        if tuple(values.shape[-3:]) != self.shape:
            raise click.ClickException(f"{where} is {'x'.join(map(str, values.shape[-3:]))} (C x H x W); the model in "
                                       f"'{self.path}' takes {'x'.join(map(str, self.shape))} images")
        return torch.from_numpy(values.astype(np.float32) * ((self.levels - 1) / 255) + 0.5)

    def example(self, spec: str, option: str) -> torch.Tensor:
        """One example (C, H, W): a test-set index or an image file."""
        if spec.lstrip("-").isdigit():
            test = self.dataset.test
            i = int(spec)
            if not 0 <= i < len(test):
                raise click.ClickException(f"{option} {spec}: index out of range; the test split of "
                                           f"{self.config.data.display or self.config.data.name} has {len(test)} "
                                           f"images (0..{len(test) - 1})")
            return test[i]
        return self.pixels(datasets.read_image(spec), f"{option} {spec}")

    def attribute(self, spec: str, option: str, split: str, examples: int) -> torch.Tensor:
        """The examples (N, C, H, W) of an attribute: a folder of images, or a class list of the
        run's labelled data (the first ``examples`` of the split)."""
        if Path(spec).expanduser().is_dir():
            return self.pixels(datasets.folder_pixels(spec), f"{option} {spec}")[:examples]
        name = self.config.data.name
        if name.lower() not in datasets.IMAGE_NAMES:
            raise click.ClickException(f"{option} {spec}: not a folder of images, and the run's data "
                                       f"({self.config.data.display or name}) have no class labels")
        try:
            classes = sorted({int(c) for c in spec.split(",")})
        except ValueError:
            raise click.BadParameter(f"{spec!r} is neither a folder of images nor class labels like 3 or 1,7",
                                     param_hint=option) from None
        x = getattr(self.dataset, split)
        labels = torch.from_numpy(datasets.labels(name, split, self.config.data.data_dir,
                                                  seed=self.config.data.seed)[: len(x)].astype(np.int64))
        chosen = x[torch.isin(labels, torch.tensor(classes))][:examples]
        if len(chosen) == 0:
            raise click.ClickException(f"{option} {spec}: no {split} examples of class {spec} in "
                                       f"{self.config.data.display or name} (classes {labels.min()}..{labels.max()})")
        return chosen


def _alphas(ctx, param, value: str) -> list[float]:
    try:
        alphas = [float(a) for a in value.split(",") if a.strip()]
    except ValueError:
        alphas = []
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise click.BadParameter(f"{value!r} is not one or more finite numbers like -1,-0.5,0,0.5,1")
    return alphas


def _output(output: str, overwrite: bool) -> None:
    if Path(output).suffix.lower() != ".png":
        raise click.ClickException(f"'{output}': the output is an image; give a .png file")
    check_output_file(output, overwrite)


def _write(run: _Run, images: torch.Tensor, cols: int, output: str) -> None:
    from .. import plots

    plots.image_grid(images.detach().cpu().float(), run.shape, run.levels, output, cols=cols)


_output_options = [
    click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The PNG to write."),
    click.option("--overwrite", is_flag=True, help="Replace the output file if it exists."),
    click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, cuda, mps."),
]


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--a", "a", required=True, help="The first image: a test-set index of the run's data or an image file.")
@click.option("--b", "b", required=True, help="The second image, as --a.")
@click.option("--steps", type=number("steps"), default=8, show_default=True,
              help="Decoded images on the path, ends included (at least 2).")
@click.option("--slerp", is_flag=True, help="Spherical interpolation (keeps the norm typical of the base) "
                                            "instead of linear.")
@stacked(_output_options)
@one_line_errors
def interpolate(run, a, b, steps, slerp, output, overwrite, device):
    """Write the decoded path between the latent codes of two images as one strip PNG:
    image A, the STEPS decoded images from A's code to B's, image B."""
    _output(output, overwrite)
    if steps < 2:
        raise click.BadParameter(f"{steps} is below 2: the path includes its two ends", param_hint="--steps")
    r = _Run(run, device)
    x_a, x_b = r.example(a, "--a"), r.example(b, "--b")
    path = latent.interpolate(r.flow, x_a.to(r.device), x_b.to(r.device), steps, "slerp" if slerp else "linear")
    _write(r, torch.cat([x_a[None], path.cpu(), x_b[None]]), steps + 2, output)
    click.echo(f"wrote {output}: {a}, {steps} decoded images, {b}")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--source", "sources", multiple=True, required=True,
              help="An image to move: a test-set index of the run's data or an image file (repeat for more rows).")
@click.option("--positive", required=True,
              help="The examples with the attribute: classes of labelled data (3, or 1,7) or a folder of images.")
@click.option("--negative", required=True, help="The examples without it, as --positive.")
@click.option("--alphas", callback=_alphas, default="-1,-0.5,0,0.5,1", show_default=True,
              help="The multiples alpha of the direction, one column each.")
@click.option("--examples", type=number("count"), default=1000, show_default=True,
              help="Largest number of examples of each class list or folder whose codes are averaged.")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="train", show_default=True,
              help="The split that class lists take their examples from.")
@stacked(_output_options)
@one_line_errors
def manipulate(run, sources, positive, negative, alphas, examples, split, output, overwrite, device):
    """Move images along the latent direction of an attribute and write the grid PNG of
    g(g^{-1}(x) + alpha Delta): a row per source, a column per alpha.

    Delta is the mean code of the --positive examples minus the mean code of the --negative
    ones (Kingma & Dhariwal 2018, section 5).
    """
    _output(output, overwrite)
    r = _Run(run, device)
    x = torch.stack([r.example(s, "--source") for s in sources])
    direction = latent.attribute_direction(r.flow, r.attribute(positive, "--positive", split, examples),
                                           r.attribute(negative, "--negative", split, examples))
    moved = latent.manipulate(r.flow, x, direction, alphas)
    _write(r, moved.flatten(0, 1), len(alphas), output)
    click.echo(f"wrote {output}: {len(sources)} image(s) x {len(alphas)} alphas")
