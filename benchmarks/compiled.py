"""``torch.compile`` against eager execution: pushforward's training throughput alone.

    python -m benchmarks.compiled --arch maf,nsf-ar --repeats 7 --threads 2

For each architecture (MAF: 5 layers, MADE 2x512; NSF: 5 layers, 2x256, 8 bins, coupling or
autoregressive) on 64-d random data, times training steps (batch 128, forward, backward, Adam)
of the eager loss -mean log p(x) against the same loss compiled with ``torch.compile`` (the
input checks of ``Flow.log_prob`` left out of the compiled function, which would otherwise
break its graph), the two interleaved. Prints the compile time and the median examples/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import pushforward as pf

_FLOWS: dict[str, Callable[[], pf.Flow]] = {
    "maf": lambda: pf.MAF(64, transforms=5, hidden_features=(512, 512)),
    "nsf-coupling": lambda: pf.NSF(64, transforms=5, hidden_features=(256, 256)),
    "nsf-ar": lambda: pf.NSF(64, transforms=5, hidden_features=(256, 256), autoregressive=True),
}


def _step(arch: str, compiled: bool) -> Callable[[torch.Tensor], None]:
    """One training step of a fresh flow of ``arch``, eager or compiled."""
    torch.manual_seed(0)
    flow = _FLOWS[arch]()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def loss(x: torch.Tensor) -> torch.Tensor:
        z, ladj = flow.transform.inverse(x)
        return -(flow.base.log_prob(z) + ladj).mean()

    loss_fn = torch.compile(loss) if compiled else loss

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss_fn(x).backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison; returns the median ratio compiled / eager per architecture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="maf,nsf-ar", help=f"comma-separated of {', '.join(_FLOWS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(128, 64)
    ratios = {}
    for arch in args.arch.split(","):
        steps = {"eager": _step(arch, False), "compiled": _step(arch, True)}
        start = time.perf_counter()
        for _ in range(3):
            steps["compiled"](x)
        compile_seconds = time.perf_counter() - start
        for _ in range(3):
            steps["eager"](x)
        rates: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(x)
                rates[name].append(args.steps * len(x) / (time.perf_counter() - start))
        eager, compiled = statistics.median(rates["eager"]), statistics.median(rates["compiled"])
        ratios[arch] = compiled / eager
        print(f"{arch:13s} eager {eager:7.0f} ex/s, compiled {compiled:7.0f} ex/s ({compiled / eager:.2f}x; "
              f"compiling and 3 steps took {compile_seconds:.0f} s)")
    return ratios


if __name__ == "__main__":
    main()
