r"""The ``pushforward`` command, one module per group of sub-commands.

    pushforward fit [--data digits] [--flow maf] --out DIR [--nproc N]      (density: fit, evaluate, sample)
    pushforward evaluate DIR [--split test] [--json] [--device cuda]
    pushforward sample DIR -n 64 -o samples.png [--temperature 0.7]
    pushforward vi --target u1 --flow planar --out DIR                       (vi)
    pushforward vae --posterior sylvester-orthogonal --data-dir DIR --out DIR (vae)
    pushforward interpolate DIR --a 0 --b 1 -o strip.png                     (latent)
    pushforward manipulate DIR --source 0 --positive 7 --negative 1 -o grid.png

Shared options, argument types and the one-line error handling are in :mod:`.common`; the
figures of a run are made by :mod:`pushforward.plots`. Bad input (unknown names, missing or
broken files, NaN/inf, wrong number of columns, a corrupted run folder) ends with a one-line
``error: ...`` and exit status 1, before anything in an existing run folder is changed.
"""

from __future__ import annotations

import click

from . import density, latent, vae, vi

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pushforward")
def main():
    """Normalizing flows: fit, evaluate and sample on built-in data sets or your files."""


for command in (density.fit, density.evaluate, density.sample, vi.vi, vae.vae, latent.interpolate, latent.manipulate):
    main.add_command(command)
