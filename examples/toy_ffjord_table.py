"""Print the table of ``examples/toy_ffjord.sh``: per toy and run folder ``TOY-LABEL``, the test
log-likelihood (nats), epochs and the mean function evaluations per training step (forward +
backward, from each epoch of metrics.json).

    python examples/toy_ffjord_table.py runs/toys-ffjord
"""

import json
import sys
from pathlib import Path


def row(folder: Path) -> str:
    m = json.loads((folder / "metrics.json").read_text())
    epochs = m["history"]
    nfe = [(e["nfe_forward"], e["nfe_backward"]) for e in epochs if e.get("nfe_forward") is not None]
    cost = (f"{sum(f for f, _ in nfe) / len(nfe):.1f} + {sum(b for _, b in nfe) / len(nfe):.1f}" if nfe else "")
    toy, label = folder.name.split("-", 1)
    return (f"| {toy} | {label} | {m['log_likelihood_nats']:.3f} ± {m['stderr_nats']:.3f} | "
            f"{len(epochs)} ({m['best_epoch']}) | {cost} | {m['stopped']} |")


def main(out: str) -> None:
    print("| toy | flow | test log-likelihood (nats) | epochs (best) | NFE per step (fwd + bwd) | stopped |")
    print("|---|---|---|---|---|---|")
    for folder in sorted(p for p in Path(out).iterdir() if (p / "metrics.json").is_file()):
        print(row(folder))


if __name__ == "__main__":
    main(sys.argv[1])
