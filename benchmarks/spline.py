"""The rational-quadratic spline's pieces, timed alone: softmax and knots, old way and new.

    python -m benchmarks.spline --threads 2

On parameters of shape (128, 64, 8) (a batch of 128, 64 features, 8 bins), each with its
backward pass: ``torch.softmax`` against the written-out softmax of
:mod:`pushforward.transforms.splines`; the knots by cumsum, pad and cat (the former
``_cumulative_knots`` of the softmax sizes) against one ``addmm`` with a fixed matrix
(``_knots``); and ``RQSpline`` forward and inverse on (128, 64) inputs. Prints the median
microseconds per call over interleaved repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from pushforward.transforms import splines


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the timings; returns the median microseconds per call of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bins, bound, minimum = 8, 5.0, 1e-3
    raw = torch.randn(128, 64, bins, requires_grad=True)
    h = torch.randn(128, 64, 3 * bins - 1, requires_grad=True)
    x = 2 * torch.randn(128, 64)
    spline = splines.RQSpline(bins, bound)
    cases: dict[str, Callable[[], torch.Tensor]] = {
        "torch.softmax": lambda: torch.softmax(raw, -1),
        "written-out softmax": lambda: splines._softmax(raw),
        "knots by cumsum": lambda: splines._cumulative_knots(minimum + (1 - minimum * bins) * torch.softmax(raw, -1),
                                                             bound),
        "knots by addmm": lambda: splines._knots(raw, bound, minimum),
        "RQSpline forward": lambda: sum(spline.forward(x, h)),
        "RQSpline inverse": lambda: sum(spline.inverse(x, h)),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, case in cases.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                case().sum().backward()
            times[name].append((time.perf_counter() - start) / args.calls * 1e6)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, us in medians.items():
        print(f"{name:20s} {us:8.0f} us per call, forward and backward")
    return medians


if __name__ == "__main__":
    main()
