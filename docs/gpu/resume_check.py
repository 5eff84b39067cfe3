"""Exact resume on real data: a 3-epoch run against one stopped by SIGINT mid-way through epoch 2 and
resumed with the command it printed. Prints how far apart the two final states are.

    python docs/gpu/resume_check.py WORKDIR DATA [extra train flags, e.g. --deterministic]
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

work, data, extra = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]


def train_command(out):
    return [sys.executable, "-u", "dcgan.py", "train", "--data", data, "--out", str(out), "--epochs", "3",
            "--log-every", "13", "--save-g", str(out / "g.pth"), "--save-d", str(out / "d.pth"), *extra]


straight, split = work / "straight", work / "split"
subprocess.run(train_command(straight), check=True, capture_output=True)
proc = subprocess.Popen(train_command(split), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        start_new_session=True)
for line in proc.stdout:
    if line.startswith("[2/3][39/"):  # mid-way through epoch 2 (78 iterations an epoch at batch 128)
        os.killpg(proc.pid, signal.SIGINT)
        break
out, err = proc.communicate(timeout=120)
stopped = [line for line in out.splitlines() if line.startswith("stopped by")]
print(f"interrupted run: exit {proc.returncode}; {stopped[0] if stopped else 'no stop line: ' + err[-500:]}")
printed = stopped[0].split("Resume with: ")[1].split()
# The printed command names only --data/--out/--epochs/--save-*: flags that are not stored with the run
# (the cache folder, --deterministic) must be given again (issue 10 makes the printed command complete).
resumed = subprocess.run([sys.executable, *printed[1:], *extra], capture_output=True, text=True)
print(f"resumed with the printed command (+ {' '.join(extra)}): exit {resumed.returncode}"
      + ("" if resumed.returncode == 0 else ": " + resumed.stderr[-500:]))

a, b = (torch.load(d / "checkpoint.pth", weights_only=True) for d in (straight, split))
for key in ("generator", "discriminator"):
    diff = max((a[key][k].float() - b[key][k].float()).abs().max().item() for k in a[key])
    same = all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    print(f"{key}: bit-identical {same}, largest difference {diff:.3g}")
csv_same = (straight / "losses.csv").read_text() == (split / "losses.csv").read_text()
rows = len((split / "losses.csv").read_text().splitlines()) - 1
print(f"losses.csv identical: {csv_same} ({rows} rows); history rows {len(a['history'])} vs {len(b['history'])}")
