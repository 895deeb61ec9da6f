"""Where a training step's time goes: forward, backward and optimiser step, per library.

    python -m benchmarks.phases                                   # MAF on digits, every library
    python -m benchmarks.phases --arch nsf-ar --libraries pushforward,normflows --rounds 60

Builds the same flow in each library (:mod:`benchmarks.peers`), on the standardised data of
:func:`benchmarks.compare.load_data`, with torch's default Adam (lr 1e-3), and times the three
phases of ``--steps`` training steps (batch 128) in turns: every library takes its steps, then
the next, ``--rounds`` times (the order reversed every other round), so that the host's drift
falls on every library alike. Prints the mean milliseconds per step of each phase:

- forward: ``-log_prob(x).mean()`` with the autograd graph;
- backward: ``zero_grad`` and ``loss.backward()``;
- step: ``optimizer.step()``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from .compare import load_data
from .peers import LIBRARIES, Spec, available, build


def measure(libraries: list[str], arch: str, data: str = "digits", rounds: int = 40, steps: int = 4,
            batch: int = 128, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Mean seconds per training step of (forward, backward, step), per library."""
    train = load_data(data, seed=seed).train
    generator = torch.Generator().manual_seed(seed)
    batches = [train[torch.randint(len(train), (batch,), generator=generator)] for _ in range(steps)]
    runs = {}
    for library in libraries:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build(library, Spec(arch, train.shape[1]))
        runs[library] = (model, torch.optim.Adam(model.module.parameters(), lr=1e-3))
    totals = {library: [0.0, 0.0, 0.0] for library in libraries}

    def turn(library: str, record: bool) -> None:
        model, optimizer = runs[library]
        for x in batches:
            t0 = time.perf_counter()
            loss = -model.log_prob(x).mean()
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            t3 = time.perf_counter()
            if record:
                for i, dt in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                    totals[library][i] += dt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for library in libraries:  # warm-up
            turn(library, False)
        for r in range(rounds):
            for library in libraries if r % 2 == 0 else libraries[::-1]:
                turn(library, True)
    n = rounds * steps
    return {library: (f / n, b / n, s / n) for library, (f, b, s) in totals.items()}


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float, float]]:
    """Run :func:`measure` for the command line's libraries (those installed) and print the
    milliseconds per step of each phase; returns :func:`measure`'s seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="maf", help="maf, realnvp, nsf-coupling or nsf-ar")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=4, help="steps per library per turn")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    libraries = [name for name in args.libraries.split(",") if not available(name)]
    result = measure(libraries, args.arch, args.data, args.rounds, args.steps)
    print(f"{args.arch} on {args.data}, batch 128, {args.threads} threads, {args.rounds} rounds of "
          f"{args.steps} steps in turns: ms per step")
    print(f"  {'library':12s} {'forward':>8s} {'backward':>9s} {'step':>6s} {'total':>7s}")
    for library, phases in result.items():
        f, b, s = (1e3 * t for t in phases)
        print(f"  {library:12s} {f:8.2f} {b:9.2f} {s:6.2f} {f + b + s:7.2f}")
    return result


if __name__ == "__main__":
    main()
