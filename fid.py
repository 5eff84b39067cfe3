"""FID between generated faces and the training images, computed by pytorch-fid as the field does.

    make fid CKPT=DCGAN_celeba_g.pth DATA=datasets/extracted          # 10,000 samples
    python fid.py --fake results/fid/fake --data datasets/extracted --out results/fid/real

`make fid` writes the generated images with `dcgan.py sample --separate`, then this script
exports as many training images, preprocessed exactly as training sees them (Resize + CenterCrop
to the generator's size, saved as PNG), and runs `python -m pytorch_fid` on the two folders.
pytorch-fid downloads its Inception weights on first use, so the first run needs the internet.
"""
import argparse
import os
import random
import subprocess
import sys

from PIL import Image
from torchvision.utils import save_image

import dcgan


def export_real(data, out, count, size, seed=0):
    """count training images (a seeded random choice) as size x size PNGs, preprocessed like training."""
    paths = dcgan.find_images(data)
    random.Random(seed).shuffle(paths)
    os.makedirs(out, exist_ok=True)
    written = 0
    for path in paths:
        try:
            image = dcgan.load_image(path, size)
        except dcgan.IMAGE_ERRORS:
            continue
        save_image(image.float() / 255, os.path.join(out, f"{written:06d}.png"))
        written += 1
        if written == count:
            break
    return written


def run_pytorch_fid(fake, real, device):
    """FID from pytorch-fid, or a UserError that says in one line what went wrong."""
    cmd = [sys.executable, "-m", "pytorch_fid", fake, real] + (["--device", device] if device else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode == 0:
        return float(result.stdout.strip().split()[-1])
    err = result.stderr
    if "No module named pytorch_fid" in err:
        raise dcgan.UserError("pytorch-fid is not installed: `make fid` installs it, or `pip install pytorch-fid`")
    if any(s in err for s in ("URLError", "urlopen", "Name or service not known", "Temporary failure in name "
                              "resolution", "HTTP Error", "Network is unreachable", "Connection refused")):
        raise dcgan.UserError("pytorch-fid could not download its Inception weights (from github.com): FID needs "
                              "the internet once, then the weights stay in ~/.cache/torch/hub/checkpoints")
    last = [line for line in err.strip().splitlines() if line.strip()][-1:] or ["no message"]
    raise dcgan.UserError(f"pytorch-fid failed: {last[0]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fake", required=True, help="folder of generated PNGs (dcgan.py sample --separate)")
    p.add_argument("--data", default="datasets/extracted", help="the training images")
    p.add_argument("--out", default="results/fid/real", help="where the preprocessed real images go")
    p.add_argument("--device", default=None, help="passed to pytorch-fid (cuda, cpu)")
    p.add_argument("--export-only", action="store_true", help="export the real images, skip pytorch-fid")
    args = p.parse_args(argv)
    try:
        fakes = sorted(f for f in os.listdir(args.fake) if f.endswith(".png")) if os.path.isdir(args.fake) else []
        if not fakes:
            raise dcgan.UserError(f"no generated PNGs in {args.fake}: run `dcgan.py sample --separate {args.fake}` first")
        with Image.open(os.path.join(args.fake, fakes[0])) as first:
            size = first.width
        written = export_real(args.data, args.out, len(fakes), size)
        print(f"{len(fakes)} generated and {written} real {size}x{size} images in {args.fake}/ and {args.out}/")
        if written < len(fakes):
            print(f"warning: only {written} usable training images; FID from fewer than 10,000 is biased upwards",
                  file=sys.stderr)
        if not args.export_only:
            print(f"FID: {run_pytorch_fid(args.fake, args.out, args.device):.2f}")
    except dcgan.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
