r"""Checks of arguments shared by the library and the command line: sizes, numbers and memory.

Each check raises ValueError with a message that names the argument and the accepted range,
so that the library's callers and ``pushforward``'s one-line errors say the same thing.

    >>> check_arguments(features=2, transforms=0)
    Traceback (most recent call last):
    ...
    ValueError: transforms must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Range", "RANGES", "check_arguments", "memory_bytes", "check_memory", "training_memory", "format_bytes"]


@dataclass(frozen=True)
class Range:
    """The accepted values of a numeric argument: an integer or a finite float, bounded below by
    ``low`` (excluded when ``low_open``) and above by ``high`` (excluded when ``high_open``)."""

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    integer: bool = False
    high_open: bool = False

    def describe(self, plural: bool = False) -> str:
        """The range in words, e.g. "an integer >= 1" or "a finite number > 0" ("integers >= 1"
        and "finite numbers > 0" when ``plural``)."""
        text = ("integers" if plural else "an integer") if self.integer else (
            "finite numbers" if plural else "a finite number")
        if self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            text += f"{' and' if self.low is not None else ''} {'<' if self.high_open else '<='} {self.high:g}"
        return text

    def contains(self, value: object) -> bool:
        """Whether ``value`` (a Python or numpy number, not a bool) lies in the range."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, name: str, value: object) -> None:
        """Raise ValueError("NAME must be RANGE, got VALUE") unless ``value`` is in the range."""
        if not self.contains(value):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")


_SIZE, _COUNT = Range(1, integer=True), Range(0, integer=True)
_POSITIVE, _NON_NEGATIVE = Range(0, low_open=True), Range(0)

# The one table of numeric arguments: the library's checks and the command line's option types
# (pushforward.cli.common.number) read it.
RANGES: dict[str, Range] = {
    **dict.fromkeys(["features", "transforms", "hidden_features", "bins", "units", "layers", "embedding",
                     "integrand_features", "nodes", "degree", "polynomials", "columns", "reflections", "latent",
                     "prior_transforms", "epochs", "steps", "samples", "batch_size", "patience", "threads", "nproc",
                     "dim", "count", "iw_samples", "test_examples", "levels", "hidden_channels",
                     "iterations", "terms", "max_evaluations"], _SIZE),
    **dict.fromkeys(["context_features", "anneal_steps", "seed", "blocks", "exact_terms"], _COUNT),
    "log_z_samples": Range(2, integer=True),
    **dict.fromkeys(["lr", "clip_grad", "max_minutes", "temperature", "rtol", "atol", "time", "step_size"], _POSITIVE),
    **dict.fromkeys(["weight_decay", "warmup", "kinetic", "jacobian"], _NON_NEGATIVE),
    "beta0": Range(0, low_open=True, high=1),
    # residual flows: a Lipschitz bound c < 1 (c = 1 is no contraction), a stopping probability < 1
    # (1 would never draw the Russian roulette's further terms and bias it)
    **dict.fromkeys(["coefficient", "stop_probability"], Range(0, low_open=True, high=1, high_open=True)),
}


def check_arguments(**values: object) -> None:
    """Check numeric arguments against :data:`RANGES` by name; None (a default left unset) passes,
    and a sequence (``hidden_features``) is checked element by element.

    Raises:
        ValueError: naming the first argument out of range and the accepted range.
        KeyError: for a name that :data:`RANGES` lacks (a programming error).
    """
    for name, value in values.items():
        if value is None:
            continue
        accepted = RANGES[name]
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not value or not all(accepted.contains(v) for v in value):
                raise ValueError(f"{name} must be one or more {accepted.describe(plural=True)}, got {list(value)!r}")
        else:
            accepted.check(name, value)


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size, e.g. "1.5 GB"."""
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def memory_bytes() -> int:
    """The physical memory of this machine in bytes (``sysconf``; 2**63 where unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63


def check_memory(what: str, estimate: float) -> None:
    """Refuse a job whose memory ``estimate`` (bytes) exceeds this machine's physical memory.

    Raises:
        ValueError: "WHAT needs about X, more than the Y of this machine's memory".
    """
    available = memory_bytes()
    if estimate > available:
        raise ValueError(f"{what} needs about {format_bytes(estimate)}, more than the "
                         f"{format_bytes(available)} of this machine's memory")


def training_memory(features: int, transforms: int, hidden_features: Sequence[int] | None, batch: int,
                    itemsize: int = 4) -> int:
    """A lower bound of the bytes that training a flow of these sizes needs: four copies of the
    parameters (weights, gradients, Adam's two moments), at least ``transforms`` × (``features``
    + the products of consecutive layer widths features, *hidden_features, features) of them,
    and one mini-batch of ``batch`` activations for each layer width of each transform.

    It ignores the preset's own defaults (``hidden_features`` None counts no hidden layers), so
    it only refuses sizes that cannot fit whatever the preset adds.
    """
    widths = [features, *hidden_features, features] if hidden_features else [features]
    params = transforms * (features + sum(a * b for a, b in zip(widths, widths[1:])))
    activations = batch * transforms * sum(widths)
    return itemsize * (4 * params + activations)
