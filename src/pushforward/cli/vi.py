r"""``pushforward vi``: variational inference with a flow on an unnormalized target.

    pushforward vi --target u1 --flow planar --transforms 32 --out runs/u1-planar

It follows ``pushforward fit``: a run folder (config.json, model.pt, metrics.json, PNGs),
``--json`` for one line of metrics, a progress bar, and one-line errors with exit status 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import torch

from ..atomic import save_atomic
from .common import (SIZES, emit, absolute, fresh_out, number, one_line_errors, preset_kwargs, run_options,
                         tensorboard_option, torch_device)
from ..checks import check_memory, training_memory
from ..config import validate_config
from ..experiment import METRICS, save_run, write_json
from ..runs import RunFolder
from ..flows import PRESETS
from ..targets import TARGETS, Target, get_target

__all__ = ["vi"]


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
    from ..vi import estimate_log_z, fit_vi

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
        from .. import plots

        plots.vi_figures(run.path, flow, target, result.history)
        run.publish()
    line = (f"ELBO {estimate.elbo:.4f} ± {estimate.elbo_stderr:.4f} nats; log Z {estimate.log_z:.4f} "
            f"± {estimate.stderr:.4f} (ESS {estimate.ess:.0f} of {estimate.n})")
    if target.log_z is not None:
        line += f"; reference log Z {target.log_z:.4f} ({metrics['log_z_error_stderrs']:+.1f} stderr)"
    emit(metrics, as_json, line + f"\nwrote {out}/ (model.pt, config.json, metrics.json, PNGs)")


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
