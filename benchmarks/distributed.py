r"""Training throughput of data-parallel `pushforward.fit` on N processes against one process.

    python -m benchmarks.distributed                                   # digits MAF, 1x1, 1x2, 2x1
    python -m benchmarks.distributed --configs 1x1,2x1 --epochs 2 --hidden-features 64   # a quick look
    python -m benchmarks.distributed --data mnist --data-dir ../shared/data/mnist --batch-size 100

Each configuration PxT (P processes of T threads) trains the same flow, from the same seed, on the
same standardised training split with the same global mini-batch, through
:func:`pushforward.distributed.launch` (also for P = 1, so that every configuration pays the same
start-up) and :func:`pushforward.fit` without validation data. Throughput is examples/s over the
epochs after the first (the first carries DDP's bucket set-up and the allocator's warm-up),
from fit's own per-epoch clock: forward, backward, gradient all-reduce and Adam step. With
``--repeats R`` the configurations are interleaved R times and the median is printed, with the
ratio to the first configuration. The final training loss of each configuration is printed too:
equal up to rounding (tests/test_distributed.py checks that in float64).

On a machine with C cores, P x T > C oversubscribes the cores; compare configurations with equal
P x T (e.g. 1x2 against 2x1 on 2 cores) to see what data parallelism adds over threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

import torch

from pushforward import data as datasets
from pushforward import distributed
from pushforward.flows import PRESETS, preset_options
from pushforward.train import fit


def _measure(spec: dict) -> dict:
    """Train in this process (of a group of P); process 0's result goes back to the launcher."""
    dataset = datasets.load(spec["data"], spec["data_dir"], seed=0)
    train = dataset.train.float()
    train = (train - train.mean(0)) / train.std(0).clamp(min=1e-6)
    torch.manual_seed(0)
    kwargs = {"transforms": spec["transforms"]}
    if "hidden_features" in preset_options(spec["flow"]):
        kwargs["hidden_features"] = spec["hidden_features"]
    flow = PRESETS[spec["flow"]](dataset.features, **kwargs)
    result = fit(flow, train, None, epochs=spec["epochs"], batch_size=spec["batch_size"], patience=None,
                 device=spec["device"], progress=False)
    seconds = result.history[-1]["seconds"] - result.history[0]["seconds"]
    return {"examples_per_s": (len(result.history) - 1) * len(train) / seconds,
            "final_train_loss": result.history[-1]["train_loss"], "train_examples": len(train)}


def _config(text: str) -> tuple[int, int]:
    try:
        processes, threads = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PxT like 2x1, got {text!r}") from None
    if processes < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"processes and threads must be at least 1, got {text!r}")
    return processes, threads


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="data set name (as pushforward fit --data)")
    parser.add_argument("--data-dir", default=None, help="folder of a data set read from disk (mnist)")
    parser.add_argument("--flow", default="maf", choices=sorted(PRESETS), help="flow preset")
    parser.add_argument("--transforms", type=int, default=5, help="flow layers")
    parser.add_argument("--hidden-features", default="512,512", help="hidden sizes, e.g. 512,512")
    parser.add_argument("--batch-size", type=int, default=128, help="global mini-batch")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per measurement (at least 2; the first is not timed)")
    parser.add_argument("--configs", default="1x1,1x2,2x1",
                        help="comma-separated PxT: P processes of T threads each; ratios are to the first")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repetitions; the median is printed")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per configuration")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    configs = [_config(c) for c in args.configs.split(",")]
    for p, _ in configs:
        if args.batch_size % p:
            parser.error(f"--batch-size {args.batch_size} is not a multiple of {p} processes")
    spec = {"data": args.data, "data_dir": args.data_dir, "flow": args.flow, "transforms": args.transforms,
            "hidden_features": tuple(int(h) for h in args.hidden_features.split(",")),
            "batch_size": args.batch_size, "epochs": args.epochs, "device": args.device}
    print(f"# torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the start; {spec}", flush=True)
    runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for p, t in configs:
            runs[(p, t)].append(distributed.launch(_measure, p, (spec,), device=args.device, threads=t))
    base = statistics.median(r["examples_per_s"] for r in runs[configs[0]])
    rows = []
    for (p, t), results in runs.items():
        rate = statistics.median(r["examples_per_s"] for r in results)
        row = {"processes": p, "threads": t, "examples_per_s": rate, "ratio": rate / base,
               "final_train_loss": results[-1]["final_train_loss"], "repeats": len(results)}
        rows.append(row)
        print(json.dumps(row) if args.json else
              f"{p} process(es) x {t} thread(s): {rate:8.0f} examples/s  ({rate / base:.2f}x)  "
              f"final train loss {row['final_train_loss']:.4f}")
    return rows


if __name__ == "__main__":
    main()
