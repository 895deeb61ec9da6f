"""Hidden activations applied in place against out of place: pushforward's throughput alone.

    python -m benchmarks.in_place --repeats 7 --threads 2

Builds RealNVP (5 layers, 2x256), MAF (5 layers, MADE 2x512) and autoregressive NSF (5 layers,
2x256, 8 bins) on 64-d random data, and times ``log_prob`` (batch 1000, no gradient) and
training steps (batch 128, forward, backward, Adam) with every ReLU of the conditioners set
out of place (``inplace=False``) and in place (the default of
:func:`~pushforward.nn.mlp.hidden_activation`), the two interleaved over the repetitions.
Prints the median examples/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import pushforward as pf

_FLOWS: dict[str, Callable[[], pf.Flow]] = {
    "realnvp": lambda: pf.RealNVP(64, transforms=5, hidden_features=(256, 256)),
    "maf": lambda: pf.MAF(64, transforms=5, hidden_features=(512, 512)),
    "nsf-ar": lambda: pf.NSF(64, transforms=5, hidden_features=(256, 256), autoregressive=True),
}
_CASES = [("realnvp", "log_prob"), ("realnvp", "train"), ("maf", "log_prob"), ("maf", "train"), ("nsf-ar", "train")]


def _runner(arch: str, task: str, in_place: bool) -> tuple[Callable[[], None], int]:
    """One call of ``task`` on a fresh flow, and the number of examples it processes."""
    torch.manual_seed(0)
    flow = _FLOWS[arch]()
    for m in flow.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = in_place
    batch = 1000 if task == "log_prob" else 128
    x = torch.randn(batch, 64)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def run() -> None:
        if task == "log_prob":
            with torch.no_grad():
                flow.log_prob(x)
            return
        optimizer.zero_grad()
        (-flow.log_prob(x).mean()).backward()
        optimizer.step()

    return run, batch


def main(argv: list[str] | None = None) -> dict[tuple[str, str], float]:
    """Run the comparison; returns the median ratio in place / out of place per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ratios = {}
    for arch, task in _CASES:
        runners = {in_place: _runner(arch, task, in_place) for in_place in (False, True)}
        rates: dict[bool, list[float]] = {False: [], True: []}
        for run, _ in runners.values():  # warm-up
            for _ in range(3):
                run()
        for _ in range(args.repeats):
            for in_place, (run, batch) in runners.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    run()
                rates[in_place].append(args.calls * batch / (time.perf_counter() - start))
        out, inp = statistics.median(rates[False]), statistics.median(rates[True])
        ratios[(arch, task)] = inp / out
        print(f"{arch:8s} {task:8s} out of place {out:9.0f} ex/s, in place {inp:9.0f} ex/s ({inp / out:.2f}x)")
    return ratios


if __name__ == "__main__":
    main()
