r"""Glow side by side: pushforward's against normflows' at the same size, on the same images.

    python -m benchmarks.glow --data mnist --data-dir ../shared/data/mnist       # DESIGN.md's size
    python -m benchmarks.glow --data digits --levels 1 --steps 4 --hidden 32 --repeats 3 --turn 5

Both models are Glow with L levels of K steps (ActNorm, LU-decomposed invertible 1x1
convolution, affine channel coupling whose conditioner has ``--hidden`` channels), trained with
Adamax at the same learning rate, on the same batches in the same order (one shuffled plan), the
same seed before each build, and the same thread count, in one process. Differences that remain
are the libraries' own and are printed: normflows scores the factored-out channels of each level
with a per-channel Gaussian (its ``GlowBase``), pushforward with Glow's conditional Gaussian given
the channels that go on (the paper's split prior); both couplings' scale is sigmoid(h + 2) in
the data -> base direction, both 1x1 convolutions are parametrised (P L U) in that direction.

* **Throughput** (images/s of forward + backward + Adamax step): the libraries take ``--turn``
  steps each in turn, the order rotating, ``--repeats`` times; ratios ours / theirs per
  repetition, printed as min-median-max (a slow spell of a shared host falls on both alike).
* **Test bits/dim** after the same number of steps, in the [0, levels)^D pixel space of the
  dequantised data: pushforward's model maps to that space itself; normflows' is given x / levels
  (its own convention, [0, 1)) and D log(levels) is added to its negative log-likelihood.
* **Peak memory** of a training step (two steps, a fresh subprocess per library, the increase
  of the peak RSS: :func:`benchmarks.compare.measure_memory`'s method).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import pushforward as pf

from . import peers
from .compare import _MALLOC_ENV, _peak_rss, _reset_peak_rss, batch_plan

LIBRARIES = ("pushforward", "normflows")
DEFAULT_MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@dataclass
class Glow:
    """One library's Glow: its module and the negative log-likelihood in nats of pixels in [0, levels)."""

    library: str
    module: nn.Module
    nll: Callable[[Tensor], Tensor]
    note: str


def build(library: str, shape: Sequence[int], levels: int, steps: int, hidden: int, pixel_levels: int,
          split_prior: str = "conditional") -> Glow:
    """Glow of ``levels`` x ``steps`` with ``hidden`` conditioner channels for images ``shape``
    (``split_prior``: pushforward's, see :class:`pushforward.Glow`).

    Raises:
        ImportError: if normflows is asked for and not installed.
    """
    if library == "pushforward":
        flow = pf.Glow(shape, levels=levels, steps=steps, hidden_channels=hidden, pixel_levels=pixel_levels,
                       split_prior=split_prior)
        note = {"conditional": "conditional Gaussian (the paper's)", "channel": "a per-channel Gaussian"}[split_prior]
        return Glow(library, flow, lambda x: -flow.log_prob(x), f"split prior: {note}")
    import normflows as nf

    c, h, w = shape
    q0, merges, flows = [], [], []
    for i in range(levels):  # normflows' Glow example (base -> data), level 0 the coarsest
        flows.append([*(nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                        for _ in range(steps)), nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        q0.append(nf.distributions.GlowBase(latent))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    offset = math.prod(shape) * math.log(pixel_levels)
    return Glow(library, model, lambda x: -model.log_prob(x / pixel_levels, None) + offset,
                "split prior: a per-channel Gaussian of each factored part (GlowBase)")


def load_images(name: str, data_dir: str | Path | None) -> pf.data.DataSet:
    """MNIST (55,000 / 5,000 / 10,000, 8-bit, dequantised) or digits as images."""
    return pf.data.load(name, data_dir or DEFAULT_MNIST_DIR, images=True)


def bits_per_dim(model: Glow, x: Tensor, batch: int = 500) -> tuple[float, float]:
    """Mean and standard error of the negative log-likelihood of ``x`` in bits/dim."""
    model.module.eval()
    with torch.no_grad():
        nll = torch.cat([model.nll(x[i : i + batch]) for i in range(0, len(x), batch)]).double()
    per_dim = math.prod(x.shape[1:]) * math.log(2)
    return float(nll.mean() / per_dim), float(nll.std() / math.sqrt(len(nll)) / per_dim)


def _train(model: Glow, optimizer: torch.optim.Optimizer, train: Tensor, plan: list[Tensor]) -> float:
    """Seconds for one training step on each batch of ``plan``."""
    model.module.train()
    start = time.perf_counter()
    for index in plan:
        loss = model.nll(train[index]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def _probe(library: str, options: dict) -> float:
    """Peak RSS increase (MiB) of two training steps of ``library``'s Glow, in this (fresh) process."""
    torch.set_num_threads(options["threads"])
    torch.manual_seed(0)
    model = build(library, options["shape"], options["levels"], options["steps"], options["hidden"],
                  options["pixel_levels"], options["split_prior"])
    optimizer = torch.optim.Adamax(model.module.parameters(), lr=1e-3)
    x = torch.rand(options["batch_size"], *options["shape"]) * options["pixel_levels"]
    base = _reset_peak_rss()
    for _ in range(2):
        loss = model.nll(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (_peak_rss() - base) / 2**20


def peak_memory(library: str, options: dict, timeout: float = 600) -> float:
    """:func:`_probe` in a fresh ``python -m benchmarks.glow --probe`` subprocess; MiB or NaN."""
    command = [sys.executable, "-W", "ignore", "-m", "benchmarks.glow", "--probe", json.dumps([library, options])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parents[1],
                              env={**os.environ, "OMP_NUM_THREADS": str(options["threads"]), **_MALLOC_ENV})
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return math.nan


def benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Run the comparison of the module docstring; returns every measurement."""
    torch.set_num_threads(args.threads)
    data = load_images(args.data, args.data_dir)
    shape, pixel_levels = data.event_shape, data.levels
    libraries = peers.usable(args.libraries, log)
    models, optimizers = {}, {}
    for name in libraries:
        torch.manual_seed(args.seed)
        models[name] = build(name, shape, args.levels, args.steps, args.hidden, pixel_levels, args.split_prior)
        optimizers[name] = torch.optim.Adamax(models[name].module.parameters(), lr=args.lr)
        size = sum(p.numel() for p in models[name].module.parameters())
        log(f"{name}: {size:,} parameters; {models[name].note}")
    total = args.warmup + args.repeats * args.turn
    plan = batch_plan(len(data.train), args.batch_size, total, args.seed)
    for name in libraries:  # untimed: ActNorm's data-dependent initialisation, allocator warm-up
        _train(models[name], optimizers[name], data.train, plan[: args.warmup])
    seconds: dict[str, list[float]] = {name: [] for name in libraries}
    for r in range(args.repeats):
        turn = plan[args.warmup + r * args.turn : args.warmup + (r + 1) * args.turn]
        for name in libraries[r % len(libraries):] + libraries[: r % len(libraries)]:
            seconds[name].append(_train(models[name], optimizers[name], data.train, turn))
    test = data.test[: args.test_size] if args.test_size else data.test
    result = {"data": args.data, "shape": list(shape), "steps_trained": total, "threads": args.threads,
              "levels": args.levels, "steps": args.steps, "hidden": args.hidden, "batch_size": args.batch_size,
              "libraries": {}}
    options = {"shape": list(shape), "levels": args.levels, "steps": args.steps, "hidden": args.hidden,
               "split_prior": args.split_prior,
               "pixel_levels": pixel_levels, "batch_size": args.batch_size, "threads": args.threads}
    for name in libraries:
        rates = [args.turn * args.batch_size / s for s in seconds[name]]
        bpd, se = bits_per_dim(models[name], test)
        memory = math.nan if args.no_memory else peak_memory(name, options)
        result["libraries"][name] = {"images_per_second": rates, "test_bits_per_dim": bpd, "stderr": se,
                                     "peak_memory_mib": memory}
        log(f"{name}: {sorted(rates)[len(rates) // 2]:.1f} images/s (median of {len(rates)} turns), "
            f"test {bpd:.4f} ± {se:.4f} bits/dim on {len(test)} images after {total} steps, "
            f"peak training memory {memory:.1f} MiB")
    if "normflows" in result["libraries"]:
        ours, theirs = seconds["pushforward"], seconds["normflows"]
        ratios = sorted(t / o for o, t in zip(ours, theirs))
        result["throughput_ratio"] = ratios
        log(f"throughput pushforward / normflows: {ratios[0]:.2f}-{ratios[len(ratios) // 2]:.2f}-{ratios[-1]:.2f} "
            f"(min-median-max over {len(ratios)} repetitions)")
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.glow", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mnist", choices=["mnist", "fashion-mnist", "digits"])
    p.add_argument("--data-dir", default=None, help="Folder of the IDX files (default ../shared/data/mnist).")
    p.add_argument("--libraries", type=lambda s: s.split(","), default=list(LIBRARIES))
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--split-prior", default="conditional", choices=["conditional", "channel"],
                   help="pushforward's split prior (normflows' is per-channel).")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adamax learning rate.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5, help="Untimed steps first.")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--turn", type=int, default=10, help="Steps a library takes per turn.")
    p.add_argument("--test-size", type=int, default=0, help="Test images scored (0: all).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", default=None, help="Also write the measurements to this file.")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict | None:
    """Run the benchmark with command-line ``argv`` and return its measurements (None for the
    internal ``--probe`` of a memory subprocess, which prints its figure instead)."""
    args = _parser().parse_args(argv)
    if args.probe:
        library, options = json.loads(args.probe)
        print(_probe(library, options))
        return None
    result = benchmark(args, log)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
