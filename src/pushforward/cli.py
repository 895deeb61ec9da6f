r"""The ``pushforward`` command: fit, evaluate and sample normalizing flows on data sets or files.

    pushforward fit [--data digits] [--flow maf] --out DIR [--nproc N]
    pushforward evaluate DIR [--split test] [--json] [--device cuda]
    pushforward sample DIR -n 64 -o samples.png [--device cuda]

Bad input (unknown names, missing or broken files, NaN/inf, wrong number of columns, a
corrupted run folder) ends with a one-line ``error: ...`` and exit status 1, before anything
in an existing run folder is changed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np
import torch

from . import data as datasets
from . import distributed
from .experiment import (CHECKPOINT, CONFIG, METRICS, build_flow, gaussian_baseline, load_run, measure,
                         save_run, standardisation, write_json)
from .cli_common import SIZES, fresh_out, number, one_line_errors, preset_kwargs, run_options, torch_device
from .cli_vi import vae, vi
from .flows import PRESETS
from .train import fit as fit_flow

__all__ = ["main"]


def _load_data(spec: dict) -> datasets.DataSet:
    return datasets.load(spec["name"], spec.get("data_dir"), seed=spec.get("seed", 0),
                         test_path=spec.get("test_path"), n=spec.get("n"))


def _emit(metrics: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(metrics))
        return
    line = (f"{metrics['split']} log-likelihood: {metrics['log_likelihood_nats']:.4f} "
            f"± {metrics['stderr_nats']:.4f} nats ({metrics['space']} space, n={metrics['n_examples']})")
    if metrics.get("bits_per_dim") is not None:
        line += f"; {metrics['bits_per_dim']:.4f} bits/dim"
    click.echo(line)


def _metrics(flow, dataset, split: str, seconds: float, out: Path) -> dict:
    m = asdict(measure(flow, dataset, split))
    return {**m, "split": split, "seconds": round(seconds, 3), "out": str(out)}


def _gaussian_metrics(dataset) -> dict | None:
    """Test metrics of the full-covariance Gaussian, or None when its covariance is singular
    (a constant or collinear column, which the flow's standardisation tolerates)."""
    try:
        return asdict(measure(gaussian_baseline(dataset.train), dataset, "test"))
    except ValueError:
        return None


def _plots(out: Path, flow, dataset, history: list[dict]) -> None:
    from . import plots

    if history:
        plots.learning_curve(history, out / "learning_curve.png")
    if dataset.features == 2:
        plots.density_2d(flow, dataset.test, out / "density.png")
    if dataset.image_shape is not None:
        plots.image_grid(_data_space(flow.sample((64,)).float(), dataset), dataset.image_shape,
                         dataset.levels or 256, out / "samples.png")


def _data_space(samples: torch.Tensor, dataset) -> torch.Tensor:
    if dataset.to_data is None:
        return samples
    with torch.no_grad():
        return dataset.to_data(samples)[0]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pushforward")
def main():
    """Normalizing flows: fit, evaluate and sample on built-in data sets or your files."""


@main.command()
@click.option("--data", default="digits", show_default=True,
              help="Data set name (moons, circles, 8gaussians, checkerboard, pinwheel, 2spirals, rings, "
                   "digits, mnist, power, gas, hepmass, miniboone, bsds300) or a .csv/.npy/.npz file of shape (N, D).")
@click.option("--data-dir", type=click.Path(), help="Folder of a data set that is read from disk (mnist, power, ...).")
@click.option("--test-file", type=click.Path(), help="A separate test file; --data is then split 90/10 into train/valid.")
@click.option("--flow", "flow_name", type=click.Choice(sorted(PRESETS)), default="maf", show_default=True,
              help="The flow preset.")
@click.option("--transforms", type=number("transforms"), default=None, help="Number of flow layers (default: the preset's).")
@click.option("--hidden-features", type=SIZES, default=None,
              help="Hidden layer sizes of each conditioner, e.g. 512,512 (default: the preset's).")
@click.option("--bins", type=number("bins"), default=8, show_default=True, help="Spline bins (nsf).")
@click.option("--autoregressive/--coupling", default=False, show_default=True,
              help="Autoregressive or coupling layers (nsf).")
@click.option("--normalization", type=click.Choice(["none", "batch", "act"]), default="none", show_default=True,
              help="Normalisation layer between flow layers.")
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
              help="Continue the interrupted or finished run in this folder (its settings are reused; "
                   "--epochs and --max-minutes may be changed).")
@one_line_errors
def fit(data, data_dir, test_file, flow_name, transforms, hidden_features, bins, autoregressive, normalization,
        epochs, batch_size, lr, weight_decay, schedule, clip_grad, patience, max_minutes, seed, float64, compiled,
        device, threads, nproc, out, overwrite, resume, as_json, quiet):
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
    device = torch_device(device)
    if nproc > 1 and distributed.environment_world_size() > 1:
        raise click.UsageError("torchrun starts the processes already: leave --nproc out")
    world = max(nproc, distributed.environment_world_size())
    if world > 1:
        distributed.backend_for(device)
    if threads:
        torch.set_num_threads(threads)
    if resume:
        out = Path(resume)
        config = json.loads((out / CONFIG).read_text()) if (out / CONFIG).is_file() else None
        if config is None or not (out / CHECKPOINT).is_file():
            raise click.ClickException(f"'{out}' holds no run to resume (config.json and checkpoint.pt)")
        train_cfg = config["train"]
        train_cfg.update({k: v for k, v in (("epochs", epochs), ("max_minutes", max_minutes))
                          if click.get_current_context().get_parameter_source(k).name != "DEFAULT"})
    else:
        out = fresh_out(out, f"{Path(data).stem}-{flow_name}", overwrite, hint=", --resume")
        kwargs = preset_kwargs(flow_name, {
            "transforms": transforms, "normalization": None if normalization == "none" else normalization,
            "hidden_features": hidden_features, "bins": bins,
            "autoregressive": autoregressive})
        config = {
            "flow": flow_name, "flow_kwargs": kwargs,
            "data": {"name": data, "data_dir": data_dir, "seed": seed, "test_path": test_file},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                      "schedule": None if schedule == "none" else schedule, "clip_grad": clip_grad,
                      "patience": patience, "max_minutes": max_minutes, "seed": seed,
                      "dtype": "float64" if float64 else "float32", "compile": compiled},
        }
    batch = config["train"]["batch_size"]
    if batch < 1 or batch % world:
        raise click.BadParameter(f"{batch} must be a positive multiple of the number of processes, {world} "
                                 f"(each process takes batch-size / {world} examples of every mini-batch)",
                                 param_hint="--batch-size")
    job = {"out": str(out), "config": config, "resume": bool(resume), "device": str(device), "as_json": as_json,
           "quiet": quiet, "processes": world}
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


def _fit_job(job: dict) -> str:
    """Train the run that ``fit`` prepared, in one process or in each process of a data-parallel
    group; process 0 writes the run folder and prints. Returns why training stopped."""
    # Every process has checked the run folder (under torchrun) before process 0 writes into it.
    distributed.barrier()
    lead = distributed.rank() == 0
    out, config, resume, as_json = Path(job["out"]), job["config"], job["resume"], job["as_json"]
    dataset = _load_data(config["data"])
    if lead and not as_json:
        click.echo(f"data: {dataset!r}", err=True)
    if not resume:
        torch.manual_seed(config["train"]["seed"])
        config["features"] = dataset.features
        config["data"].update(space=dataset.space, levels=dataset.levels, image_shape=dataset.image_shape)
        flow = build_flow(config["flow"], dataset.features, config["flow_kwargs"], *standardisation(dataset.train))
        if lead:
            save_run(out, flow, config)
    else:
        flow, _ = load_run(out, weights=CHECKPOINT)
    tc = config["train"]
    result = fit_flow(flow, dataset.train, dataset.valid, epochs=tc["epochs"], batch_size=tc["batch_size"],
                      lr=tc["lr"], weight_decay=tc["weight_decay"], schedule=tc["schedule"],
                      clip_grad=tc["clip_grad"], patience=tc["patience"], max_minutes=tc["max_minutes"],
                      seed=tc["seed"], dtype=getattr(torch, tc["dtype"]), device=job["device"],
                      progress=not job["quiet"], verbose=not as_json, checkpoint=out / CHECKPOINT, resume=resume,
                      compile=tc.get("compile", False))
    if not lead:
        return result.stopped
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
    _plots(out, flow, dataset, result.history)
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


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--data", default=None, help="Evaluate on this data set or file instead of the run's own.")
@click.option("--data-dir", type=click.Path(), default=None, help="Folder of --data, if it is read from disk.")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True,
              help="Which split to evaluate.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON line.")
@click.option("--device", default="cpu", show_default=True, help="Torch device to evaluate on: cpu, cuda, mps.")
@one_line_errors
def evaluate(run, data, data_dir, split, as_json, device):
    """Mean log-likelihood of a split in nats with its standard error (and bits/dim for images).

    Nats are in the data set's reference space (logit space for mnist, as MAF reports; the
    normalised space for the MAF tabular sets; the data space otherwise); bits/dim in the
    [0, levels)^D space of dequantised image data.
    """
    device = torch_device(device)
    start = time.perf_counter()
    flow, config = load_run(run)
    flow.to(device)
    spec = dict(config["data"])
    if data is not None:
        spec.update(name=data, data_dir=data_dir, test_path=None)
    dataset = _load_data(spec)
    if dataset.features != config["features"]:
        raise click.ClickException(f"the data have {dataset.features} columns, the model in '{run}' "
                                   f"was trained on {config['features']}")
    _emit(_metrics(flow, dataset, split, time.perf_counter() - start, Path(run)), as_json)


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-n", "count", type=number("count"), default=64, show_default=True, help="Number of samples.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Output file: .npy, .csv, or .png (an image grid for image data, a scatter plot otherwise).")
@click.option("--seed", type=number("seed"), default=0, show_default=True, help="Random seed.")
@click.option("--reference-space", is_flag=True,
              help="Write samples in the reference space (e.g. logits for mnist) instead of the data space.")
@click.option("--device", default="cpu", show_default=True,
              help="Torch device to sample on: cpu, cuda, mps (one seed gives different samples on each).")
@one_line_errors
def sample(run, count, output, seed, reference_space, device):
    """Draw N samples from a trained flow and write them to a file."""
    suffix = Path(output).suffix.lower()
    if suffix not in (".npy", ".csv", ".png"):
        raise click.ClickException(f"unknown output type {suffix!r}: use .npy, .csv or .png")
    device = torch_device(device)
    flow, config = load_run(run)
    flow.to(device)
    torch.manual_seed(seed)
    x = flow.sample((count,)).cpu()
    meta = config["data"]
    if not reference_space and meta.get("space", "data") != "data":
        x = _data_space(x, _load_data(meta))
    if suffix == ".npy":
        np.save(output, x.numpy())
    elif suffix == ".csv":
        np.savetxt(output, x.numpy(), delimiter=",")
    else:
        _sample_png(x, meta, output)
    click.echo(f"wrote {count} samples to {output}")


def _sample_png(x: torch.Tensor, meta: dict, output: str) -> None:
    from . import plots

    if meta.get("image_shape"):
        plots.image_grid(x, tuple(meta["image_shape"]), meta.get("levels") or 256, output)
        return
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x[:, 0].numpy(), x[:, 1 % x.shape[1]].numpy(), s=2)
    fig.savefig(output, dpi=100)
    plt.close(fig)


main.add_command(vi)
main.add_command(vae)

if __name__ == "__main__":
    main()
