"""Exact resume on real data: a 3-epoch run against one stopped by SIGINT mid-way through epoch 2 and
resumed with the command it printed. Prints how far apart the two final states are.

    python docs/gpu/resume_check.py WORKDIR DATA [extra train flags, e.g. --deterministic]
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

from same_run import compare

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
# The printed command is complete: --resume restores every other flag, --deterministic and --cache-dir too.
resumed = subprocess.run([sys.executable, *printed[1:]], capture_output=True, text=True)
print(f"resumed with the printed command: exit {resumed.returncode}"
      + ("" if resumed.returncode == 0 else ": " + resumed.stderr[-500:]))
compare(straight, split)
