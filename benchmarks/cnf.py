r"""Continuous normalizing flows side by side: pushforward's FFJORD against zuko's CNF, same size, same data.

    python -m benchmarks.cnf --minutes 4                          # digits, 1 block of 3x256, 1 thread each
    python -m benchmarks.cnf --minutes 4 --kinetic 0.01 --jacobian 0.01   # ours regularised
    python -m benchmarks.cnf --libraries pushforward --minutes 0.2 --hidden 16   # a smoke run

Both models are one continuous block dz/dt = f(z, t) with f an MLP of ``--hidden`` units per
layer on the 64 features of ``digits`` (its 80/10/10 train/validation/test split, standardised
with the training split; the log-likelihood is reported in the [0, 17)^64 space of the
dequantised data, as ``pushforward fit`` reports it), trained with Adam at the same learning rate
on the same batches in the same order, from the same seed, with Hutchinson's trace estimator and
the same tolerances. Differences that remain are the libraries' own and are printed: zuko embeds
t as sin/cos of 3 frequencies and uses ELU (its defaults), pushforward concatenates t and uses
tanh (``--activation`` sets both); zuko back-propagates by its adaptive-checkpoint adjoint (it
re-evaluates f in the backward pass), pushforward through the solver's operations.

The two libraries train at the same time, each in its own process (spawned) on ``--threads``
threads, for ``--minutes`` of training time each; they start their first step together, once
both have loaded the data and built their model (``--sequential``: one after the other in this
process instead). Model selection is ``pushforward fit``'s, for both alike: after every
``--validate-every`` epochs (an epoch is one pass over the shuffled training split in batches
of ``--batch-size``, the last partial batch dropped) and after the last step, the mean exact
log-likelihood of the validation split is measured; the weights of the best one are kept, and
the test split is scored with them, with the exact trace. The clock of the training time stops
while the validation runs: each library gets ``--minutes`` of training steps, whatever its
validation costs (reported apart).

Reported per library: training examples/s, the selected epoch and step, the best validation
and the test log-likelihood (nats, with its standard error) and bits/dim, and the NFE per
training step, counted the same way for both: calls of f (a forward hook on the MLP), forward
solve and any re-evaluation in the backward pass together; for pushforward also its own record
(:func:`pushforward.transforms.continuous.recording`): forward NFE, and the evaluations
back-propagated through.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import pushforward as pf
from pushforward.transforms.continuous import recording

from . import peers
from .compare import batch_plan

LIBRARIES = ("pushforward", "zuko")
ACTIVATIONS = {"default": None, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus}


@dataclass
class CNF:
    """One library's CNF: its module, log p of standardised data, the velocity MLP, a switch of the trace."""

    library: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    velocity: nn.Module
    exact: Callable[[bool], None]


@dataclass
class Splits:
    """digits standardised by the training split; ``offset`` = -sum log std, added to a standardised
    log-likelihood to give the data space's. Shapes: train, valid, test (N, 64)."""

    train: Tensor
    valid: Tensor
    test: Tensor
    offset: float


def load_splits() -> Splits:
    """The train, validation and test splits of digits (80/10/10), standardised by the training split."""
    data = pf.data.load("digits")
    mean, std = data.train.mean(0), data.train.std(0).clamp(min=1e-6)
    return Splits(*((x - mean) / std for x in (data.train, data.valid, data.test)), -float(std.log().sum()))


def build(library: str, features: int, hidden: Sequence[int], rtol: float, atol: float,
          activation: type[nn.Module] | None, kinetic: float = 0.0, jacobian: float = 0.0) -> CNF:
    """A CNF of one block with ``hidden`` units per layer, Hutchinson's estimator in training.

    Raises:
        ImportError: if zuko is asked for and not installed.
    """
    if library == "pushforward":
        options = {} if activation is None else {"activation": activation}
        flow = pf.FFJORD(features, hidden_features=tuple(hidden), rtol=rtol, atol=atol, kinetic=kinetic,
                         jacobian=jacobian, **options)
        block = flow.transform[0]
        # ours is exact in evaluation mode by construction (evaluation_trace="exact")
        return CNF(library, flow, flow.log_prob, block.net, lambda exact: None)
    import zuko

    options = {} if activation is None else {"activation": activation}
    flow = zuko.flows.CNF(features, hidden_features=tuple(hidden), exact=False, rtol=rtol, atol=atol, **options)

    def exact(value: bool) -> None:
        flow.transform.exact = value

    return CNF(library, flow, lambda x: flow().log_prob(x), flow.transform.ode, exact)


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def held_out_log_likelihood(model: CNF, x: Tensor, offset: float, batch: int = 500) -> tuple[float, float]:
    """Mean and standard error of the exact log-likelihood (nats) of standardised ``x``, plus ``offset``.

    Leaves the model in training mode with the Hutchinson estimator.
    """
    model.module.eval()
    model.exact(True)
    with torch.no_grad():
        ll = torch.cat([model.log_prob(x[i : i + batch]) for i in range(0, len(x), batch)]).double() + offset
    model.exact(False)
    model.module.train()
    return float(ll.mean()), float(ll.std() / math.sqrt(len(ll)))


def train(model: CNF, splits: Splits, plan: list[Tensor], steps_per_epoch: int, seconds: float, lr: float,
          validate_every: int = 1) -> dict:
    """Adam steps on the batches of ``plan`` until ``seconds`` of training have passed (or the plan
    ends), validating after every ``validate_every`` epochs of ``steps_per_epoch`` steps and after
    the last step.

    The model ends with the weights of the best validation log-likelihood. Returns examples/s
    and NFE per step (of the training steps alone), the selected epoch and step (an epoch cut
    short by the time limit counts as one), the validations made and their time (s).
    """
    optimizer = torch.optim.Adam(model.module.parameters(), lr=lr)
    calls = _count_calls(model.velocity)
    model.module.train()
    steps = examples = nfe_forward = nfe_backward = 0
    elapsed = validation_seconds = 0.0
    best = {"valid_log_likelihood": -math.inf}
    history = []
    for number, index in enumerate(plan, 1):
        start = time.perf_counter()
        with recording() as record:
            log_p = model.log_prob(splits.train[index])
        penalty = record.penalty.sum() if record.kinetic else 0.0
        loss = (penalty - log_p.sum()) / len(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        elapsed += time.perf_counter() - start
        steps, examples = steps + 1, examples + len(index)
        nfe_forward, nfe_backward = nfe_forward + record.nfe_forward, nfe_backward + record.nfe_backward
        last = elapsed > seconds or number == len(plan)
        if last or steps % (steps_per_epoch * validate_every) == 0:
            start = time.perf_counter()
            valid = held_out_log_likelihood(model, splits.valid, splits.offset)[0]
            validation_seconds += time.perf_counter() - start
            history.append(valid)
            if valid > best["valid_log_likelihood"]:  # a NaN never wins
                best = {"valid_log_likelihood": valid, "selected_step": steps,
                        "selected_epoch": math.ceil(steps / steps_per_epoch),
                        "state": copy.deepcopy(model.module.state_dict())}
        if last:
            break
    if "state" in best:
        model.module.load_state_dict(best.pop("state"))
    out = {"steps": steps, "epochs": math.ceil(steps / steps_per_epoch), "training_seconds": elapsed,
           "examples_per_second": examples / elapsed, "f_calls_per_step": calls[0] / steps,
           "validations": len(history), "validation_seconds": validation_seconds,
           "valid_history": history, **best}
    if model.library == "pushforward":
        out.update(nfe_forward=nfe_forward / steps, nfe_backward=nfe_backward / steps)
    return out


def run_library(name: str, args: argparse.Namespace, ready: Callable[[], object] = lambda: None) -> dict:
    """Train library ``name``'s CNF as the module docstring says and score it on the test split.

    ``ready`` is called once the data and the model exist, just before the first step (the
    parallel run waits there for the other library). Returns the measurements of :func:`train`
    with the model's size and its test log-likelihood (nats) and bits/dim, each with its
    standard error.
    """
    torch.set_num_threads(args.threads)
    splits = load_splits()
    features = splits.train.shape[1]
    steps_per_epoch = max(len(splits.train) // args.batch_size, 1)
    plan = batch_plan(len(splits.train), args.batch_size, 10**6, args.seed)
    torch.manual_seed(args.seed)
    model = build(name, features, args.hidden, args.rtol, args.atol, ACTIVATIONS[args.activation],
                  args.kinetic, args.jacobian)
    size = sum(p.numel() for p in model.module.parameters())
    ready()
    measured = train(model, splits, plan, steps_per_epoch, 60 * args.minutes, args.lr, args.validate_every)
    ll, se = held_out_log_likelihood(model, splits.test, splits.offset)
    nats_per_bit = features * math.log(2)
    measured.update(parameters=size, test_log_likelihood=ll, stderr=se, bits_per_dim=-ll / nats_per_bit,
                    bits_stderr=se / nats_per_bit)
    return measured


def _worker(name: str, args: argparse.Namespace, barrier, results) -> None:
    """One spawned process: :func:`run_library` after all workers are ready; puts (name, result or traceback)."""
    try:
        results.put((name, run_library(name, args, barrier.wait)))
    except BaseException:  # noqa: BLE001 -- reported by the parent, which raises
        barrier.abort()  # the other worker must not wait for this one
        results.put((name, traceback.format_exc()))


def run_parallel(libraries: Sequence[str], args: argparse.Namespace) -> dict[str, dict]:
    """:func:`run_library` for each library in its own spawned process, all starting to train together.

    Raises:
        RuntimeError: with the worker's traceback, if a worker fails or dies.
    """
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(libraries)), context.Queue()
    workers = [context.Process(target=_worker, args=(name, args, barrier, results), daemon=True) for name in libraries]
    for worker in workers:
        worker.start()
    out: dict[str, dict | str] = {}
    try:
        while len(out) < len(libraries):
            try:
                name, result = results.get(timeout=5)
                out[name] = result
            except queue.Empty:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a benchmark worker died (exit code {dead[0].exitcode})") from None
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    failed = {name: result for name, result in out.items() if isinstance(result, str)}
    if failed:
        raise RuntimeError("benchmark worker failed:\n" + "\n".join(f"{n}:\n{t}" for n, t in failed.items()))
    return {name: out[name] for name in libraries}


def benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Run the comparison of the module docstring; returns every measurement."""
    libraries = peers.usable(args.libraries, log)
    result = {"data": "digits", "minutes": args.minutes, "threads": args.threads, "hidden": args.hidden,
              "rtol": args.rtol, "atol": args.atol, "batch_size": args.batch_size, "lr": args.lr,
              "activation": args.activation, "kinetic": args.kinetic, "jacobian": args.jacobian,
              "validate_every": args.validate_every, "parallel": not args.sequential}
    if args.sequential:
        result["libraries"] = {name: run_library(name, args) for name in libraries}
    else:
        result["libraries"] = run_parallel(libraries, args)
    for name, m in result["libraries"].items():
        own = (f"; recorded NFE {m['nfe_forward']:.1f} forward + {m['nfe_backward']:.1f} backward"
               if "nfe_forward" in m else "")
        log(f"{name}: {m['parameters']:,} parameters, {m['steps']} steps ({m['epochs']} epochs) in "
            f"{m['training_seconds']:.0f} s, {m['examples_per_second']:.0f} examples/s, "
            f"f called {m['f_calls_per_step']:.1f} times per step{own}; {m['validations']} validations in "
            f"{m['validation_seconds']:.0f} s, best {m.get('valid_log_likelihood', math.nan):.2f} nats at epoch "
            f"{m.get('selected_epoch')} (step {m.get('selected_step')}); test {m['test_log_likelihood']:.2f} ± "
            f"{m['stderr']:.2f} nats, {m['bits_per_dim']:.4f} ± {m['bits_stderr']:.4f} bits/dim")
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cnf", description=__doc__.split("\n\n")[0])
    p.add_argument("--libraries", type=lambda s: s.split(","), default=list(LIBRARIES))
    p.add_argument("--minutes", type=float, default=4.0, help="Training time of each library (validation apart).")
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=[256, 256, 256])
    p.add_argument("--activation", choices=list(ACTIVATIONS), default="default",
                   help="Both libraries' non-linearity (default: each its own, tanh and ELU).")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--kinetic", type=float, default=0.0, help="pushforward's kinetic-energy weight.")
    p.add_argument("--jacobian", type=float, default=0.0, help="pushforward's Jacobian-norm weight.")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--validate-every", type=int, default=1, help="Epochs between validations (both libraries).")
    p.add_argument("--threads", type=int, default=1, help="Threads of each library.")
    p.add_argument("--sequential", action="store_true",
                   help="Train the libraries one after the other in this process, not at the same time.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="Also write the measurements to this file.")
    return p


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict:
    args = _parser().parse_args(argv)
    result = benchmark(args, log)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
