"""Print a markdown table of the test metrics of run folders: python examples/results_table.py RUN..."""

import json
import sys
from pathlib import Path


def main(folders: list[str]) -> None:
    rows = []
    for folder in folders:
        if not (Path(folder) / "metrics.json").is_file():
            continue
        m = json.loads((Path(folder) / "metrics.json").read_text())
        c = json.loads((Path(folder) / "config.json").read_text())
        rows.append((c["flow"], m))
    if not rows:
        return
    g = rows[0][1]["gaussian_baseline"]
    bpd = g.get("bits_per_dim")
    print("| flow | test log-likelihood (nats) | bits/dim | epochs (best) | seconds | stopped |")
    print("|---|---|---|---|---|---|")
    bpd_text = f"{bpd:.3f}" if bpd is not None else ""
    print(f"| full-covariance Gaussian | {g['log_likelihood_nats']:.2f} ± {g['stderr_nats']:.2f} | {bpd_text} | | | |")
    for flow, m in sorted(rows, key=lambda r: -r[1]["log_likelihood_nats"]):
        b = f"{m['bits_per_dim']:.3f}" if m.get("bits_per_dim") is not None else ""
        print(f"| {flow} | {m['log_likelihood_nats']:.2f} ± {m['stderr_nats']:.2f} | {b} | "
              f"{len(m['history'])} ({m['best_epoch']}) | {m['seconds']:.0f} | {m['stopped']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
