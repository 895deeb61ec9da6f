r"""``pushforward fit``, ``evaluate`` and ``sample``: density estimation with a flow on data sets or files.

    pushforward fit [--data digits] [--flow maf] --out DIR [--nproc N]
    pushforward evaluate DIR [--split test] [--json] [--device cuda]
    pushforward sample DIR -n 64 -o samples.png [--device cuda]

Bad input (unknown names, missing or broken files, NaN/inf, wrong number of columns, a
corrupted run folder) ends with a one-line ``error: ...`` and exit status 1, before anything
in an existing run folder is changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np
import torch

from .. import data as datasets
from .. import distributed
from ..checks import check_memory, training_memory
from ..config import DataConfig, FitConfig, VaeConfig, ViConfig, read_config, validate_config
from ..data.base import to_tensor
from ..distributions import BASES
from ..experiment import (CHECKPOINT, METRICS, build_flow, gaussian_baseline, load_run, measure, measure_rows,
                         save_run, standardisation, write_json)
from .common import (load_data, IMAGE_SIZE, SIZES, absolute, check_output_file, fresh_out, number, one_line_errors, preset_kwargs,
                         run_options, tensorboard_option, torch_device)
from ..runs import RunFolder
from ..flows import IMAGE_PRESETS, PRESETS
from ..transforms.residual import ESTIMATORS
from ..train import atomic_write, fit as fit_flow

__all__ = ["fit", "evaluate", "sample"]


def _emit(metrics: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(metrics))
        return
    line = (f"{metrics['split']} log-likelihood: {metrics['log_likelihood_nats']:.4f} "
            f"± {metrics['stderr_nats']:.4f} nats ({metrics['space']} space, n={metrics['n_examples']})")
    if metrics.get("bits_per_dim") is not None:
        line += f"; {metrics['bits_per_dim']:.4f} bits/dim"
    if metrics.get("dequantization") == "variational":
        line += " (dequantization ELBO)"
    if metrics.get("iw_bits_per_dim") is not None:
        line += (f"; importance-weighted ({metrics['dequantization']} q, K={metrics['iw_samples']}): "
                 f"{metrics['iw_log_likelihood_nats']:.4f} ± {metrics['iw_stderr_nats']:.4f} nats, "
                 f"{metrics['iw_bits_per_dim']:.4f} bits/dim")
    if metrics.get("log_det"):
        line += f" (log-det: {metrics['log_det']})"
    if metrics.get("scored"):
        line += f" [{metrics['scored']}]"
    click.echo(line)


def _metrics(flow, dataset, split: str, seconds: float, out: Path) -> dict:
    m = asdict(measure(flow, dataset, split))
    return {**m, "split": split, "seconds": round(seconds, 3), "out": str(out)}


def _gaussian_metrics(dataset) -> dict | None:
    """Test metrics of the full-covariance Gaussian (of the flattened examples, for images), or
    None when its covariance is singular (a constant or collinear column, which the flow's
    standardisation tolerates)."""
    rows = dataclasses.replace(dataset, **{s: getattr(dataset, s).flatten(1) for s in ("train", "valid", "test")})
    try:
        return asdict(measure(gaussian_baseline(rows.train), rows, "test"))
    except ValueError:
        return None


def _data_space(samples: torch.Tensor, dataset) -> torch.Tensor:
    if dataset.to_data is None:
        return samples
    with torch.no_grad():
        return dataset.to_data(samples)[0]


@click.command()
@click.option("--data", default="digits", show_default=True,
              help="Data set name (moons, circles, 8gaussians, checkerboard, pinwheel, 2spirals, rings, "
                   "digits, mnist, power, gas, hepmass, miniboone, bsds300) or a .csv/.npy/.npz file of shape (N, D).")
@click.option("--data-dir", type=click.Path(), help="Folder of a data set that is read from disk (mnist, power, ...).")
@click.option("--test-file", type=click.Path(), help="A separate test file; --data is then split 90/10 into train/valid.")
@click.option("--flow", "flow_name", type=click.Choice(sorted([*PRESETS, *IMAGE_PRESETS])), default="maf",
              show_default=True, help="The flow preset; glow, realnvp-image and residual-image model images "
                                      "(digits, mnist, fashion-mnist or a folder of images) as images.")
@click.option("--transforms", type=number("transforms"), default=None, help="Number of flow layers (default: the preset's).")
@click.option("--hidden-features", type=SIZES, default=None,
              help="Hidden layer sizes of each conditioner, e.g. 512,512 (default: the preset's).")
@click.option("--bins", type=number("bins"), default=8, show_default=True, help="Spline bins (nsf).")
@click.option("--autoregressive/--coupling", default=False, show_default=True,
              help="Autoregressive or coupling layers (nsf).")
@click.option("--normalization", type=click.Choice(["none", "batch", "act"]), default="none", show_default=True,
              help="Normalisation layer between flow layers.")
@click.option("--base", type=click.Choice(list(BASES)), default="normal", show_default=True,
              help="Base distribution: normal, mixture (learned Gaussian mixture) or box (data bounded by the training "
                   "range widened by 10% on each side, through a sigmoid).")
@click.option("--levels", type=number("levels"), default=None,
              help="Image flows: number of levels (scales) of the multi-scale architecture (default: the preset's).")
@click.option("--steps", type=number("steps"), default=None, help="glow: flow steps per level.")
@click.option("--hidden-channels", type=number("hidden_channels"), default=None,
              help="Image flows: hidden channels of each convolutional conditioner.")
@click.option("--blocks", type=number("blocks"), default=None,
              help="realnvp-image: residual blocks per conditioner; residual-image: blocks per scale.")
@click.option("--convolution", type=click.Choice(["lu", "1x1", "emerging", "periodic"]), default=None,
              help="glow: the invertible convolution that mixes the channels (default lu).")
@click.option("--additive", is_flag=True, default=None, help="glow: additive instead of affine couplings.")
@click.option("--split-prior", type=click.Choice(["conditional", "channel"]), default=None,
              help="glow: the density of the channels factored out at each split, the paper's Gaussian given "
                   "the other channels (conditional, the default) or a learned per-channel Gaussian (channel).")
@click.option("--trace", type=click.Choice(["exact", "hutchinson"]), default=None,
              help="ffjord: the trace of df/dz in training, exact or Hutchinson's estimate (default: hutchinson; "
                   "evaluation is exact).")
@click.option("--rtol", type=number("rtol"), default=None, help="ffjord: the ODE solver's relative tolerance (1e-5).")
@click.option("--atol", type=number("atol"), default=None, help="ffjord: the ODE solver's absolute tolerance (1e-5).")
@click.option("--kinetic", type=number("kinetic"), default=None,
              help="ffjord: weight of the kinetic-energy regulariser int ||f||^2 dt (Finlay et al. 2020; default 0).")
@click.option("--jacobian", type=number("jacobian"), default=None,
              help="ffjord: weight of the Jacobian-norm regulariser int ||df/dz||_F^2 dt (default 0).")
@click.option("--adjoint", is_flag=True, default=None,
              help="ffjord: back-propagate by the adjoint method (memory constant in the number of steps).")
@click.option("--evaluation-trace", type=click.Choice(["exact", "hutchinson"]), default=None,
              help="ffjord: the trace in evaluation, exact (default) or Hutchinson's estimate.")
@click.option("--coefficient", type=number("coefficient"), default=None,
              help="residual flows (residual, iresnet, residual-image): the Lipschitz bound c < 1 of each layer "
                   "of g (default 0.97, iresnet 0.9).")
@click.option("--estimator", type=click.Choice(ESTIMATORS), default=None,
              help="residual flows: the log-det estimator in training (default roulette, iresnet series).")
@click.option("--eval-estimator", type=click.Choice(ESTIMATORS), default=None,
              help="residual flows: the log-det estimator in evaluation (default exact up to 128 features).")
@click.option("--iterations", type=number("iterations"), default=None,
              help="residual flows: power-iteration steps per training step for the gradient of each spectral "
                   "norm (default 1; the norm itself is certified, rounded up to a grid of 2^-11).")
@click.option("--terms", type=number("terms"), default=None,
              help="residual flows: terms n of the truncated series estimator (default 5).")
@click.option("--exact-terms", type=number("exact_terms"), default=None,
              help="residual flows: terms that every Russian-roulette estimate computes (default 2).")
@click.option("--stop-probability", type=number("stop_probability"), default=None,
              help="residual flows: p of the Russian roulette's geometric number of further terms (default 0.5).")
@click.option("--image-size", type=IMAGE_SIZE, default=None,
              help="A folder of images: resize every image to this size, e.g. 32 or 28,28 (H,W).")
@click.option("--dequantization", type=click.Choice(["uniform", "variational"]), default="uniform", show_default=True,
              help="Image data: uniform noise added once, or a learned q(u | pixels) trained with the flow (Flow++).")
@click.option("--epochs", type=number("epochs"), default=100, show_default=True, help="Largest number of epochs.")
@click.option("--batch-size", type=number("batch_size"), default=128, show_default=True, help="Mini-batch size.")
@click.option("--lr", type=number("lr"), default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--weight-decay", type=number("weight_decay"), default=0.0, show_default=True, help="Adam weight decay.")
@click.option("--schedule", type=click.Choice(["none", "cosine"]), default="none", show_default=True,
              help="Learning-rate schedule over the epochs.")
@click.option("--clip-grad", type=number("clip_grad"), default=None, help="Clip the gradient norm to this value.")
@click.option("--patience", type=number("patience"), default=10, show_default=True,
              help="Stop after this many epochs without validation improvement.")
@click.option("--max-minutes", type=number("max_minutes"), default=None, help="Wall-clock budget for training, in minutes.")
@click.option("--seed", type=number("seed"), default=0, show_default=True, help="Seed of the data split, the weights and the batches.")
@click.option("--float64", is_flag=True, help="Train in float64 instead of float32.")
@click.option("--compile", "compiled", is_flag=True,
              help="Compile the log-likelihood with torch.compile: faster coupling NSF training on the CPU, "
                   "slower MAF (python -m benchmarks.compiled); the first steps take longer.")
@run_options("runs/DATA-FLOW", json_help="Print the test metrics as one JSON line.",
             threads_help="torch.set_num_threads (default: torch's choice; 1 per process with --nproc or torchrun).")
@click.option("--nproc", type=number("nproc"), default=1, show_default=True,
              help="Train data-parallel on this many processes of this machine (DistributedDataParallel: gloo on "
                   "cpu, NCCL on cuda with a GPU each); --batch-size stays the global mini-batch, so each process "
                   "takes batch-size / nproc examples. Under torchrun, leave it out.")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the interrupted or finished run in this folder with its own settings: "
                   "--epochs, --max-minutes and --tensorboard may be changed, other training options are refused.")
@tensorboard_option
@one_line_errors
def fit(data, data_dir, test_file, flow_name, transforms, hidden_features, bins, autoregressive, normalization, base,
        levels, steps, hidden_channels, blocks, convolution, additive, split_prior, trace, rtol, atol, kinetic, jacobian, adjoint,
        evaluation_trace, coefficient, estimator, eval_estimator, iterations, terms, exact_terms, stop_probability,
        image_size, dequantization, epochs, batch_size, lr, weight_decay, schedule, clip_grad, patience, max_minutes, seed,
        float64, compiled, device, threads, nproc, out, overwrite, resume, as_json, quiet, tensorboard):
    """Train a flow by maximum likelihood and write a run folder.

    The folder holds config.json (rebuilds the model), model.pt (the best-validation weights,
    torch.load(weights_only=True)), checkpoint.pt (to resume), metrics.json (test
    log-likelihood in nats with its standard error, and bits/dim for image data),
    learning_curve.png, density.png (2-D data) and samples.png (image data). Ctrl-C saves a
    checkpoint; continue with --resume DIR.

    With --nproc N (or under ``torchrun --nproc-per-node N -m pushforward.cli fit ...``) N
    processes train one model with DistributedDataParallel and give the same result as one
    process, up to rounding (see pushforward.fit); process 0 writes the run folder.
    """
    if resume:
        _refuse_options_fixed_by_the_run()
    device = torch_device(device)
    if nproc > 1 and distributed.environment_world_size() > 1:
        raise click.UsageError("torchrun starts the processes already: leave --nproc out")
    world = max(nproc, distributed.environment_world_size())
    if world > 1:
        distributed.backend_for(device)
    if resume:
        out = Path(resume)
        config = read_config(out)
        if not isinstance(config, FitConfig):
            raise click.ClickException(f"'{out}' is a {_kind(config)} run: --resume continues runs of pushforward fit")
        if not (out / CHECKPOINT).is_file():
            raise click.ClickException(f"'{out}' holds no checkpoint.pt to resume from")
        config = config.model_dump(mode="json")
        config["train"].update({k: v for k, v in (("epochs", epochs), ("max_minutes", max_minutes),
                                                  ("tensorboard", absolute(tensorboard)))
                                if click.get_current_context().get_parameter_source(k).name != "DEFAULT"})
    else:
        if dequantization != "uniform" and flow_name not in IMAGE_PRESETS:
            raise click.UsageError(f"--dequantization {dequantization} applies to image flows ({', '.join(IMAGE_PRESETS)})")
        out = fresh_out(out, f"{Path(data).stem}-{flow_name}", overwrite)
        kwargs = preset_kwargs(flow_name, {
            "transforms": transforms, "normalization": None if normalization == "none" else normalization,
            "hidden_features": hidden_features, "bins": bins, "autoregressive": autoregressive, "base": base, "levels": levels,
            "steps": steps, "hidden_channels": hidden_channels, "blocks": blocks, "convolution": convolution,
            "additive": additive, "split_prior": split_prior, "trace": trace, "rtol": rtol, "atol": atol, "kinetic": kinetic,
            "jacobian": jacobian, "adjoint": adjoint, "evaluation_trace": evaluation_trace,
            "coefficient": coefficient, "estimator": estimator, "eval_estimator": eval_estimator,
            "iterations": iterations, "terms": terms, "exact_terms": exact_terms,
            "stop_probability": stop_probability})
        config = {
            "flow": flow_name, "flow_kwargs": kwargs, "dequantization": dequantization,
            "data": {"name": _absolute_data(data), "display": data, "data_dir": absolute(data_dir), "seed": seed,
                     "test_path": absolute(test_file),
                     # a folder holds images, which only image flows take (digits and mnist are
                     # rows for the vector flows, as in the MAF paper)
                     "images": flow_name in IMAGE_PRESETS or datasets.is_image_folder(data),
                     "image_size": list(image_size) if image_size else None},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                      "schedule": None if schedule == "none" else schedule, "clip_grad": clip_grad,
                      "patience": patience, "max_minutes": max_minutes, "seed": seed,
                      "dtype": "float64" if float64 else "float32", "compile": compiled,
                      "tensorboard": absolute(tensorboard)},
        }
    validate_config(config, "the options")
    batch = config["train"]["batch_size"]
    if batch % world:
        raise click.BadParameter(f"{batch} must be a positive multiple of the number of processes, {world} "
                                 f"(each process takes batch-size / {world} examples of every mini-batch)",
                                 param_hint="--batch-size")
    if threads:
        torch.set_num_threads(threads)
    job = {"out": str(out), "config": config, "resume": bool(resume), "replace": overwrite, "device": str(device),
           "as_json": as_json, "quiet": quiet, "processes": world}
    if nproc > 1:
        try:
            stopped = distributed.launch(_fit_job, nproc, (job,), device=device, threads=threads)
        except KeyboardInterrupt:  # process 0 has saved the checkpoint and said so
            stopped = "interrupted"
    else:
        started = distributed.init_from_environment(device, threads)
        try:
            stopped = _fit_job(job)
        finally:
            if started:
                torch.distributed.destroy_process_group()
    if stopped == "interrupted":
        sys.exit(130)


# What `fit --resume` may change; every other option is the run's own (config.json).
_RESUME_OPTIONS = ("epochs", "max_minutes", "tensorboard", "device", "threads", "nproc", "as_json", "quiet", "resume")


def _refuse_options_fixed_by_the_run() -> None:
    """Raise a UsageError naming the options given with ``fit --resume`` that the run fixes."""
    ctx = click.get_current_context()
    fixed = [p for p in ctx.command.params if p.name not in _RESUME_OPTIONS
             and ctx.get_parameter_source(p.name).name not in ("DEFAULT", "DEFAULT_MAP")]
    if fixed:
        names = ", ".join(p.opts[-1] if p.name != "compiled" else "--compile" for p in fixed)
        raise click.UsageError(f"--resume continues the run with its own settings and cannot change {names}; "
                               "it takes --epochs, --max-minutes, --tensorboard, --device, --threads, --nproc, --json "
                               "and --quiet")


def _kind(config) -> str:
    return "vi" if isinstance(config, ViConfig) else "vae" if isinstance(config, VaeConfig) else "fit"


def _absolute_data(data: str) -> str:
    """A data file's absolute path (so that the run works from any folder); a built-in name as it is."""
    return data if data.lower() in datasets.NAMES else absolute(data)


def _fit_job(job: dict) -> str:
    """Train the run that ``fit`` prepared, in one process or in each process of a data-parallel
    group; process 0 writes the run folder (locked, see :class:`~pushforward.runs.RunFolder`) and
    prints. Returns why training stopped."""
    # Every process has checked the run folder (under torchrun) before process 0 writes into it.
    distributed.barrier()
    lead = distributed.rank() == 0
    out, config, resume, as_json = Path(job["out"]), job["config"], job["resume"], job["as_json"]
    dataset = load_data(config["data"])
    if lead and not as_json:
        click.echo(f"data: {dataset!r}", err=True)
    if not resume:
        torch.manual_seed(config["train"]["seed"])
        config["features"] = dataset.features
        config["data"].update(space=dataset.space, levels=dataset.levels, image_shape=dataset.image_shape)
        tc = config["train"]
        check_memory(f"training this {config['flow']} flow",
                     training_memory(dataset.features, config["flow_kwargs"].get("transforms", 1),
                                     config["flow_kwargs"].get("hidden_features"), tc["batch_size"],
                                     8 if tc["dtype"] == "float64" else 4))
        if config["data"].get("images"):
            config["event_shape"] = list(dataset.event_shape)
            config["flow_kwargs"]["pixel_levels"] = dataset.levels  # the preset maps to [0, levels)
            flow = build_flow(config["flow"], dataset.event_shape, config["flow_kwargs"],
                              dequantization=config.get("dequantization", "uniform"))
        else:
            flow = build_flow(config["flow"], dataset.features, config["flow_kwargs"], *standardisation(dataset.train, config["flow_kwargs"].get("base")))
    else:
        flow, _ = load_run(out, weights=CHECKPOINT)
    with RunFolder(out, replace=job["replace"], resume=resume) if lead else contextlib.nullcontext() as run:
        if lead and not resume:
            save_run(run.path, flow, config)
        tc = config["train"]
        result = fit_flow(flow, dataset.train, dataset.valid, epochs=tc["epochs"], batch_size=tc["batch_size"],
                          lr=tc["lr"], weight_decay=tc["weight_decay"], schedule=tc["schedule"],
                          clip_grad=tc["clip_grad"], patience=tc["patience"], max_minutes=tc["max_minutes"],
                          seed=tc["seed"], dtype=getattr(torch, tc["dtype"]), device=job["device"],
                          progress=not job["quiet"], verbose=not as_json,
                          checkpoint=run.file(CHECKPOINT) if lead else out / CHECKPOINT, resume=resume,
                          compile=tc.get("compile", False), on_checkpoint=run.publish if lead else None,
                          tensorboard_dir=tc.get("tensorboard"))
        if not lead:
            return result.stopped
        run.publish()
        if result.stopped == "interrupted":
            click.echo(f"interrupted: checkpoint saved; continue with: pushforward fit --resume {out}", err=True)
            return result.stopped
        flow.cpu().float()
        save_run(out, flow, config)
        metrics = _metrics(flow, dataset, "test", result.seconds, out)
        metrics.update(best_epoch=result.best_epoch, best_valid_log_likelihood_nats=result.best_valid,
                       stopped=result.stopped, processes=job["processes"], history=result.history,
                       gaussian_baseline=_gaussian_metrics(dataset))
        write_json(metrics, out / METRICS)
        from .. import plots

        plots.fit_figures(out, flow, dataset, result.history)
    if not as_json:
        click.echo(f"stopped: {result.stopped} after {len(result.history)} epochs ({result.seconds:.0f} s), "
                   f"best epoch {result.best_epoch}", err=True)
    _emit({k: v for k, v in metrics.items() if k != "history"}, as_json)
    if not as_json:
        g = metrics["gaussian_baseline"]
        if g is not None:
            click.echo(f"full-covariance Gaussian on the same data: {g['log_likelihood_nats']:.4f} "
                       f"± {g['stderr_nats']:.4f} nats" + (f"; {g['bits_per_dim']:.4f} bits/dim" if g["bits_per_dim"] else ""))
    if not as_json:
        click.echo(f"wrote {out}/ (model.pt, config.json, metrics.json, PNGs)")
    return result.stopped


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--data", default=None,
              help="Evaluate on this built-in data set (its --split) or on every row of this file (held-out data) "
                   "instead of the run's own data.")
@click.option("--data-dir", type=click.Path(), default=None, help="Folder of --data, if it is read from disk.")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True,
              help="Which split of a built-in data set (or of the run's own data) to evaluate.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON line.")
@click.option("--device", default="cpu", show_default=True, help="Torch device to evaluate on: cpu, cuda, mps.")
@click.option("--iw-samples", type=number("iw_samples"), default=None,
              help="Dequantized data: also the importance-weighted estimate of log P(pixels) with K samples of the "
                   "run's q (uniform noise, or the learned q of --dequantization variational, for which K is 16 "
                   "unless given).")
@one_line_errors
def evaluate(run, data, data_dir, split, as_json, device, iw_samples):
    """Mean log-likelihood of a split in nats with its standard error (and bits/dim for images).

    Nats are in the data set's reference space (logit space for mnist, as MAF reports; the
    normalised space for the MAF tabular sets; the data space otherwise); bits/dim in the
    [0, levels)^D space of dequantised image data. A file given with --data is held-out data:
    all of its rows are scored, in the data space. The output says which rows were scored.
    A run with --dequantization variational reports its dequantization ELBO (a bound) and the
    importance-weighted estimate of log P(pixels) with --iw-samples K = 16 samples (K passes of
    the model per example); --iw-samples gives the same estimate, with uniform noise, for other
    runs of dequantized data.
    """
    device = torch_device(device)
    file = data is not None and data.lower() not in datasets.NAMES
    if file and click.get_current_context().get_parameter_source("split").name != "DEFAULT":
        raise click.UsageError("--split applies to built-in data sets: every row of a --data file is scored")
    start = time.perf_counter()
    torch.manual_seed(0)  # the noise of a dequantization ELBO and of importance-weighted estimates
    flow, config = load_run(run)
    if isinstance(config, ViConfig):
        raise click.ClickException(f"'{run}' is a vi run (target {config.target}): it was fitted to a density, "
                                   "not to data; its metrics.json holds the ELBO and log Z")
    flow.to(device)
    iw_samples = iw_samples or (16 if config.dequantization == "variational" else None)
    if file:
        if config.data.space != "data":
            raise click.ClickException(f"the model in '{run}' is fitted in the {config.data.space} space of "
                                       f"{config.data.name}; a --data file can only be scored by runs in the data space")
        rows = to_tensor(datasets.read_array(data))
        _check_shape(tuple(rows.shape[1:]), config, run)
        metrics = {**asdict(measure_rows(flow, rows, levels=config.data.levels, iw_samples=iw_samples)), "split": "all",
                   "scored": f"all {len(rows)} rows of {data}"}
    else:
        spec = config.data.model_dump()
        if data is not None:
            spec.update(name=data, data_dir=data_dir, test_path=None, n=None)
        dataset = load_data(spec)
        _check_shape(dataset.event_shape, config, run)
        metrics = {**asdict(measure(flow, dataset, split, iw_samples=iw_samples)), "split": split,
                   "scored": f"the {split} split of {config.data.display or spec['name'] if data is None else data}"}
    _emit({**metrics, "seconds": round(time.perf_counter() - start, 3), "out": str(run)}, as_json)


def _check_shape(found: tuple[int, ...], config: FitConfig, run: str) -> None:
    """Raise a one-line error unless examples of shape ``found`` are what the run was trained on."""
    trained = tuple(config.event_shape or (config.features,))
    if found != trained:
        def described(shape: tuple[int, ...]) -> str:
            return f"{shape[0]} columns" if len(shape) == 1 else f"images of shape {shape}"

        raise click.ClickException(f"the data have {described(found)}, the model in '{run}' was trained on "
                                   f"{described(trained)}")


# Rows drawn and written at a time: 2**22 numbers (16 MB in float32) per chunk.
_CHUNK_NUMBERS = 2**22


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-n", "count", type=number("count"), default=64, show_default=True, help="Number of samples.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Output file: .npy, .csv, or .png (an image grid for image data, a scatter plot otherwise).")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("--seed", type=number("seed"), default=0, show_default=True, help="Random seed.")
@click.option("--temperature", type=number("temperature"), default=1.0, show_default=True,
              help="Scale of the base's standard deviation (Glow's temperature; below 1: smoother, typical samples).")
@click.option("--reference-space", is_flag=True,
              help="Write samples in the reference space (e.g. logits for mnist) instead of the data space.")
@click.option("--device", default="cpu", show_default=True,
              help="Torch device to sample on: cpu, cuda, mps (one seed gives different samples on each).")
@one_line_errors
def sample(run, count, output, overwrite, seed, temperature, reference_space, device):
    """Draw N samples from a trained flow and write them to a file.

    Samples are drawn and written in chunks of about 16 MB, so that .npy and .csv files of any
    size take bounded memory; a .png holds all samples at once and is refused beyond this
    machine's memory. The file appears only once it is complete.
    """
    suffix = Path(output).suffix.lower()
    if suffix not in (".npy", ".csv", ".png"):
        raise click.ClickException(f"unknown output type {suffix!r}: use .npy, .csv or .png")
    check_output_file(output, overwrite)
    device = torch_device(device)
    flow, config = load_run(run)
    flow.to(device)
    features = config.features
    if suffix == ".png":
        check_memory(f"a plot of {count} samples", 4 * count * features)
    data = config.data if isinstance(config, FitConfig) else None
    to_data = None
    if data is not None and not reference_space and data.space != "data":
        to_data = load_data(data.model_dump()).to_data
    torch.manual_seed(seed)
    size = max(1, _CHUNK_NUMBERS // features)

    def chunks():
        for start in range(0, count, size):
            with torch.no_grad():
                x = flow.sample((min(size, count - start),), temperature=temperature).cpu().float()
                yield (x if to_data is None else to_data(x)[0].float()).numpy()

    if suffix == ".npy":
        atomic_write(output, lambda f: _write_npy(f, chunks(), count))
    elif suffix == ".csv":
        atomic_write(output, lambda f: [np.savetxt(f, chunk.reshape(len(chunk), -1), delimiter=",") for chunk in chunks()])
    else:
        _sample_png(torch.from_numpy(np.concatenate(list(chunks()))), data, output)
    click.echo(f"wrote {count} samples to {output}")


def _write_npy(f, chunks, count: int) -> None:
    """Write ``count`` float32 rows, given in chunks (n, *event), as one .npy file of shape
    (count, *event), holding one chunk in memory at a time."""
    for i, chunk in enumerate(chunks):
        if i == 0:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                     "fortran_order": False, "shape": (count, *chunk.shape[1:])})
        f.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())


def _sample_png(x: torch.Tensor, data: DataConfig | None, output: str) -> None:
    from .. import plots

    if data is not None and data.image_shape:
        plots.image_grid(x, tuple(data.image_shape), data.levels or 256, output)
        return
    fig, ax = plots.subplots(figsize=(5, 5))
    ax.scatter(x[:, 0].numpy(), x[:, 1 % x.shape[1]].numpy(), s=2)
    plots.save_figure(fig, output)

