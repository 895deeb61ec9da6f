r"""Continuous normalizing flows side by side: pushforward's FFJORD against zuko's CNF, same size, same data.

    python -m benchmarks.cnf --minutes 4                          # digits, 1 block of 3x256, 1 thread each
    python -m benchmarks.cnf --minutes 4 --kinetic 0.01 --jacobian 0.01   # ours regularised
    python -m benchmarks.cnf --libraries pushforward --minutes 0.2 --hidden 16   # a smoke run

Both models are one continuous block dz/dt = f(z, t) with f an MLP of ``--hidden`` units per
layer on the 64 features of ``digits`` (standardised with the training split; the
log-likelihood is reported in the [0, 17)^64 space of the dequantised data, as ``pushforward fit``
reports it), trained with Adam at the same learning rate on the same batches in the same order,
from the same seed, with Hutchinson's trace estimator and the same tolerances, and scored on the
test split with the exact trace. Each library trains for ``--minutes`` of wall-clock time on
``--threads`` threads, one after the other in this process. Differences that remain are the
libraries' own and are printed: zuko embeds t as sin/cos of 3 frequencies and uses ELU (its
defaults), pushforward concatenates t and uses tanh (``--activation`` sets both); zuko
back-propagates by its adaptive-checkpoint adjoint (it re-evaluates f in the backward pass),
pushforward through the solver's operations.

Reported per library: training examples/s, test nats and bits/dim with their standard error,
and the NFE per training step, counted the same way for both: calls of f (a forward hook on the
MLP), forward solve and any re-evaluation in the backward pass together; for pushforward also
its own record (:func:`pushforward.transforms.continuous.recording`): forward NFE, and the
evaluations back-propagated through.
"""

from __future__ import annotations

import argparse
import json
import math
import time
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


def test_log_likelihood(model: CNF, x: Tensor, offset: float, batch: int = 500) -> tuple[float, float]:
    """Mean and standard error of the exact log-likelihood (nats) of standardised ``x``, plus ``offset``."""
    model.module.eval()
    model.exact(True)
    with torch.no_grad():
        ll = torch.cat([model.log_prob(x[i : i + batch]) for i in range(0, len(x), batch)]).double() + offset
    model.exact(False)
    return float(ll.mean()), float(ll.std() / math.sqrt(len(ll)))


def train(model: CNF, data: Tensor, plan: list[Tensor], seconds: float, lr: float) -> dict:
    """Adam steps on the batches of ``plan`` until ``seconds`` have passed; examples/s and NFE per step."""
    optimizer = torch.optim.Adam(model.module.parameters(), lr=lr)
    calls = _count_calls(model.velocity)
    model.module.train()
    steps = examples = nfe_forward = nfe_backward = 0
    start = time.perf_counter()
    for index in plan:
        with recording() as record:
            log_p = model.log_prob(data[index])
        penalty = record.penalty.sum() if record.kinetic else 0.0
        loss = (penalty - log_p.sum()) / len(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps, examples = steps + 1, examples + len(index)
        nfe_forward, nfe_backward = nfe_forward + record.nfe_forward, nfe_backward + record.nfe_backward
        if time.perf_counter() - start > seconds:
            break
    elapsed = time.perf_counter() - start
    out = {"steps": steps, "examples_per_second": examples / elapsed, "f_calls_per_step": calls[0] / steps}
    if model.library == "pushforward":
        out.update(nfe_forward=nfe_forward / steps, nfe_backward=nfe_backward / steps)
    return out


def benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Run the comparison of the module docstring; returns every measurement."""
    torch.set_num_threads(args.threads)
    data = pf.data.load("digits")
    mean, std = data.train.mean(0), data.train.std(0).clamp(min=1e-6)
    offset = -float(std.log().sum())  # log-likelihood of the data space from the standardised one
    train_x, test_x = (data.train - mean) / std, (data.test - mean) / std
    features = train_x.shape[1]
    plan = batch_plan(len(train_x), args.batch_size, 10**6, args.seed)
    libraries = peers.usable(args.libraries, log)
    result = {"data": "digits", "minutes": args.minutes, "threads": args.threads, "hidden": args.hidden,
              "rtol": args.rtol, "atol": args.atol, "batch_size": args.batch_size, "lr": args.lr,
              "activation": args.activation, "kinetic": args.kinetic, "jacobian": args.jacobian, "libraries": {}}
    for name in libraries:
        torch.manual_seed(args.seed)
        model = build(name, features, args.hidden, args.rtol, args.atol, ACTIVATIONS[args.activation],
                      args.kinetic, args.jacobian)
        size = sum(p.numel() for p in model.module.parameters())
        measured = train(model, train_x, plan, 60 * args.minutes, args.lr)
        ll, se = test_log_likelihood(model, test_x, offset)
        bits = -ll / (features * math.log(2))
        measured.update(parameters=size, test_log_likelihood=ll, stderr=se, bits_per_dim=bits,
                        bits_stderr=se / (features * math.log(2)))
        result["libraries"][name] = measured
        own = (f"; recorded NFE {measured['nfe_forward']:.1f} forward + {measured['nfe_backward']:.1f} backward"
               if "nfe_forward" in measured else "")
        log(f"{name}: {size:,} parameters, {measured['steps']} steps, {measured['examples_per_second']:.0f} examples/s, "
            f"f called {measured['f_calls_per_step']:.1f} times per step{own}; test {ll:.2f} ± {se:.2f} nats, "
            f"{bits:.4f} bits/dim")
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cnf", description=__doc__.split("\n\n")[0])
    p.add_argument("--libraries", type=lambda s: s.split(","), default=list(LIBRARIES))
    p.add_argument("--minutes", type=float, default=4.0, help="Training time of each library.")
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=[256, 256, 256])
    p.add_argument("--activation", choices=list(ACTIVATIONS), default="default",
                   help="Both libraries' non-linearity (default: each its own, tanh and ELU).")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--kinetic", type=float, default=0.0, help="pushforward's kinetic-energy weight.")
    p.add_argument("--jacobian", type=float, default=0.0, help="pushforward's Jacobian-norm weight.")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
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
