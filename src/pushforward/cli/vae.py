r"""``pushforward vae``: a variational auto-encoder with a flow posterior on binarised MNIST.

    pushforward vae --posterior sylvester-orthogonal --data-dir ../shared/data/mnist --out runs/vae-osnf

It follows ``pushforward fit``: a run folder (config.json, model.pt, metrics.json, PNGs),
``--json`` for one line of metrics, a progress bar, and one-line errors with exit status 1.
"""

from __future__ import annotations

from dataclasses import asdict

import click
import torch

from ..atomic import save_atomic
from .common import (SIZES, emit, absolute, fresh_out, number, one_line_errors, run_options,
                         tensorboard_option, torch_device)
from ..config import validate_config
from ..experiment import METRICS, save_run, write_json
from ..runs import RunFolder
from ..flows import PRESETS

__all__ = ["vae"]


def _posterior_names() -> list[str]:
    from ..vae import POSTERIORS

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
    from .. import vae as vae_lib
    from ..data import binarized_mnist

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
        from .. import plots

        plots.vae_figures(run.path, model, data.image_shape, result.history)
        run.publish()
    line = (f"test -ELBO {evaluation.neg_elbo:.2f} ± {evaluation.neg_elbo_stderr:.2f} nats, "
            f"-log p(x) {evaluation.nll:.2f} ± {evaluation.nll_stderr:.2f} nats "
            f"({evaluation.samples} importance samples, {evaluation.n_examples} test images; "
            f"{len(result.history)} epochs, stopped: {result.stopped})")
    emit(metrics, as_json, line + f"\nwrote {out}/ (model.pt, config.json, metrics.json, PNGs)")
