"""Are two training runs the same? Compares the checkpoint.pth (G and D weights, history) and losses.csv
of two --out folders and prints how far apart they are.

    python docs/gpu/same_run.py OUT_A OUT_B
"""
import sys
from pathlib import Path

import torch


def compare(a_dir, b_dir):
    a, b = (torch.load(Path(d) / "checkpoint.pth", weights_only=True) for d in (a_dir, b_dir))
    for key in ("generator", "discriminator"):
        diff = max((a[key][k].float() - b[key][k].float()).abs().max().item() for k in a[key])
        same = all(torch.equal(a[key][k], b[key][k]) for k in a[key])
        print(f"{key}: bit-identical {same}, largest difference {diff:.3g}")
    csv_a, csv_b = ((Path(d) / "losses.csv").read_text() for d in (a_dir, b_dir))
    print(f"losses.csv identical: {csv_a == csv_b} ({len(csv_b.splitlines()) - 1} rows); "
          f"history rows {len(a['history'])} vs {len(b['history'])}")


if __name__ == "__main__":
    compare(*sys.argv[1:3])
