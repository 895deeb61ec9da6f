r"""The ``pushforward vi`` and ``pushforward vae`` sub-commands: variational inference with flows.

    pushforward vi --target u1 --flow planar --transforms 32 --out runs/u1-planar
    pushforward vae --posterior sylvester-orthogonal --data-dir ../shared/data/mnist --out runs/vae-osnf

Both follow ``pushforward fit``: a run folder (config.json, model.pt, metrics.json, PNGs),
``--json`` for one line of metrics, a progress bar, and one-line errors with exit status 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import click
import torch

from .atomic import save_atomic
from .cli_common import (SIZES, absolute, fresh_out, number, one_line_errors, preset_kwargs, run_options,
                         tensorboard_option, torch_device)
from .checks import check_memory, training_memory
from .config import validate_config
from .experiment import METRICS, save_run, write_json
from .runs import RunFolder
from .flows import PRESETS
from .targets import TARGETS, Target, get_target, grid_log_z

__all__ = ["vi", "vae"]


def _emit(metrics: dict, as_json: bool, line: str) -> None:
    click.echo(json.dumps(metrics) if as_json else line)


# --- pushforward vi ------------------------------------------------------------------------

@click.command()
@click.option("--target", "target_spec", required=True,
              help=f"Target: {', '.join(TARGETS)}, or a user log-density 'module:function' / "
                   "'path/to/file.py:function' mapping z (N, D) to (N,).")
@click.option("--dim", type=number("dim"), default=None,
              help="Dimension of the target (funnel, user functions without a .dim attribute).")
@click.option("--flow", "flow_name", type=click.Choice(sorted(PRESETS)), default="planar", show_default=True,
              help="The flow preset q.")
@click.option("--transforms", type=number("transforms"), default=None, help="Number of flow layers (default: the preset's).")
@click.option("--hidden-features", type=SIZES, default=None, help="Hidden layer sizes of each conditioner, e.g. 64,64.")
@click.option("--bins", type=number("bins"), default=8, show_default=True, help="Spline bins (nsf).")
@click.option("--autoregressive/--coupling", default=False, show_default=True,
              help="Autoregressive or coupling layers (nsf).")
@click.option("--steps", type=number("steps"), default=10_000, show_default=True, help="Gradient steps.")
@click.option("--samples", type=number("samples"), default=256, show_default=True,
              help="Monte Carlo samples of q per step.")
@click.option("--lr", type=number("lr"), default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--schedule", type=click.Choice(["none", "cosine"]), default="cosine", show_default=True,
              help="Learning-rate schedule over the steps.")
@click.option("--anneal-steps", type=number("anneal_steps"), default=0, show_default=True,
              help="Raise beta linearly from --beta0 to 1 over this many steps (Rezende & Mohamed 2015).")
@click.option("--beta0", type=number("beta0"), default=0.01, show_default=True, help="Initial inverse temperature.")
@click.option("--stl", is_flag=True, help="Sticking-the-landing gradient (Roeder et al. 2017; needs q's inverse).")
@click.option("--clip-grad", type=number("clip_grad"), default=None, help="Clip the gradient norm to this value.")
@click.option("--max-minutes", type=number("max_minutes"), default=None, help="Wall-clock budget for the fit, in minutes.")
@click.option("--log-z-samples", type=number("log_z_samples"), default=100_000, show_default=True,
              help="Importance samples for the final ELBO and log Z estimates.")
@click.option("--seed", type=number("seed"), default=0, show_default=True, help="Seed of the weights and the samples.")
@click.option("--float64", is_flag=True, help="Fit in float64 instead of float32.")
@run_options("runs/vi-TARGET-FLOW")
@tensorboard_option
@one_line_errors
def vi(target_spec, dim, flow_name, transforms, hidden_features, bins, autoregressive, steps, samples, lr, schedule,
       anneal_steps, beta0, stl, clip_grad, max_minutes, log_z_samples, seed, float64, device, threads, out, overwrite,
       as_json, quiet, tensorboard):
    """Fit a flow q to an unnormalized density by maximising the ELBO; estimate log Z.

    The run folder holds config.json, model.pt (q's weights), metrics.json (the ELBO and the
    importance-sampling estimate of log Z in nats with their standard errors, the effective
    sample size, and the reference log Z where it is known), elbo.png, and for 2-D targets
    density.png: the target beside q's density and q's samples.
    """
    from .vi import estimate_log_z, fit_vi

    device = torch_device(device)
    target = get_target(target_spec, dim)
    name = Path(target_spec.rpartition(":")[2] or target_spec).stem
    out = fresh_out(out, f"vi-{name}-{flow_name}", overwrite)
    if threads:
        torch.set_num_threads(threads)
    kwargs = preset_kwargs(flow_name, {
        "transforms": transforms, "hidden_features": hidden_features,
        "bins": bins, "autoregressive": autoregressive})
    dtype = torch.float64 if float64 else torch.float32
    config = {
        "target": target_spec, "dim": target.dim, "flow": flow_name, "flow_kwargs": kwargs, "features": target.dim,
        "vi": {"steps": steps, "samples": samples, "lr": lr, "schedule": None if schedule == "none" else schedule,
               "anneal_steps": anneal_steps, "beta0": beta0, "stl": stl, "clip_grad": clip_grad,
               "max_minutes": max_minutes, "seed": seed, "dtype": str(dtype).removeprefix("torch."),
               "tensorboard": absolute(tensorboard)},
    }
    validate_config(config, "the options")
    check_memory(f"fitting this {flow_name} flow to a {target.dim}-dimensional target",
                 training_memory(target.dim, kwargs.get("transforms", 1), kwargs.get("hidden_features"),
                                 max(samples, min(log_z_samples, 10_000)), dtype.itemsize))
    torch.manual_seed(seed)
    flow = PRESETS[flow_name](target.dim, **kwargs).to(device=device, dtype=dtype)
    with RunFolder(out, replace=overwrite) as run:
        save_run(run.path, flow, config)
        c = config["vi"]
        result = fit_vi(flow, target.log_prob, steps=steps, samples=samples, lr=lr, beta0=beta0,
                        anneal_steps=anneal_steps, stl=stl, schedule=c["schedule"], clip_grad=clip_grad,
                        max_minutes=max_minutes, seed=seed, progress=not quiet, tensorboard_dir=c["tensorboard"])
        estimate = estimate_log_z(flow, target.log_prob, log_z_samples)
        save_atomic(flow.state_dict(), run.path / "model.pt")
        metrics = _vi_metrics(target, flow_name, estimate, result, out)
        write_json({**metrics, "history": result.history}, run.path / METRICS)
        _vi_plots(run.path, flow, target, result.history)
        run.publish()
    line = (f"ELBO {estimate.elbo:.4f} ± {estimate.elbo_stderr:.4f} nats; log Z {estimate.log_z:.4f} "
            f"± {estimate.stderr:.4f} (ESS {estimate.ess:.0f} of {estimate.n})")
    if target.log_z is not None:
        line += f"; reference log Z {target.log_z:.4f} ({metrics['log_z_error_stderrs']:+.1f} stderr)"
    _emit(metrics, as_json, line + f"\nwrote {out}/ (model.pt, config.json, metrics.json, PNGs)")


def _vi_metrics(target: Target, flow_name: str, estimate, result, out: Path) -> dict:
    m = {"target": target.name, "dim": target.dim, "flow": flow_name, "elbo": estimate.elbo,
         "elbo_stderr": estimate.elbo_stderr, "log_z": estimate.log_z, "log_z_stderr": estimate.stderr,
         "ess": estimate.ess, "ess_fraction": estimate.ess / estimate.n, "n_samples": estimate.n,
         "reference_log_z": target.log_z, "reference_note": target.note,
         "steps": result.steps, "stopped": result.stopped, "seconds": round(result.seconds, 3), "out": str(out)}
    if target.log_z is not None:
        error = estimate.log_z - target.log_z
        m["log_z_error_stderrs"] = error / estimate.stderr if estimate.stderr > 0 else math.copysign(math.inf, error)
    return m


def _vi_plots(out: Path, flow, target: Target, history: list[dict]) -> None:
    from . import plots

    if history:
        fig, ax = plots.subplots()
        ax.plot([h["step"] for h in history], [h["elbo"] for h in history], label="ELBO (beta = 1)")
        if target.log_z is not None:
            ax.axhline(target.log_z, color="k", ls="--", lw=1, label="reference log Z")
        ax.set_xlabel("step")
        ax.set_ylabel("nats")
        ax.legend()
        fig.tight_layout()
        plots.save_figure(fig, out / "elbo.png")
    if target.dim == 2:
        _density_png(flow, target, out / "density.png")


def _density_png(flow, target: Target, path: Path, resolution: int = 200, samples: int = 100_000) -> None:
    r"""Save the target density beside q's density and a histogram of q's samples (2-D targets).

    The target is shown normalised by its log Z on the plotting box (grid estimate); q's
    density needs its inverse, and is left out (with a note) where that fails to converge.
    """
    from . import plots
    from .transforms.numerical import ConvergenceError

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
    fig, axes = plots.subplots(1, 3, figsize=(15, 5))
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
    plots.save_figure(fig, path)


# --- pushforward vae -----------------------------------------------------------------------

def _posterior_names() -> list[str]:
    from .vae import POSTERIORS

    return list(POSTERIORS)


@click.command()
@click.option("--posterior", type=click.Choice(_posterior_names()), default="gaussian", show_default=True,
              help="The approximate posterior q(z | x).")
@click.option("--data-dir", type=click.Path(), required=True,
              help="Folder of the four MNIST IDX files (e.g. ../shared/data/mnist).")
@click.option("--latent", type=number("latent"), default=64, show_default=True, help="Dimension of z.")
@click.option("--hidden-features", type=SIZES, default="300,300", show_default=True,
              help="Hidden sizes of the encoder MLP (the decoder's are reversed).")
@click.option("--context-features", type=click.IntRange(min=1), default=None,
              help="Size of the context h that amortises the flow (default: the last hidden size).")
@click.option("--transforms", type=click.IntRange(min=0), default=None,
              help="Flow layers K (default: 16 planar/Sylvester, 4 IAF, 10 Householder, 5 ccLinIAF components).")
@click.option("--flow-hidden-features", type=SIZES, default="320,320", show_default=True, help="Hidden sizes of the IAF's MADEs.")
@click.option("--columns", type=number("columns"), default=32, show_default=True,
              help="Orthogonal vectors M of sylvester-orthogonal.")
@click.option("--reflections", type=number("reflections"), default=8, show_default=True,
              help="Reflections per layer of sylvester-householder.")
@click.option("--prior", type=click.Choice(["gaussian", *sorted(PRESETS)]), default="gaussian", show_default=True,
              help="The prior p(z): N(0, I) or a flow preset with a cheap density (maf, realnvp, nsf).")
@click.option("--prior-transforms", type=number("prior_transforms"), default=None, help="Layers of a flow prior.")
@click.option("--epochs", type=number("epochs"), default=1000, show_default=True, help="Largest number of epochs.")
@click.option("--batch-size", type=number("batch_size"), default=100, show_default=True, help="Mini-batch size.")
@click.option("--lr", type=number("lr"), default=5e-4, show_default=True, help="Adam learning rate.")
@click.option("--warmup", type=number("warmup"), default=5.0, show_default=True,
              help="Epochs over which the KL weight beta rises from 0 to 1.")
@click.option("--patience", type=number("patience"), default=100, show_default=True,
              help="Stop after this many epochs without validation improvement.")
@click.option("--clip-grad", type=number("clip_grad"), default=None, help="Clip the gradient norm to this value.")
@click.option("--max-minutes", type=number("max_minutes"), default=None, help="Wall-clock budget for training, in minutes.")
@click.option("--iw-samples", type=number("iw_samples"), default=5000, show_default=True,
              help="Importance samples per test example for -log p(x).")
@click.option("--test-examples", type=number("test_examples"), default=None,
              help="Evaluate on the first N test images only (default: all 10,000).")
@click.option("--seed", type=number("seed"), default=0, show_default=True, help="Seed of the weights, batches and binarization.")
@run_options("runs/vae-POSTERIOR", json_help="Print the test metrics as one JSON line.")
@tensorboard_option
@one_line_errors
def vae(posterior, data_dir, latent, hidden_features, context_features, transforms, flow_hidden_features, columns,
        reflections, prior, prior_transforms, epochs, batch_size, lr, warmup, patience, clip_grad, max_minutes,
        iw_samples, test_examples, seed, device, threads, out, overwrite, as_json, quiet, tensorboard):
    """Train a VAE with a flow posterior on dynamically binarized MNIST; report test -ELBO and -log p(x).

    The run folder holds config.json, model.pt (the best-validation weights), metrics.json
    (test negative ELBO and importance-weighted -log p(x), in nats per example, with standard
    errors over the test images), learning_curve.png and samples.png (decoder means of prior
    samples).
    """
    from . import vae as vae_lib
    from .data import binarized_mnist

    device = torch_device(device)
    if threads:
        torch.set_num_threads(threads)
    out = fresh_out(out, f"vae-{posterior}", overwrite)
    data = binarized_mnist(data_dir, seed)
    model_kwargs = {"features": data.features, "latent": latent, "posterior": posterior,
                    "hidden_features": list(hidden_features), "context_features": context_features,
                    "transforms": transforms, "flow_hidden_features": list(flow_hidden_features),
                    "columns": columns, "reflections": reflections,
                    "prior": None if prior == "gaussian" else prior, "prior_transforms": prior_transforms}
    config = {"model": model_kwargs, "data": {"name": "binarized-mnist", "data_dir": data_dir, "seed": seed,
                                              "image_shape": list(data.image_shape)},
              "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup": warmup, "patience": patience,
                        "clip_grad": clip_grad, "max_minutes": max_minutes, "seed": seed,
                        "tensorboard": absolute(tensorboard)}}
    validate_config(config, "the options")
    torch.manual_seed(seed)
    model = vae_lib.VAE(**model_kwargs)
    model.init_decoder_bias(data.train.mean(0))
    with RunFolder(out, replace=overwrite) as run:
        save_run(run.path, model, config)

        def on_best(m) -> None:
            save_atomic({k: v.detach().cpu() for k, v in m.state_dict().items()}, run.path / "model.pt")

        result = vae_lib.fit_vae(model, data, epochs=epochs, batch_size=batch_size, lr=lr, warmup=warmup,
                                 patience=patience, max_minutes=max_minutes, seed=seed, clip_grad=clip_grad,
                                 device=device, progress=not quiet, verbose=not as_json, on_best=on_best,
                                 tensorboard_dir=config["train"]["tensorboard"])
        test = data.test if test_examples is None else data.test[:test_examples]
        torch.manual_seed(seed)
        evaluation = vae_lib.evaluate_vae(model, test, iw_samples, progress=not quiet)
        model.cpu()
        save_atomic(model.state_dict(), run.path / "model.pt")
        metrics = {"posterior": posterior, "prior": prior, "latent": latent, **asdict(evaluation),
                   "best_epoch": result.best_epoch, "best_valid_neg_elbo": result.best_valid,
                   "epochs": len(result.history), "stopped": result.stopped, "seconds": round(result.seconds, 3),
                   "out": str(out)}
        write_json({**metrics, "history": result.history}, run.path / METRICS)
        _vae_plots(run.path, model, data, result.history)
        run.publish()
    line = (f"test -ELBO {evaluation.neg_elbo:.2f} ± {evaluation.neg_elbo_stderr:.2f} nats, "
            f"-log p(x) {evaluation.nll:.2f} ± {evaluation.nll_stderr:.2f} nats "
            f"({evaluation.samples} importance samples, {evaluation.n_examples} test images; "
            f"{len(result.history)} epochs, stopped: {result.stopped})")
    _emit(metrics, as_json, line + f"\nwrote {out}/ (model.pt, config.json, metrics.json, PNGs)")


def _vae_plots(out: Path, model, data, history: list[dict]) -> None:
    from . import plots

    if history:
        fig, ax = plots.subplots()
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (warmed-up -ELBO)")
        ax.plot(epochs, [h["valid_neg_elbo"] for h in history], label="validation -ELBO")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.legend()
        fig.tight_layout()
        plots.save_figure(fig, out / "learning_curve.png")
    plots.image_grid(model.sample(64).cpu() * 256, data.image_shape, 256, out / "samples.png")
