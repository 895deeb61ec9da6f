r"""Runs: a flow fitted to a data set, saved as a folder that rebuilds it exactly.

A run folder holds ``config.json`` (the preset, its arguments and the data set), ``model.pt``
(the state dict, loadable with ``torch.load(weights_only=True)``), ``checkpoint.pt`` (for
resuming), ``metrics.json`` and PNGs. The model is the preset's flow followed by a fixed
standardisation of the reference space, so its log-likelihood is in the reference space; the
data set's ``to_data`` transform then gives data-space log-likelihoods and bits/dim.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .nn.made import MADE
from .config import FitConfig, VaeConfig, ViConfig, read_config
from .core import Chain, Flow
from .distributions import StandardNormal
from .data import DataSet
from .dequantization import (UniformDequantizer, VariationalDequantization, dequantized,
                             importance_weighted_log_likelihoods)
from .flows import IMAGE_PRESETS, PRESETS
from .atomic import atomic_write, save_atomic
from .train import Evaluation, log_likelihoods
from .transforms.elementwise import Affine
from .transforms.linear import LowerTriangular
from .transforms.continuous import ContinuousFlow
from .transforms.residual import log_det_estimators

__all__ = ["build_flow", "gaussian_baseline", "standardisation", "Metrics", "measure", "measure_rows", "save_run", "load_run", "write_json"]

CONFIG, MODEL, CHECKPOINT, METRICS = "config.json", "model.pt", "checkpoint.pt", "metrics.json"


def standardisation(train: Tensor, base: str | None = None) -> tuple[Tensor, Tensor]:
    """The (shift, scale) of :func:`build_flow`'s last layer x = shift + scale * y: per feature,
    the training data's mean and standard deviation (std floored at 1e-6); for ``base="box"``
    (y in (0, 1)) the lower end and the width of the training range widened by 10% of it on
    each side, so that the flow's support is that box.

    Shapes: train (N, D); shift, scale (D,).
    """
    if base == "box":
        low, high = train.min(0).values, train.max(0).values
        margin = 0.1 * (high - low).clamp(min=1e-6)
        return low - margin, high - low + 2 * margin
    return train.mean(0), train.std(0).clamp(min=1e-6)


def build_flow(flow: str, features: int | Sequence[int], kwargs: dict, shift: Tensor | None = None,
               scale: Tensor | None = None, dequantization: str = "uniform") -> Flow:
    """The vector preset ``flow`` ("maf", "nsf", ...) followed by x = shift + scale * y, or the
    image preset ``flow`` ("glow", "realnvp-image") of the image shape ``features``, which maps
    to the pixel space itself; with ``dequantization="variational"``, the image flow trained
    through a learned dequantizer (:func:`pushforward.dequantization.dequantized`).

    Shapes: features D or (C, H, W); shift, scale (D,), the training data's mean and standard
    deviation (zeros and ones when None, to be filled by ``load_state_dict``), unused by
    image presets.

    Raises:
        ValueError: for an unknown preset name, an image preset without an image shape, or a
            vector preset with one; for an unknown dequantization, or a variational one of vectors.
    """
    if flow in IMAGE_PRESETS:
        if isinstance(features, int):
            raise ValueError(f"--flow {flow} is an image flow and needs images (N, C, H, W), such as digits, "
                             f"mnist or a folder of images; got vectors of {features} features")
        return dequantized(IMAGE_PRESETS[flow](features, **kwargs), dequantization, kwargs.get("pixel_levels") or 256)
    if dequantization != "uniform":
        raise ValueError(f"--dequantization {dequantization} applies to image flows ({', '.join(IMAGE_PRESETS)}); "
                         f"--flow {flow} is a vector flow")
    if flow not in PRESETS:
        raise ValueError(f"unknown flow {flow!r} (known: {', '.join([*PRESETS, *IMAGE_PRESETS])})")
    if not isinstance(features, int):
        raise ValueError(f"--flow {flow} is a vector flow and needs rows (N, D); got images of shape "
                         f"{tuple(features)}: use an image flow ({', '.join(IMAGE_PRESETS)})")
    preset = PRESETS[flow](features, **kwargs)
    shift = torch.zeros(features) if shift is None else shift
    scale = torch.ones(features) if scale is None else scale
    return Flow(preset.base, Chain(preset.transform, Affine(shift, scale)))


def gaussian_baseline(train: Tensor) -> Flow:
    """The full-covariance Gaussian fitted to ``train`` by maximum likelihood, as a flow.

    Mean and covariance (ddof 0) of the rows, in float64; the baseline of the MAF paper's
    tables (Papamakarios et al. 2017, "Gaussian").

    Shapes: train (N, D).

    Raises:
        ValueError: if the covariance is singular (e.g. a constant feature).
    """
    train = train.double()
    covariance = torch.cov(train.T, correction=0).reshape(train.shape[1], train.shape[1])
    return Flow(StandardNormal(train.shape[1]).double(), LowerTriangular.gaussian(train.mean(0), covariance)).eval()


@dataclass
class Metrics:
    """Test (or other split) metrics of a run.

    ``log_likelihood_nats`` and ``stderr_nats`` are in the data set's reference space
    (``space``: logit space for MNIST as MAF reports, the normalised space for the MAF tabular
    sets); ``data_log_likelihood_nats`` in the original data space and ``bits_per_dim`` of
    the [0, levels)^D space of dequantised data, where they apply. ``log_det`` names the
    log-det estimators in evaluation mode of the flow's residual blocks ("exact", or a
    stochastic one for large D) and continuous blocks (their trace, "exact" or "hutchinson"),
    None for flows whose ladj is in closed form. ``iw_*`` give the
    importance-weighted estimate of log P(pixels) with ``iw_samples`` samples (data space, nats
    and bits/dim). ``dequantization`` says how data of ``levels`` levels in the data space were
    dequantized: "variational" for a flow under variational dequantization, whose log-likelihoods
    are then its ELBO (a bound) and whose q the estimate uses, "uniform" for uniform noise.
    """

    log_likelihood_nats: float
    stderr_nats: float
    n_examples: int
    space: str
    data_log_likelihood_nats: float | None = None
    data_stderr_nats: float | None = None
    bits_per_dim: float | None = None
    bits_per_dim_stderr: float | None = None
    log_det: str | None = None
    dequantization: str | None = None
    iw_samples: int | None = None
    iw_log_likelihood_nats: float | None = None
    iw_stderr_nats: float | None = None
    iw_bits_per_dim: float | None = None


def measure(flow: Flow, data: DataSet, split: str = "test", batch_size: int = 1000,
            iw_samples: int | None = None) -> Metrics:
    """Mean log-likelihood of a split with its standard error, in nats and bits/dim.

    The flow's log-likelihood of each example (summed over all its event dimensions) is in the
    reference space; minus the ladj of ``data.to_data`` it is in the data space, and for
    dequantised data bits/dim = -log p(x) / (D log 2) with D = ``data.features``, the number of
    elements of one example (C*H*W for images). ``iw_samples`` as :func:`measure_rows`.

    Shapes: the split (N, *event), batches of ``batch_size`` examples along the first dimension.

    Raises:
        ValueError: for an unknown split name, or an empty split.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, valid or test")
    return measure_rows(flow, getattr(data, split), data.space, data.to_data, data.levels, batch_size, iw_samples)


def measure_rows(flow: Flow, rows: Tensor, space: str = "data", to_data=None, levels: int | None = None,
                 batch_size: int = 1000, iw_samples: int | None = None) -> Metrics:
    """Mean log-likelihood of ``rows`` (in the reference space ``space``) with its standard error,
    in nats; in the data space too when ``to_data`` (a transform reference -> data, see
    :class:`~pushforward.data.DataSet`) is given, and bits/dim for ``levels``-level data.

    With ``iw_samples`` K, for ``levels``-level data in the data space, the importance-weighted
    estimate of log P(pixels) with K samples (``iw_*``) is added: with the learned q of a
    :class:`~pushforward.dequantization.VariationalDequantization` (whose log-likelihood is the
    dequantization ELBO), else with uniform noise as q
    (:class:`~pushforward.dequantization.UniformDequantizer`). It costs K evaluations per example.

    Shapes: rows (N, D), N >= 1.

    Raises:
        ValueError: if ``rows`` is empty.
    """
    ll = log_likelihoods(flow, rows, batch_size)
    ref = Evaluation.of(ll)
    traces = {m.evaluation_trace for m in flow.modules() if isinstance(m, ContinuousFlow)}
    estimators = sorted({*log_det_estimators(flow, training=False), *traces})
    m = Metrics(ref.mean, ref.stderr, ref.n, space, log_det=", ".join(estimators) or None)
    if to_data is not None or levels:
        if to_data is not None:
            with torch.no_grad():
                ll = ll - torch.cat([to_data(rows[i : i + batch_size].double())[1]
                                     for i in range(0, len(rows), batch_size)]).float()
        dat = Evaluation.of(ll)
        m.data_log_likelihood_nats, m.data_stderr_nats = dat.mean, dat.stderr
        if levels:
            per_dim = rows[0].numel() * math.log(2)
            m.bits_per_dim, m.bits_per_dim_stderr = -dat.mean / per_dim, dat.stderr / per_dim
    variational = isinstance(flow, VariationalDequantization)
    if levels and to_data is None:
        m.dequantization = "variational" if variational else "uniform"
    if iw_samples and m.dequantization:
        model = flow if variational else VariationalDequantization(flow, UniformDequantizer(len(flow.event_shape)), levels)
        iw = Evaluation.of(importance_weighted_log_likelihoods(model, rows, iw_samples, batch_size))
        m.iw_samples, m.iw_log_likelihood_nats, m.iw_stderr_nats = iw_samples, iw.mean, iw.stderr
        m.iw_bits_per_dim = -iw.mean / (rows[0].numel() * math.log(2))
    return m


def write_json(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (:func:`~pushforward.atomic.atomic_write`).

    Raises:
        OSError: if the file cannot be written (the old one is kept, the temporary one removed).
    """
    text = (json.dumps(obj, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def made_activations(flow: Flow) -> list[str]:
    """The activation classes of the flow's MADEs (sorted, without repeats): the formula that
    computed its numbers, which a run records (the choice is the user's or the preset's, never a
    timing's)."""
    return sorted({type(m.activation).__name__ for m in flow.modules() if isinstance(m, MADE)})


def save_run(out: Path, flow: Flow, config: dict) -> None:
    """Write ``config.json`` (with the flow's :func:`made_activations`) and ``model.pt``
    (atomically) into the run folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    config["made_activations"] = made_activations(flow)
    write_json(config, out / CONFIG)
    save_atomic(flow.state_dict(), out / MODEL)


def load_run(out: str | os.PathLike, weights: str = MODEL) -> tuple[Flow, FitConfig | ViConfig]:
    """Rebuild the flow of a ``fit`` or ``vi`` run folder from its config and weights.

    Returns the flow in eval mode and the validated config (:mod:`pushforward.config`).

    Raises:
        FileNotFoundError: if the folder, its config or its weights are missing.
        ValueError: if the config does not match its schema (the message names the key), the
            weights are corrupted or do not match, or the folder is a ``vae`` run.
    """
    out = Path(out)
    config = read_config(out)
    if isinstance(config, VaeConfig):
        raise ValueError(f"'{out}' is a vae run: load it with pushforward.vae.load_vae")
    if not (out / weights).is_file():
        raise FileNotFoundError(f"{out / weights} not found: is '{out}' a complete pushforward run folder?")
    try:
        if isinstance(config, ViConfig):
            flow = PRESETS[config.flow](config.features, **config.flow_kwargs)
        else:
            if config.features is None:
                raise ValueError("features: missing")
            shape = tuple(config.event_shape) if config.event_shape else config.features
            flow = build_flow(config.flow, shape, config.flow_kwargs, dequantization=config.dequantization)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{out / CONFIG} is corrupted ({type(e).__name__}: {e})") from None
    try:
        state = torch.load(out / weights, map_location="cpu", weights_only=True)
        if weights == CHECKPOINT:
            state = state["model"]
        flow.load_state_dict(state)
    except Exception as e:  # torch raises several types for a damaged file
        raise ValueError(f"{out / weights} is corrupted or does not match the config ({type(e).__name__})") from None
    return flow.eval(), config
