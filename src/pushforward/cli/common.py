r"""What the ``pushforward`` sub-commands share: one-line errors, the options of a run
(device, threads, run folder, JSON, progress), and the parsing of sizes and devices.

``fit`` (:mod:`.density`), ``vi`` (:mod:`.vi`) and ``vae`` (:mod:`.vae`) all write a run
folder and take the same run options, declared once here by :func:`run_options`.
"""

from __future__ import annotations

import json
import functools
import os
from pathlib import Path

import click
import torch

from .. import data as datasets
from ..checks import RANGES, Range
from ..flows import preset_options
from ..runs import check_out
from ..transforms.numerical import ConvergenceError

__all__ = ["load_data", "emit", "one_line_errors", "run_options", "tensorboard_option", "number", "SIZES", "IMAGE_SIZE", "fresh_out", "check_output_file", "torch_device", "preset_kwargs",
           "stacked"]


class _Number(click.ParamType):
    """A click type for a number in a :class:`~pushforward.checks.Range`: an integer, or a float
    that is finite (NaN and infinities are refused)."""

    def __init__(self, accepted: Range):
        self.accepted = accepted
        self.name = "integer" if accepted.integer else "float"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(value) if self.accepted.integer else float(value)
            except ValueError:
                self.fail(f"{value!r} is not {self.accepted.describe()}", param, ctx)
        if not self.accepted.contains(number):
            self.fail(f"{value!r} is not {self.accepted.describe()}", param, ctx)
        return number


def number(name: str) -> click.ParamType:
    """The click type of the numeric option ``name`` (e.g. "lr", "epochs"): its range is the
    library's, :data:`pushforward.checks.RANGES`, so a bad value gets the same one-line error
    ("Invalid value for '--lr': 'nan' is not a finite number > 0") from every command."""
    return _Number(RANGES[name])


def one_line_errors(command):
    """Turn the library's documented errors into ``error: ...`` and exit status 1.

    Catches ValueError, ImportError, ConvergenceError (a numerical inverse or an ODE solve that
    did not converge), every OSError (a missing, unreadable or unwritable file, a path below a
    file, a full disk) and running out of memory (MemoryError, a device's OutOfMemoryError), and
    re-raises the first line of the message as a click.ClickException; an OSError names its
    path ("PATH: Not a directory").
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OSError as e:
            raise click.ClickException(_os_message(e)) from None
        except (MemoryError, torch.OutOfMemoryError) as e:
            raise click.ClickException(f"out of memory ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                                       "; try smaller sizes") from None
        except (ValueError, ImportError, ConvergenceError) as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    return wrapper


def _os_message(error: OSError) -> str:
    if error.filename is None:  # raised with a message of the library's own
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    return f"{paths}: {error.strerror or type(error).__name__}"


def run_options(default_out: str, threads_help: str = "torch.set_num_threads (default: torch's choice).",
                json_help: str = "Print the metrics as one JSON line."):
    """Decorator adding the options of a command that writes a run folder: ``--device``,
    ``--threads``, ``--out`` (default described by ``default_out``, e.g. "runs/DATA-FLOW"),
    ``--overwrite``, ``--json`` (parameter ``as_json``) and ``--quiet``."""
    options = [
        click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, cuda, cuda:N, mps."),
        click.option("--threads", type=number("threads"), default=None, help=threads_help),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help=f"Run folder to write (default: {default_out}, numbered if it exists)."),
        click.option("--overwrite", is_flag=True,
                     help="Replace a run already in --out (never a folder that is not a run); the old run "
                          "stays until the new one is valid."),
        click.option("--json", "as_json", is_flag=True, help=json_help),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]

    return stacked(options)


def stacked(options: list):
    """One decorator applying click ``options`` in the order given (the first shown first in --help)."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def tensorboard_option(command):
    """Decorator adding ``--tensorboard DIR`` (parameter ``tensorboard``): the folder that the
    training engine writes TensorBoard scalars to (:func:`pushforward.engine.train`)."""
    return click.option("--tensorboard", type=click.Path(file_okay=False), default=None,
                        help="Log training scalars (loss, validation figure, learning rate, seconds, NFE) to this "
                             "folder for TensorBoard; watch with: tensorboard --logdir DIR.")(command)


def absolute(path: str | None) -> str | None:
    """``path`` made absolute (``~`` expanded), so that a run's config works from any folder; None as it is."""
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def fresh_out(out: str | Path | None, default: str, overwrite: bool) -> Path:
    """The run folder: ``out``, or runs/DEFAULT (runs/DEFAULT-2, -3, ... if it exists), checked
    by :func:`pushforward.runs.check_out` before anything is written.

    Raises:
        pushforward.runs.RunFolderError (a ValueError): for an empty name, a path below a file, a
            folder that is not empty and not a run, or a run without ``overwrite``.
    """
    if out is None:
        stem = out = Path("runs") / default
        i = 1
        while out.exists():
            i += 1
            out = stem.with_name(f"{stem.name}-{i}")
    return check_out(out, overwrite)


def check_output_file(path: str | Path, overwrite: bool) -> None:
    """Check that the output file ``path`` may be written: it does not exist (or ``overwrite``),
    and the nearest existing folder above it is a folder.

    Raises:
        click.ClickException: otherwise, naming the path.
    """
    path = Path(path)
    if path.is_dir():
        raise click.ClickException(f"'{path}' is a folder; give a file name")
    if path.exists() and not overwrite:
        raise click.ClickException(f"'{path}' exists; use --overwrite to replace it")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise click.ClickException(f"'{existing}' is a file, not a folder: cannot write '{path}'")


class _Sizes(click.ParamType):
    """A click type for sizes, "512,512" (or "512x512"), as a tuple of integers >= 1: hidden
    layer sizes, or an image size (``example`` shows the form in the message)."""

    name = "sizes"

    def __init__(self, example: str = "512,512"):
        self.example = example

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(s) for s in value.replace("x", ",").split(",") if s.strip())
        except ValueError:
            sizes = ()
        if not sizes or not all(RANGES["hidden_features"].contains(size) for size in sizes):
            self.fail(f"{value!r} is not one or more {RANGES['hidden_features'].describe(plural=True)} "
                      f"like {self.example}", param, ctx)
        return sizes


SIZES = _Sizes()
IMAGE_SIZE = _Sizes("32 or 28,28")


def torch_device(name: str) -> torch.device:
    """``--device NAME`` as a torch.device, or a one-line error if this machine has no such device.

    Raises:
        click.ClickException: for an unknown device name, or CUDA/MPS (or a CUDA index) that this
            machine lacks.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise click.ClickException(f"--device {name}: unknown device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.ClickException(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise click.ClickException(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise click.ClickException(f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise click.ClickException(f"--device {name}: unsupported device; use cpu, cuda or mps")
    return device


def preset_kwargs(flow: str, options: dict) -> dict:
    """The options that flow preset ``flow``'s signature takes, without those left unset (None).

    Raises:
        click.UsageError: for an option given on the command line that the preset does not take.
    """
    accepted = preset_options(flow)
    ctx = click.get_current_context()
    for name in options:
        if name not in accepted and ctx.get_parameter_source(name).name != "DEFAULT":
            raise click.UsageError(f"--{name.replace('_', '-')} does not apply to --flow {flow}")
    return {k: v for k, v in options.items() if k in accepted and v is not None}


def emit(metrics: dict, as_json: bool, line: str) -> None:
    """Print the run's metrics as one JSON line (``--json``) or as the human-readable ``line``."""
    click.echo(json.dumps(metrics) if as_json else line)


def load_data(spec: dict) -> datasets.DataSet:
    """The data set a run's config.json names (its "data" entry), loaded as at fit time."""
    size = spec.get("image_size")
    return datasets.load(spec["name"], spec.get("data_dir"), seed=spec.get("seed", 0),
                         test_path=spec.get("test_path"), n=spec.get("n"), images=spec.get("images", False),
                         image_size=size if size is None or len(size) > 1 else size[0])
