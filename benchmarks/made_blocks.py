"""MADE block products against one dense masked product: pushforward's training throughput alone.

    python -m benchmarks.made_blocks --features 64 --hidden 512,512 --blocks 1,2,4 --threads 2
    python -m benchmarks.made_blocks --features 784 --hidden 1024,1024 --blocks 1,4 --repeats 3
    python -m benchmarks.made_blocks --blocks 1,auto,4     # auto: MaskedLinear's default per layer

Builds MAF(5 layers) (or ``--arch nsf-ar``: autoregressive NSF, 8 bins) and, for each value of
``--blocks``, re-plans every :class:`~pushforward.nn.made.MaskedLinear` (1: the dense masked
product; ``auto``: each layer's default plan), then times training steps (forward, backward, fused Adam; batch 128, random data),
the settings interleaved over the repetitions. Prints the median examples/s of each and its
ratio to the first setting.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import pushforward as pf
from pushforward.nn.made import MaskedLinear, _block_plan


def main(argv: list[str] | None = None) -> dict[int | str, float]:
    """Run the comparison; returns the median examples/s per number of blocks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("maf", "nsf-ar"), default="maf")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", default="512,512")
    parser.add_argument("--blocks", default="1,2,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    blocks = [b if b == "auto" else int(b) for b in args.blocks.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.arch == "maf":
        flow = pf.MAF(args.features, transforms=5, hidden_features=hidden)
    else:
        flow = pf.NSF(args.features, transforms=5, hidden_features=hidden, bins=8, autoregressive=True)
    layers = [m for m in flow.modules() if isinstance(m, MaskedLinear)]
    masks = [m.mask.bool() for m in layers]
    defaults = [m.blocks for m in layers]
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4, fused=True)
    x = torch.randn(max(args.steps, 5), args.batch_size, args.features)

    def plan(b: int | str) -> None:
        for layer, mask, default in zip(layers, masks, defaults):
            layer.blocks = default if b == "auto" else _block_plan(mask, b) if b > 1 else None

    def throughput(steps: int) -> float:
        start = time.perf_counter()
        for i in range(steps):
            loss = -flow.log_prob(x[i]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return steps * args.batch_size / (time.perf_counter() - start)

    rates: dict[int | str, list[float]] = {b: [] for b in blocks}
    for b in blocks:  # warm-up
        plan(b)
        throughput(5)
    for _ in range(args.repeats):
        for b in blocks:
            plan(b)
            rates[b].append(throughput(args.steps))
    medians = {b: statistics.median(r) for b, r in rates.items()}
    for b in blocks:
        print(f"{args.arch} D={args.features} hidden={hidden} threads={args.threads} blocks={b}: "
              f"{medians[b]:.0f} examples/s ({medians[b] / medians[blocks[0]]:.2f}x of blocks={blocks[0]})")
    return medians


if __name__ == "__main__":
    main()
