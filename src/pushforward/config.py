r"""The schema of a run folder's ``config.json``, one pydantic model per command.

``pushforward fit`` writes a :class:`FitConfig`, ``vi`` a :class:`ViConfig`, ``vae`` a
:class:`VaeConfig`; :func:`read_config` reads any of them and says which key is missing or
wrong. Numbers are checked against the library's ranges (:data:`pushforward.checks.RANGES`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from .checks import RANGES, check_arguments
from .distributions import BASES

__all__ = ["DataConfig", "TrainConfig", "Settings", "FitConfig", "ViConfig", "VaeConfig", "read_config", "validate_config"]


def _ranged(name: str, kind: type) -> Any:
    """``kind`` (int or float) checked against ``RANGES[name]``."""

    def check(value):
        RANGES[name].check(name, value)
        return value

    return Annotated[kind, AfterValidator(check)]


def _check_flow_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The numeric arguments of a preset (those named in ``RANGES``: coefficient, terms, rtol, ...)
    checked against their ranges; the preset checks the others when it is built."""
    check_arguments(**{k: v for k, v in kwargs.items() if k in RANGES})
    return kwargs


_FlowKwargs = Annotated[dict[str, Any], AfterValidator(_check_flow_kwargs)]


class _Schema(BaseModel):
    # Keys added by later versions are kept (and ignored) rather than refused.
    model_config = ConfigDict(extra="allow")


class DataConfig(_Schema):
    """The data of a fit: a built-in name or a file (``name``, absolute since it was written;
    ``display`` keeps the spelling given on the command line), and what the data set reported."""

    name: str
    display: str | None = None
    data_dir: str | None = None
    seed: _ranged("seed", int) = 0
    test_path: str | None = None
    n: _ranged("count", int) | None = None
    space: str = "data"
    levels: int | None = None
    image_shape: list[_ranged("features", int)] | None = None
    images: bool = False  # loaded as images (N, C, H, W), for an image flow
    image_size: list[_ranged("features", int)] | None = None


class TrainConfig(_Schema):
    """The arguments of :func:`pushforward.fit` that a run records (and ``--resume`` reuses)."""

    epochs: _ranged("epochs", int)
    batch_size: _ranged("batch_size", int)
    lr: _ranged("lr", float)
    weight_decay: _ranged("weight_decay", float) = 0.0
    schedule: Literal["cosine"] | None = None
    clip_grad: _ranged("clip_grad", float) | None = None
    patience: _ranged("patience", int) | None = None
    max_minutes: _ranged("max_minutes", float) | None = None
    seed: _ranged("seed", int) = 0
    dtype: Literal["float32", "float64"] = "float32"
    compile: bool = False
    tensorboard: str | None = None  # the folder of TensorBoard events, absolute


class Settings(_Schema):
    """The training settings of a ``vi`` or ``vae`` run: the arguments of its fit, kept as given,
    and the folder of its TensorBoard events (absolute), if it logged any."""

    tensorboard: str | None = None


class FitConfig(_Schema):
    """config.json of ``pushforward fit``: the preset, its arguments, the data and the training."""

    flow: str
    flow_kwargs: _FlowKwargs
    features: _ranged("features", int) | None = None  # known once the data are loaded
    event_shape: list[_ranged("features", int)] | None = None  # (C, H, W) of an image flow's data
    dequantization: Literal["uniform", "variational"] = "uniform"  # of image data (pushforward.dequantization)
    made_activations: list[str] = []  # the activations of the flow's MADEs (experiment.made_activations)
    data: DataConfig
    train: TrainConfig

    @field_validator("flow_kwargs")
    @classmethod
    def _known_base(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.get("base", "normal") not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, got {kwargs['base']!r}")
        return kwargs


class ViConfig(_Schema):
    """config.json of ``pushforward vi``: the target, the preset q and the fit's settings."""

    target: str
    dim: _ranged("dim", int)
    flow: str
    flow_kwargs: _FlowKwargs
    features: _ranged("features", int)
    vi: Settings


class VaeConfig(_Schema):
    """config.json of ``pushforward vae``: the arguments of :class:`pushforward.vae.VAE`, the
    data and the training."""

    model: dict[str, Any]
    data: dict[str, Any]
    train: Settings


def _kind(raw: dict) -> type[_Schema]:
    return ViConfig if "target" in raw else VaeConfig if "model" in raw else FitConfig


def validate_config(raw: object, where: str = "config.json") -> FitConfig | ViConfig | VaeConfig:
    """``raw`` (a parsed config.json) checked against the schema of the command that wrote it
    (a ``target`` key: vi; a ``model`` key: vae; otherwise fit).

    Raises:
        ValueError: "WHERE is corrupted: KEY: what is wrong", naming the first bad key.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is corrupted: expected a JSON object, got {type(raw).__name__}")
    try:
        return _kind(raw).model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{where} is corrupted: {key}: {message}") from None


def read_config(out: str | os.PathLike) -> FitConfig | ViConfig | VaeConfig:
    """The validated config.json of the run folder ``out``.

    Raises:
        FileNotFoundError: if there is no config.json.
        ValueError: if it is not JSON or does not match its schema (the message names the key).
    """
    path = Path(out) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is '{out}' a pushforward run folder?")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is corrupted (not JSON: {error})") from None
    return validate_config(raw, str(path))
