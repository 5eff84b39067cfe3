"""DCGAN on CelebA faces in one file (Radford, Metz & Chintala, 2015, arXiv:1511.06434).

    make demo                                        # venv + synthetic faces + short CPU run
    make download && make train EPOCHS=50            # real CelebA from datasets/extracted/
    python dcgan.py train --data datasets/extracted --epochs 50 --resume results/checkpoint.pth
    python dcgan.py sample --ckpt DCGAN_celeba_g.pth --n 64 --out results/samples.png
    torchrun --standalone --nproc_per_node=4 dcgan.py train --epochs 50        # 4 GPUs, one node

Part 1 is the DCGAN in the PyTorch tutorial's order: the paper's hyperparameters, the two networks,
their init, the optimizers, one training step, the epoch loop, sampling. Part 2 is what a real run
needs around it (data cache, checkpoints, torchrun, precision, logs, plots, the command line).
"""
import argparse
import contextlib
import copy
import csv
import hashlib
import inspect
import json
import multiprocessing
import os
import pickle
import random
import re
import signal
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.utils import make_grid, save_image

sys.modules.setdefault("dcgan", sys.modules[__name__])  # fid.py's `import dcgan` gets this module, run as a script
os.environ.setdefault("MPLBACKEND", "Agg")  # plots are written to files, never shown


# ============================================================================= Part 1: the DCGAN
# The paper's hyperparameters (section 4), the defaults of `train`'s flags:
BATCH_SIZE = 128  # mini-batch SGD with batches of 128 for every model in the paper
LR = 2e-4         # Adam's suggested 1e-3 "was too high", so 2e-4
BETA1 = 0.5       # Adam's momentum term: at the usual 0.9 training oscillated and was unstable
NZ = 100          # the length of z, the generator's random input
NGF = NDF = 64    # the width of G's last and D's first layer (the tutorial's 64x64 networks)
INIT_STD = 0.02   # every weight drawn from N(0, 0.02)
IMAGE_SIZE = 64   # the paper's faces are 64x64

def to_model_input(images, device):
    """uint8 [0, 255] -> float [-1, 1] (G's Tanh range), converted on the device: 4x fewer bytes to copy."""
    images = images.to(device, non_blocking=True).float().div_(127.5).sub_(1)
    return images.contiguous(memory_format=memory_format(device))


# DCGAN guidelines (paper, section 3): strided convolutions instead of pooling, BatchNorm in
# both nets (not on G's output or D's input), no fully connected hidden layers, ReLU in G with
# Tanh on its output, LeakyReLU(0.2) in D. At 64x64 the layers are exactly those of the PyTorch
# DCGAN tutorial and pytorch/examples, in `self.main`, so state_dicts load both ways.

class Generator(nn.Module):
    """z (nz) -> image (nc x S x S): a 4x4 projection, then one doubling block per octave."""

    def __init__(self, nz=NZ, ngf=NGF, nc=3, image_size=IMAGE_SIZE):
        super().__init__()
        mult = image_size // 8  # 64x64: ngf*8 feature maps at 4x4, halved at each doubling
        layers = [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
                  nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]
        # state size. (ngf*mult) x 4 x 4
        while mult > 1:
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
            # state size. (ngf*mult) x 2H x 2W   (64x64: 8x8, 16x16, 32x32)
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        # state size. nc x S x S, values in [-1, 1] like the normalised real images
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z.view(z.size(0), -1, 1, 1))

class Discriminator(nn.Module):
    """image (nc x S x S) -> one logit per image: one halving block per octave down to 4x4."""

    def __init__(self, ndf=NDF, nc=3, image_size=IMAGE_SIZE):
        super().__init__()
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        # state size. ndf x S/2 x S/2   (no BatchNorm on D's input layer, per the paper)
        mult, size = 1, image_size // 2
        while size > 4:
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult * 2), nn.LeakyReLU(0.2, inplace=True)]
            mult, size = mult * 2, size // 2
            # state size. (ndf*mult) x size x size   (64x64: 16x16, 8x8, 4x4)
        # The tutorial ends with nn.Sigmoid(); we return logits and use BCEWithLogitsLoss, the same
        # maths fused in a numerically stable form that is also safe under autocast. Sigmoid has no
        # parameters, so the state_dict keys still match the tutorial's.
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x).view(-1)

def init_weights(m):
    """DCGAN init: every conv weight from N(0, 0.02); BatchNorm scale from N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, INIT_STD)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, INIT_STD)
        nn.init.zeros_(m.bias)

def build_models(args, device):
    """G and D (the tutorial's netG and netD) with the DCGAN init, on the device, and their optimizers."""
    G = Generator(args.nz, args.ngf, 3, args.image_size)
    D = Discriminator(args.ndf, 3, args.image_size)
    G.apply(init_weights)
    D.apply(init_weights)
    load_initial_weights(args, G, D)  # --init-g / --init-d: start from saved weights instead
    G, D = (m.to(device, memory_format=memory_format(device)) for m in (G, D))
    # Adam with beta1 = 0.5 (above); fused: the whole update in one kernel launch on CUDA (capturable: in a graph).
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=args.lr, betas=(args.beta1, 0.999),
                                     fused=device.type == "cuda", capturable=device.type == "cuda") for m in (G, D))
    return G, D, opt_g, opt_d

def new_fixed_noise(nz, seed):
    """The tutorial's fixed_noise: 64 latent vectors drawn once and kept (in the checkpoint too), so the
    grid after every epoch shows the same 64 "faces" and you can watch each one improve."""
    return torch.randn(64, nz, generator=torch.Generator().manual_seed(seed))

def train_step(G, D, opt_g, opt_d, scaler, real, nz, amp_dtype):
    """One DCGAN iteration on a batch of real images in [-1, 1]. Returns [Loss_D, Loss_G, D(x), D(G(z))
    before D's update, D(G(z)) after] (the tutorial's errD, errG, D_x, D_G_z1, D_G_z2) as one tensor on
    the device, so nothing waits for the GPU until the numbers are read at log time."""
    device = real.device
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    b = real.size(0)
    real_label, fake_label = torch.ones(b, device=device), torch.zeros(b, device=device)
    z = torch.randn(b, nz, device=device)

    # (1) Update D: maximize log(D(x)) + log(1 - D(G(z))). Real and fake go through D as separate
    # batches, as in the paper, so BatchNorm never mixes their statistics.
    with autocast:
        fake = G(z)
        logits_real = D(real)
        logits_fake = D(fake.detach())  # detach: this step must not update G
        loss_d = (F.binary_cross_entropy_with_logits(logits_real, real_label)
                  + F.binary_cross_entropy_with_logits(logits_fake, fake_label))
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)

    # (2) Update G: maximize log(D(G(z))), the non-saturating loss: fakes labelled real. It gives
    # G strong gradients early on, when D easily rejects its samples and log(1 - D(G(z))) is flat.
    # D's weight gradients would only be thrown away: skip computing them, and under torchrun call D's
    # own module (not the DDP wrapper), so nothing is all-reduced for them either.
    D.requires_grad_(False)
    with autocast:
        logits_gen = getattr(D, "module", D)(fake)
        loss_g = F.binary_cross_entropy_with_logits(logits_gen, real_label)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    D.requires_grad_(True)

    probs = [torch.sigmoid(x.detach().float()).mean() for x in (logits_real, logits_fake, logits_gen)]
    return torch.stack([loss_d.detach().float(), loss_g.detach().float(), *probs])

def train_epoch(run, epoch, stop):
    """One pass over the data, as the tutorial's inner loop: fetch a batch, train on it, log now and
    then. Returns how many images this process trained on. `run` holds what prepare_run set up."""
    args = run.args
    first = run.start_step if epoch == run.start_epoch else 0  # a resumed run skips the steps it did
    batches = epoch_batches(run.n, args.batch_size, args.seed, epoch, run.rank, run.world)[first:]
    pending, tick, seen, trained = [], time.perf_counter(), 0, 0
    for i, images in enumerate(batches_from(run, batches), first):
        # Train on the batch: uint8 images become floats in [-1, 1] on the device first. run.train_step is
        # train_step above (on one CUDA GPU recorded once and replayed as a CUDA graph: graphed_train_step).
        if len(images) >= 2:  # BatchNorm needs two images (undecodable files can leave fewer)
            stats = run.train_step(run.G_train, run.D_train, run.opt_g, run.opt_d, run.scaler,
                                   to_model_input(images, run.device), args.nz, run.amp_dtype)
            update_ema(run)  # --ema: G_ema follows G
            pending.append((epoch, i, stats))
            seen, trained = seen + len(images), trained + len(images)
        # Log Loss_D, Loss_G, D(x), D(G(z)): the only time the host waits for the GPU.
        stopping = stop_agreed(stop, run.device, run.stop_flags)
        if pending and ((i + 1) % args.log_every == 0 or i + 1 == run.iters or stopping):
            log_progress(run, pending, seen, tick, epoch, i)
            pending, tick, seen = [], time.perf_counter(), 0
        # Check for a stop request (Ctrl-C, SIGTERM): save this very step and exit.
        if stopping:
            stop_run(run, epoch, i + 1, stop[0] if stop else signal.SIGTERM)  # (or another rank's signal)
    return trained

def end_epoch(run, epoch, trained):
    """After each epoch: the fixed_noise faces into epoch_NNN.png, then G, D and the checkpoint."""
    args = run.args
    if run.master:
        if run.G_ema is not None:
            ema_batchnorm_statistics(run)  # G_ema's grid, weights file and FID need its own
        run.fakes = generate(run.G if run.G_ema is None else run.G_ema, run.fixed_noise, run.device)
        save_image(run.fakes, os.path.join(args.out, f"epoch_{epoch + 1:03d}.png"))
        atomic_save(run.G.state_dict(), args.save_g)
        atomic_save(run.D.state_dict(), args.save_d)
        if run.G_ema is not None:  # DCGAN_celeba_g_ema.pth beside DCGAN_celeba_g.pth
            atomic_save(run.G_ema.state_dict(), "{}_ema{}".format(*os.path.splitext(args.save_g)))
        save_checkpoint(run, epoch + 1, 0)
        if args.fid_every and (epoch + 1) % args.fid_every == 0:  # the other ranks wait in the next step
            __import__("fid").track_training_fid(run, epoch)
        if run.bad_files and epoch == run.start_epoch:  # --no-cache: every file has been tried once now
            warn_skipped([os.path.basename(run.paths[j]) for j in sorted(run.bad_files)])
    run.say(f"epoch {epoch + 1} done: {trained * run.world:,} images | {args.out}/epoch_{epoch + 1:03d}.png, "
            f"{args.save_g}, {run.checkpoint}")

def train(args):
    """`dcgan.py train`: G and D trained on --data for --epochs, with grids, weights and plots in --out."""
    run = prepare_run(args)  # flags, device, data, models, optimizers, and a resumed run's state
    with stop_requests(second_ctrl_c_stops_at_once=run.world == 1) as stop:
        for epoch in range(run.start_epoch, args.epochs):
            trained = train_epoch(run, epoch, stop)
            end_epoch(run, epoch, trained)
    finish_run(run)  # the loss plot, progress.gif and real beside fake

@torch.no_grad()
def generate(G, z, device, chunk=256):
    """Images in [0, 1] for latent vectors z. Eval mode: BatchNorm uses its running statistics, so
    each image depends only on its own z, never on the other images in the batch."""
    was_training = G.training
    G.eval()
    images = torch.cat([G(part.to(device)).float().cpu() for part in z.split(chunk)])
    G.train(was_training)
    return (images + 1) / 2

def latent_vectors(n, nz, seed):
    """n latents drawn one at a time from one seeded generator: vector k is the same whatever n is."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(nz, generator=g) for _ in range(n)])

def slerp(a, b, t):
    """Spherical interpolation: Gaussian latents live near a sphere, and straight lines between
    them pass through the low-norm middle that G never saw in training."""
    omega = torch.acos((a / a.norm() * b / b.norm()).sum().clamp(-1, 1))
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)

def sample(args):
    """--n faces (or interpolation rows) into a grid and, with --separate, one PNG each. They are drawn
    256 at a time and written as they come, so --n 100000 never holds 100,000 images in memory."""
    device = choose_device(args.device)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    G = load_generator(args.ckpt, device)
    nz = G.main[0].in_channels
    if args.interpolate:  # n // STEPS rows, each a spherical path of STEPS latents between two random ends
        nrow, ends = args.interpolate, latent_vectors(2 * max(1, args.n // args.interpolate), nz, seed)
        ts = torch.linspace(0, 1, nrow) if nrow > 1 else torch.zeros(1)
        z = torch.stack([slerp(a, b, t) for a, b in zip(ends[::2], ends[1::2]) for t in ts])
    else:
        z, nrow = latent_vectors(args.n, nz, seed), args.nrow
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    os.makedirs(args.separate or ".", exist_ok=True)
    for start in range(0, len(z), 256):
        images = generate(G, z[start:start + 256], device)
        if not start:  # the grid shows the first 256 at most: a grid of thousands helps nobody
            save_image(images, args.out, nrow=nrow)
        for k, image in enumerate(images if args.separate else [], start):
            save_image(image, os.path.join(args.separate, f"{k:06d}.png"))
    print(f"wrote {len(z)} images to {args.out}" + (f" and {args.separate}/" if args.separate else "")
          + f" ({images.shape[-1]}x{images.shape[-1]}, seed {seed})")


# ============================================================================= Part 2: engineering
class UserError(Exception):
    """A mistake the user can fix: main() prints it as one line and exits with code 2."""

# ----------------------------------------------------------------------------- the run: set-up, stop, end
def prepare_run(args):
    """All a run needs before its first step, in one namespace (flags restored on --resume, --out locked)."""
    if args.resume and (args.init_g or args.init_d):
        raise UserError("--resume continues a run; --init-g/--init-d start a new one from weights: use one")
    resume, changes = load_checkpoint(args.resume) if args.resume else None, []
    if resume is not None:
        if not (isinstance(resume, dict) and {"generator", "epoch", "args"} <= set(resume)):
            raise UserError(f"{args.resume} is not a checkpoint.pth from `dcgan.py train` (only weights?); "
                            "use --init-g/--init-d to start from plain weights")
        changes = restore_run_flags(args, resume["args"])
    rank, world, device = setup_distributed(args)
    run = SimpleNamespace(args=args, rank=rank, world=world, device=device, master=rank == 0, stop_flags=[],
                          bad_files=set(), amp_dtype=choose_amp(args.amp, device), paths=find_images(args.data))
    run.say = (lambda text: print(text, flush=True)) if run.master else (lambda text: None)
    check_device_flags(args, world, device)
    run.out_lock = claim_out_folder(args.out) if run.master else None  # held as long as `run` lives
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    random.seed(args.seed)
    run.G, run.D, run.opt_g, run.opt_d = build_models(args, device)
    run.G_ema = copy.deepcopy(run.G).requires_grad_(False) if args.ema else None
    run.scaler = torch.amp.GradScaler(device.type, enabled=run.amp_dtype == torch.float16)
    run.fixed_noise, run.history = new_fixed_noise(args.nz, args.seed), torch.zeros(0, len(LOSS_COLUMNS))
    run.start_epoch = run.start_step = 0
    if resume is not None:
        restore_training(resume, run)
    if rank:  # each rank draws its own noise; rank 0 keeps the seeded (or restored) stream
        torch.manual_seed(args.seed + 7919 * rank + len(run.history))
    run.losses_csv, run.checkpoint = (os.path.join(args.out, name) for name in ("losses.csv", "checkpoint.pth"))
    run.data, run.n = open_dataset(args, run.paths, device, run.master)
    run.global_batch = args.batch_size * world
    if run.n < run.global_batch:
        raise UserError(f"--data {args.data} has {run.n} usable images, fewer than one batch "
                        f"({world} x --batch-size {args.batch_size}): lower --batch-size or add images")
    run.iters = run.n // run.global_batch
    if run.master:  # real_samples.png: 64 training images as the model sees them (also for real_vs_fake.png)
        first = epoch_batches(run.n, args.batch_size, args.seed, 0)[:-(-64 // args.batch_size)]
        run.real_grid = torch.cat([images.cpu() for images in batches_from(run, first)])[:64].float() / 255
        if not len(run.real_grid):
            raise UserError(f"none of the first {args.batch_size * len(first)} images in --data could be decoded")
        save_image(run.real_grid, os.path.join(args.out, "real_samples.png"))  # 8 a row
        write_losses(run.losses_csv, run.history.tolist(), "w")  # rows logged after the checkpoint go
    for model in (run.G, run.D) if args.compile else ():  # after loading weights; Module.compile: clean keys
        model.compile()
    run.G_train, run.D_train = wrap_for_ddp(args, run.G, run.D, device) if dist.is_initialized() else (run.G, run.D)
    run.train_step = graphed_train_step(args, device, run.amp_dtype)  # or train_step itself (CPU, fp16, DDP)
    n_params = [sum(p.numel() for p in m.parameters()) for m in (run.G, run.D)]
    run.say(f"{run.n} images in {args.data} | {args.image_size}x{args.image_size} | device {device} | "
            f"amp {str(run.amp_dtype).replace('torch.', '') if run.amp_dtype else 'off'} | "
            f"{'files' if args.no_cache else 'cached'} data | G {n_params[0]:,} params, D {n_params[1]:,} params "
            f"| epochs {run.start_epoch + 1}-{args.epochs} | world size {world}, batch {args.batch_size} "
            f"per process, global batch {run.global_batch}")
    if changes:
        run.say(f"resuming {args.resume} with changed flags: {', '.join(changes)}")
    return run

def batches_from(run, batches):
    """uint8 image batches on the device for lists of indices: from the cache, or decoded (--no-cache)."""
    if torch.is_tensor(run.data):
        return cached_batches(run.data, batches, run.device)
    return classic_batches(run.data, batches, run.args.workers, run.device, run.bad_files)

@torch.no_grad()
def update_ema(run):
    """--ema: G_ema moves 1 - decay of the way to G after each step (Yazıcı et al., 2019: lower FID on CelebA)."""
    if run.G_ema is not None:  # one kernel for all of G's tensors
        torch._foreach_lerp_(list(run.G_ema.parameters()), list(run.G.parameters()), 1 - run.args.ema)

@torch.no_grad()
def ema_batchnorm_statistics(run, batches=8):
    """G_ema's own BatchNorm statistics from fresh seeded latents: with G's running ones it draws washed-out grey."""
    g = torch.Generator(run.device).manual_seed(run.args.seed)
    for m in (m for m in run.G_ema.modules() if isinstance(m, nn.BatchNorm2d)):
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    run.G_ema.train()
    for _ in range(batches):
        run.G_ema(torch.randn(run.args.batch_size, run.args.nz, device=run.device, generator=g))
    run.G_ema.eval()

@contextlib.contextmanager
def stop_requests(second_ctrl_c_stops_at_once=True):
    """Inside it, Ctrl-C and SIGTERM (Colab, Slurm, `kill`) only ask the loop to stop after its step (it yields
    those received). A second Ctrl-C stops at once, but not under torchrun: it forwards Ctrl-C to all."""
    received = []

    def on_signal(signum, frame):
        if received and signum == signal.SIGINT and second_ctrl_c_stops_at_once:
            raise KeyboardInterrupt
        received.append(signum)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

def stop_run(run, epoch, step, signum):
    """Save the checkpoint at this step, print the complete resume command, exit with 128 + the signal."""
    if run.master:
        save_checkpoint(run, epoch, step)
    launch = f"torchrun --standalone --nproc_per_node={run.world}" if run.world > 1 else "python"
    run.say(f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, iteration {step}; saved "
            f"{run.checkpoint}. Resume with: {launch} dcgan.py train --resume {run.checkpoint}")
    sys.exit(128 + signum)

def finish_run(run):
    """After the last epoch: the loss plot, the epoch grids as an animation, real beside fake."""
    if run.master:
        plot_losses(run.history, os.path.join(run.args.out, "loss.png"))
        save_progress_gif(run.args.out, os.path.join(run.args.out, "progress.gif"))
        save_real_vs_fake(run.real_grid, run.fakes, os.path.join(run.args.out, "real_vs_fake.png"))
    run.say(f"done: samples with `python dcgan.py sample --ckpt {run.args.save_g}`; plots in {run.args.out}/")
    if dist.is_initialized():
        dist.destroy_process_group()

# ----------------------------------------------------------------------------- data
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)

def find_images(root):
    """Every image file below root, sorted; labels and folder structure are ignored."""
    hint = "run `make download` for CelebA or `make demo` for synthetic faces, or point --data at images"
    if not os.path.isdir(root):
        raise UserError(f"--data {root} does not exist: {hint}")
    paths = sorted(os.path.join(folder, f) for folder, _, files in os.walk(root, followlinks=True)  # links too
                   for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise UserError(f"--data {root} holds no images (jpg, jpeg, png, bmp, webp): {hint}")
    return paths

def load_image(path, size):
    """Decode one file as in the DCGAN tutorial: Resize(size) + CenterCrop(size), RGB, uint8 [3, size, size]."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # skip giant images, don't decode them
        img = Image.open(path)
    with img:
        img.draft("RGB", (size, size))  # JPEG: let libjpeg decode at a reduced scale (2-4x faster)
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: keep the top 8 bits
            img = img.convert("I").point(lambda v: v / 256).convert("L")
        img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
        img = TF.center_crop(TF.resize(img, size, antialias=True), size)
    return TF.pil_to_tensor(img)

class ImageFiles(torch.utils.data.Dataset):
    """The image files as uint8 tensors. A file that fails to decode is marked bad (ok=False), not fatal."""

    def __init__(self, paths, size):  # (no __len__: the DataLoader takes its batches from a batch_sampler)
        self.paths, self.size = paths, size

    def __getitem__(self, i):
        try:
            return load_image(self.paths[i], self.size), True, i
        except IMAGE_ERRORS:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False, i

def epoch_batches(n, batch_size, seed, epoch, rank=0, world=1):
    """This rank's part of each full global batch of a (seed, epoch)-seeded shuffle: ranks and resumes agree."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10007 + epoch))
    step = batch_size * world
    batches = order[: n // step * step].view(-1, world, batch_size)[:, rank]
    return batches.tolist()

def leave_signals_to_main(worker_id):
    """Ctrl-C and SIGTERM reach every process of the group: workers leave them to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

def memory_format(device):
    """channels_last (NHWC), the layout of cuDNN's and oneDNN's fastest convolutions (+30% fp32 on our CPU)."""
    return torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format

def cache_name(root, paths, size, cache_dir):
    """The cache's name, from a hash of the folder, each file's name, size and mtime, and the image size."""
    h = hashlib.sha1(os.fsencode(f"{os.path.abspath(root)}|{size}"))  # fsencode: names need not be UTF-8
    for p in paths:
        st = os.stat(p)
        h.update(os.fsencode(f"|{p}|{st.st_size}|{st.st_mtime_ns}"))
    return os.path.join(cache_dir, f"{Path(os.path.abspath(root)).name}-{size}px-{h.hexdigest()[:16]}")

def decode_for_cache(job):
    try:
        return load_image(*job).numpy().tobytes()
    except IMAGE_ERRORS:
        return None

def build_cache(paths, size, base):
    """Every image decoded once, on all cores, into base.u8 (uint8 [N, 3, S, S]) and base.json: written aside
    and renamed when complete, so an interrupted build leaves nothing to load. Undecodable files are left out."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    bad, count, start, every = [], 0, time.perf_counter(), max(1000, len(paths) // 20)
    try:
        # Workers ignore Ctrl-C (the main process handles it); a stop still ends them with SIGTERM.
        with open(base + ".u8.tmp", "wb") as f, \
                multiprocessing.Pool(os.cpu_count(), signal.signal, (signal.SIGINT, signal.SIG_IGN)) as pool:
            for k, data in enumerate(pool.imap(decode_for_cache, ((p, size) for p in paths), chunksize=64), 1):
                if data is None:
                    bad.append(os.path.basename(paths[k - 1]))
                else:
                    f.write(data)
                    count += 1
                if k % every == 0 or k == len(paths):
                    speed = k / max(time.perf_counter() - start, 1e-9)
                    print(f"decoding {k:,}/{len(paths):,} images once into the cache  {speed:,.0f} img/s  "
                          f"ETA {format_time((len(paths) - k) / speed)}", flush=True)
            pool.close()
            pool.join()
        if not count:
            raise UserError(f"none of the {len(paths)} image files under --data could be decoded")
        Path(base + ".json.tmp").write_text(json.dumps(dict(count=count, size=size, files=len(paths), bad=bad)))
        os.replace(base + ".u8.tmp", base + ".u8")
        os.replace(base + ".json.tmp", base + ".json")
    finally:
        for tmp in (base + ".u8.tmp", base + ".json.tmp"):
            if os.path.exists(tmp):
                os.remove(tmp)

def load_cache(base, size):
    """(uint8 [N, 3, S, S] memory-mapped from disk, read on demand; metadata) of a complete cache, or None."""
    try:
        meta = json.loads(Path(base + ".json").read_text())
        nbytes = meta["count"] * 3 * size * size
        if meta["size"] != size or os.path.getsize(base + ".u8") != nbytes or not nbytes:
            return None
    except (OSError, ValueError, KeyError):
        return None
    images = torch.from_file(base + ".u8", shared=False, size=nbytes, dtype=torch.uint8)
    return images.view(meta["count"], 3, size, size), meta

def place_cache(images, device):
    """On a GPU the cache moves to device memory if it fits (CelebA at 64x64 is 2.5 GB): a batch is one gather."""
    if device.type == "cuda" and images.numel() < 0.8 * torch.cuda.mem_get_info(device)[0] - 2**31:
        return images.to(device)
    return images

def cached_batches(images, batches, device):
    """Batches gathered from the decoded array; the indices go to the device once an epoch (not a stall a step)."""
    for index in torch.tensor(batches, dtype=torch.long, device=images.device):  # [steps, batch]
        if images.device.type == device.type:  # (compare types: "cuda" is not equal to "cuda:0")
            yield images[index]
        else:  # host array, GPU model: gather into pinned memory so the copy runs asynchronously
            yield images[index].pin_memory().to(device, non_blocking=True)

def classic_batches(dataset, batches, workers, device, bad_files):
    """The classic path: DataLoader workers decode every file every epoch; undecodable ones are dropped
    and noted. Its own torch.Generator: a new loader would draw a seed from the global RNG, shifting the noise."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                         pin_memory=device.type == "cuda", generator=torch.Generator(),
                                         worker_init_fn=leave_signals_to_main)
    for images, ok, index in loader:
        if not ok.all():
            bad_files.update(index[~ok].tolist())
            images = images[ok]
        yield images

def open_dataset(args, paths, device, master):
    """The training images: the decoded cache (built on first use by rank 0) or, with --no-cache, the files."""
    if args.no_cache:
        return ImageFiles(paths, args.image_size), len(paths)
    base = cache_name(args.data, paths, args.image_size, args.cache_dir)
    if master and load_cache(base, args.image_size) is None:
        build_cache(paths, args.image_size, base)
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait for rank 0's cache
    images, meta = load_cache(base, args.image_size)
    if meta["bad"] and master:
        warn_skipped(meta["bad"])
    return place_cache(images, device), len(images)

def warn_skipped(names):
    print(f"warning: skipped {len(names)} unreadable image file(s): {', '.join(names[:5])}"
          f"{', ...' if len(names) > 5 else ''}", file=sys.stderr)

# ----------------------------------------------------------------------------- checkpoints
def atomic_save(obj, path):
    """torch.save to a temporary file, then rename: a crash, kill -9 or full disk never breaks the last file."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise UserError(f"could not write {path}: {e.strerror or e}; the previous {os.path.basename(path)} "
                            "is intact. Free some disk space (or choose another --out) and --resume") from None
        raise

def save_checkpoint(run, epoch, step):
    """All a resumed run needs to go on exactly: `epoch` epochs done, plus `step` batches of the next."""
    atomic_save({"generator": run.G.state_dict(), "discriminator": run.D.state_dict(),
                 "optimizer_g": run.opt_g.state_dict(), "optimizer_d": run.opt_d.state_dict(),
                 "generator_ema": None if run.G_ema is None else run.G_ema.state_dict(),
                 "epoch": epoch, "step": step, "fixed_noise": run.fixed_noise, "history": run.history,
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                 "args": {k: v for k, v in vars(run.args).items() if k in TRAIN_DEFAULTS}}, run.checkpoint)

def load_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True: tensors and plain containers only, so a file can never run code."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory: give a .pth file, e.g. {os.path.join(path, 'checkpoint.pth')}")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UserError(f"refusing {path}: it holds Python objects, not just tensors, and unpickling "
                            "them could run code; load only state_dicts (torch.save(model.state_dict()))") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError):
        pass
    raise UserError(f"{path} is not a readable PyTorch checkpoint: truncated, corrupt or another kind of file")

def model_state(checkpoint, key, path):
    """One model's state_dict from our checkpoint.pth or a plain one, minus 'module.' and '_orig_mod.' prefixes."""
    state = checkpoint.get(key, checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} is not a DCGAN state_dict or checkpoint")
    clean = {re.sub(r"^((module|_orig_mod)\.)+", "", name): tensor for name, tensor in state.items()}
    if "main.0.weight" not in clean:
        raise UserError(f"{path} is not a DCGAN model: no main.0.weight (keys start {list(clean)[:3]})")
    return clean

def generator_config(state, path):
    """nz, ngf, nc and image size read from the conv weights' shapes, so `sample` needs no flags."""
    if "main.1.weight" not in state:  # G has BatchNorm at main.1; D has a parameter-free LeakyReLU
        raise UserError(f"{path} looks like a discriminator; sample needs the generator (the *_g.pth file)")
    layers = sorted((k for k in state if k.startswith("main.")), key=lambda k: int(k.split(".")[1]))
    convs = [state[k] for k in layers if k.endswith(".weight") and state[k].dim() == 4]
    return dict(nz=convs[0].shape[0], ngf=convs[-1].shape[0], nc=convs[-1].shape[1],
                image_size=4 * 2 ** (len(convs) - 1))

def load_weights(model, state, path, what):  # load_state_dict, a mismatch said in one line
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), "")
        raise UserError(f"{path} does not fit this {what}: {detail[:300]} "
                        "(check --image-size, --nz, --ngf/--ndf against how it was trained)") from None

def load_generator(path, device):
    """A Generator in eval mode from any generator file we accept; its shape is read from the weights."""
    state = model_state(load_checkpoint(path), "generator", path)
    G = Generator(**generator_config(state, path))
    load_weights(G, state, path, "generator")
    return G.to(device).eval()

def load_initial_weights(args, G, D):
    """--init-g / --init-d: weights from any G or D file we accept (transfer learning; fresh optimizers)."""
    for model, path, key in ((G, args.init_g, "generator"), (D, args.init_d, "discriminator")):
        if path:
            load_weights(model, model_state(load_checkpoint(path), key, path), path, key)

def restore_run_flags(args, saved):
    """--resume continues the run as it was: flags not typed come from the checkpoint; typed RUN_FLAGS must agree."""
    conflicts, changes = [], []
    for name in TRAIN_DEFAULTS.keys() & saved.keys():
        mine, theirs = getattr(args, name), saved[name]
        if name not in getattr(args, "given", TRAIN_DEFAULTS):
            setattr(args, name, theirs)
        elif mine != theirs:
            flag = f"--{name.replace('_', '-')} {mine} (checkpoint: {theirs})"
            (conflicts if name in RUN_FLAGS else changes).append(flag)
    if conflicts:
        raise UserError("--resume checkpoint was trained with other settings: " + ", ".join(sorted(conflicts))
                        + "; drop these flags or start a new run")
    return sorted(changes)

def restore_training(resume, run):
    """A checkpoint.pth into the models, optimizers, RNGs and the run's fixed noise, history, epoch and step."""
    args = run.args
    ema_key = "generator_ema" if resume.get("generator_ema") is not None else "generator"  # no G_ema yet: G
    for model, key in ((run.G, "generator"), (run.D, "discriminator"), (run.G_ema, ema_key)):
        if model is not None:
            load_weights(model, model_state(resume, key, args.resume), args.resume, key.split("_")[0])
    for opt, key in ((run.opt_g, "optimizer_g"), (run.opt_d, "optimizer_d")):
        kernels = {k: opt.param_groups[0][k] for k in ("fused", "capturable")}  # this device's, not the saver's
        for group in resume[key]["param_groups"]:  # and a new --lr / --beta1 wins over the saved one
            group.update(kernels, lr=args.lr, betas=(args.beta1, 0.999))
        opt.load_state_dict(resume[key])
    rng = resume["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if resume["epoch"] >= args.epochs:
        raise UserError(f"{args.resume} has done {resume['epoch']} epochs already: pass a larger --epochs")
    run.fixed_noise, run.history, run.start_epoch, run.start_step = (resume["fixed_noise"], resume["history"],
                                                                      resume["epoch"], resume.get("step", 0))

def claim_out_folder(folder):
    """--out made, writable and locked against a second run (flock on .lock: it ends with this process)."""
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, ".lock"), "a+")
    except OSError as e:
        raise UserError(f"cannot write to --out {folder}: {e.strerror}; choose another --out") from None
    if os.name != "nt":  # Windows has no flock: one run per folder is up to the user there
        import fcntl
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            raise UserError(f"--out {folder} is in use by another training run (pid {lock.read().strip() or '?'}): "
                            "let it finish, stop it, or choose another --out") from None
    lock.truncate(0)
    print(os.getpid(), file=lock, flush=True)
    return lock

# ----------------------------------------------------------------------------- distributed (torchrun)
def setup_distributed(args):
    """rank, world size, device: one process per GPU (NCCL) or CPU process (gloo) under torchrun, else one."""
    device = choose_device(args.device)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        if local_rank >= (gpus := torch.cuda.device_count()):
            raise UserError(f"more torchrun processes here than GPUs ({gpus}): use --nproc_per_node={gpus}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device

def wrap_for_ddp(args, G, D, device):
    """G and D in DDP (under torchrun, even of one process). BatchNorm stays per device, over --batch-size
    images as on one GPU (--sync-bn: over the global batch)."""
    G, D = (nn.SyncBatchNorm.convert_sync_batchnorm(m) if args.sync_bn else m for m in (G, D))
    ids = [device.index] if device.type == "cuda" else None
    per_device = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                  else {"broadcast_buffers": False})  # BatchNorm running stats: never overwritten by rank 0's
    return tuple(DDP(m, device_ids=ids, **per_device) for m in (G, D))

def stop_agreed(stop, device, flags):
    """Under torchrun every rank must stop after the same step, or the others would wait forever. Each step
    all-reduces its stop flag and reads the previous step's (queued in `flags`), so the host never waits."""
    if not dist.is_initialized():
        return bool(stop)
    flags.append(torch.full((1,), len(stop), device=device))
    dist.all_reduce(flags[-1], op=dist.ReduceOp.MAX)
    return len(flags) > 1 and bool(flags.pop(0).item())

# ----------------------------------------------------------------------------- device and precision
def choose_device(name):
    """--device auto takes the first of cuda, mps and cpu that this machine has."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name}: use auto, cpu, cuda, cuda:N or mps") from None
    if not {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(device.type, lambda: True)():
        raise UserError(f"--device {name}: PyTorch sees no such device on this machine; use --device cpu")
    return device

def choose_amp(name, device):
    """The autocast dtype, or None for fp32. auto: bf16 on GPUs that have it and CPUs where it is native (AVX-512
    BF16 or AMX, ATen not capped below AVX512; else ~1% of fp32's speed), fp16 with a GradScaler on older GPUs."""
    if name != "auto":
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    flags = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""  # not Linux: no bf16
    native = ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.backends.cpu.get_cpu_capability() == "AVX512"
    return torch.bfloat16 if device.type == "cpu" and native else None

def check_device_flags(args, world, device):
    """Refuse flags the device cannot honour; pick cuDNN's fastest kernels, or deterministic ones."""
    if args.sync_bn and (world == 1 or device.type != "cuda"):
        raise UserError("--sync-bn is for several CUDA GPUs under torchrun")
    if args.compile and device.type == "cuda":  # seen with PyTorch 2.11 (README, Performance)
        raise UserError("--compile fails on CUDA (pytorch/pytorch#171622); train without it: CUDA graphs do its job")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.deterministic  # fixed shapes

def graphed_train_step(args, device, amp_dtype, warmup=3):
    """train_step recorded once as a CUDA graph, then replayed: at batch 128 its ~350 kernel launches keep the
    CPU busy ~11 ms while the GPU works ~3 ms (H100). Only where the step never waits for the host: CUDA without
    fp16's GradScaler, DDP, --compile, --no-cuda-graph. Warm-up and odd-sized batches run eagerly on a side stream."""
    if device.type != "cuda" or amp_dtype == torch.float16 or dist.is_initialized() or args.compile \
            or args.no_cuda_graph:
        return train_step
    graph = SimpleNamespace(cuda=None, real=None, steps=0, side=None)

    def step(G, D, opt_g, opt_d, scaler, real, *rest):
        graph.steps += 1
        if graph.steps <= warmup or graph.real is not None and graph.real.shape != real.shape:
            graph.side = graph.side or torch.cuda.Stream()
            graph.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(graph.side):
                stats = train_step(G, D, opt_g, opt_d, scaler, real, *rest)
            torch.cuda.current_stream().wait_stream(graph.side)
            return stats
        if graph.cuda is None:  # recording runs nothing: the replay below trains on this batch
            graph.real, graph.cuda = real.clone(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph.cuda, capture_error_mode="thread_local"):  # DataLoader threads may copy
                graph.stats = train_step(G, D, opt_g, opt_d, scaler, graph.real, *rest)
        graph.real.copy_(real)
        graph.cuda.replay()  # new noise each replay: CUDA's RNG advances its offset as for eager steps
        return graph.stats.clone()  # the batch came in, and the numbers go out, through fixed tensors
    return step

# ----------------------------------------------------------------------------- logging and plots
LOSS_COLUMNS = ["epoch", "iter", "loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2"]

def log_progress(run, pending, seen, tick, epoch, i):
    """The pending steps' numbers to the host (the one sync) and losses.csv (NaN stops the run); the log line."""
    where = torch.tensor([(epoch, i) for epoch, i, _ in pending], dtype=torch.float32)
    rows = torch.cat([where, torch.stack([stats for _, _, stats in pending]).cpu()], 1)
    finite = torch.isfinite(rows).all(1)
    if not finite.all():
        epoch, it = rows[~finite][0, :2].long().tolist()
        raise UserError(f"training diverged: a loss became NaN/inf at epoch {epoch + 1}, iteration {it + 1}. "
                        f"Nothing after it was saved; {run.checkpoint} (if any) is the last good state: "
                        "--resume it with a lower --lr (e.g. --lr 1e-4)")
    if run.master:
        write_losses(run.losses_csv, rows.tolist())
    run.history = torch.cat([run.history, rows])
    speed = seen * run.world / (time.perf_counter() - tick)
    left = ((run.args.epochs - epoch) * run.iters - i - 1) * run.global_batch / speed
    _, _, ld, lg, dx, dgz1, dgz2 = run.history[-1].tolist()
    run.say(f"[{epoch + 1}/{run.args.epochs}][{i + 1}/{run.iters}] Loss_D: {ld:.4f} Loss_G: {lg:.4f} "
            f"D(x): {dx:.4f} D(G(z)): {dgz1:.4f} / {dgz2:.4f}  {speed:,.0f} img/s  ETA {format_time(left)}")

def write_losses(path, rows, mode="a"):
    """Rows of LOSS_COLUMNS appended to losses.csv, or with mode "w" written afresh after its header."""
    with open(path, mode, newline="") as f:
        csv.writer(f).writerows(([LOSS_COLUMNS] if mode == "w" else []) +
                                [[int(r[0]), int(r[1])] + [f"{v:.6g}" for v in r[2:]] for r in rows])

def format_time(seconds):
    return f"{int(seconds) // 3600}:{int(seconds) // 60 % 60:02d}:{int(seconds) % 60:02d}"

def plot_losses(history, path):
    """G and D loss per iteration (raw and smoothed) above D(x) and D(G(z)) as probabilities."""
    import matplotlib.pyplot as plt  # here, not at the top: it is slow to import
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    window = max(1, min(50, len(history) // 10))
    smooth = lambda v: F.avg_pool1d(F.pad(v.view(1, 1, -1), (window - 1, 0), mode="replicate"), window, 1).view(-1)
    panels = (((3, "Loss_G", "tab:blue"), (2, "Loss_D", "tab:orange")),
              ((4, "D(x)", "tab:green"), (5, "D(G(z))", "tab:red")))
    for ax, curves in zip(axes, panels):
        for col, name, color in curves:
            ax.plot(history[:, col], color=color, alpha=0.25, linewidth=0.8)
            ax.plot(smooth(history[:, col]), color=color, label=name)
        ax.legend()
    axes[0].set(ylabel="loss", title="Generator and discriminator loss during training")
    axes[1].set(ylabel="D's probability 'real'", xlabel="iteration", ylim=(0, 1))
    axes[1].axhline(0.5, color="gray", linestyle=":", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

def save_progress_gif(folder, path):
    """The epoch grids in order as an animation, the last one held a little longer."""
    frames = [Image.open(p).convert("RGB") for p in sorted(Path(folder).glob("epoch_*.png"))]
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0, duration=[500] * len(frames[1:]) + [2000])

def save_real_vs_fake(real, fake, path):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    for ax, images, title in ((axes[0], real, "Real images"), (axes[1], fake, "Fake images")):
        ax.imshow(make_grid(images[:64], nrow=8, padding=2).permute(1, 2, 0).numpy())
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

# ----------------------------------------------------------------------------- synthetic faces
def draw_synthetic_face(rng, size):
    """A cartoon face with random skin, hair, eyes, mouth and backdrop, drawn at 4x and downsampled."""
    s, r = size * 4, rng.uniform
    top = [rng.randint(40, 220) for _ in range(3)]  # muted backdrops, like a photo studio
    img = Image.new("RGB", (1, 2))  # two pixels stretched into a vertical gradient
    img.putdata([tuple(top), tuple(max(0, min(255, c + rng.randint(-50, 50))) for c in top)])
    img = img.resize((s, s), Image.BILINEAR)
    d, tone = ImageDraw.Draw(img), r(0, 1)  # tone: dark to light skin
    skin = tuple(min(255, int(a + b * tone) + rng.randint(-12, 12)) for a, b in ((90, 160), (55, 150), (35, 135)))
    hair = rng.choice([(25, 20, 18), (60, 40, 25), (110, 75, 40), (200, 160, 90), (150, 60, 30), (130, 130, 130)])
    cx, cy, rx = s * (0.5 + r(-0.04, 0.04)), s * (0.53 + r(-0.03, 0.03)), s * r(0.24, 0.3)
    ry, long_hair = rx * r(1.2, 1.4), rng.random() < 0.5
    box = lambda x0, y0, x1, y1: [cx + rx * x0, cy + ry * y0, cx + rx * x1, cy + ry * y1]  # face units
    d.ellipse(box(-2, 0.95, 2, 2.6), fill=tuple(rng.randint(0, 255) for _ in range(3)))  # shoulders
    d.rectangle(box(-0.35, 0.6, 0.35, 1.1), fill=skin)  # neck
    d.ellipse(box(-1.15, -1.15, 1.15, 1.3 if long_hair else 0.2), fill=hair)
    if long_hair:
        d.rectangle(box(-1.15, -0.1, 1.15, 1.25), fill=hair)
    d.ellipse(box(-1, -1, 1, 1), fill=skin)
    d.chord(box(-1.02, -1.08, 1.02, 2 * r(0.35, 0.7) - 1), 180, 360, fill=hair)  # fringe
    eye_y, eye_dx, e = -0.12, r(0.36, 0.46), r(0.13, 0.18)  # e: eye radius in units of rx
    iris = rng.choice([(70, 45, 25), (40, 90, 150), (60, 110, 60), (30, 30, 30)])
    for side in (-1, 1):
        x = side * eye_dx
        for w, h, color in ((1.3, 0.8, (245, 245, 240)), (0.6, 0.6, iris), (0.25, 0.25, (0, 0, 0))):
            d.ellipse([cx + rx * (x - e * w), cy + ry * eye_y - rx * e * h,
                       cx + rx * (x + e * w), cy + ry * eye_y + rx * e * h], fill=color)
        brow = cy + ry * eye_y - rx * e * r(1.6, 2.2)
        d.line([cx + rx * (x - 1.4 * e), brow + side * rx * e * 0.1, cx + rx * (x + 1.4 * e), brow],
               fill=hair, width=max(2, s // 64))
    d.line([cx, cy + ry * eye_y + rx * e, cx - rx * 0.08, cy + ry * 0.25, cx + rx * 0.05, cy + ry * 0.3],
           fill=tuple(int(c * 0.8) for c in skin), width=max(2, s // 80))  # nose
    lips = tuple(int(low + span * rng.random()) for low, span in ((150, 60), (50, 40), (60, 40)))
    mouth_w = r(0.3, 0.5)
    if rng.random() < 0.6:  # smile
        d.chord(box(-mouth_w, 0.35, mouth_w, 0.62), 0, 180, fill=lips)
    else:
        d.ellipse(box(-mouth_w, 0.46, mouth_w, 0.56), fill=lips)
    return img.resize((size, size), Image.LANCZOS)

def synth(args):
    """A procedural face dataset, so all runs without a download; written aside, renamed when complete."""
    if os.path.exists(args.out):
        raise UserError(f"{args.out} already exists: delete it or choose another --out")
    partial = args.out.rstrip("/") + ".partial"
    os.makedirs(partial, exist_ok=True)
    for i in range(args.n):
        face = draw_synthetic_face(random.Random(args.seed * 1_000_003 + i), args.size)
        face.save(os.path.join(partial, f"face_{i:06d}.jpg"), quality=95)
    os.replace(partial, args.out)
    print(f"wrote {args.n} synthetic {args.size}x{args.size} faces to {args.out}/")

# ----------------------------------------------------------------------------- command line
def number(cast, low, high=None, low_included=True):
    """An argparse type: a number from low (included or not) up to, not including, high."""
    def parse(text):
        value = cast(text)
        if not ((value >= low if low_included else value > low) and (high is None or value < high)):
            bounds = f"{'at least' if low_included else 'above'} {low}" + (f" and below {high}" if high else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse

IMAGE_SIZES = (32, 64, 128, 256)  # one up/down-sampling block per doubling from 4x4
SEED = number(int, 0, 2**32)
TRAIN_DEFAULTS = dict(data="datasets/extracted", out="results", epochs=5, batch_size=BATCH_SIZE,
                      image_size=IMAGE_SIZE, nz=NZ, ngf=NGF, ndf=NDF, lr=LR, beta1=BETA1, workers=4,
                      cache_dir="datasets/cache", no_cache=False, compile=False, deterministic=False,
                      sync_bn=False, no_cuda_graph=False, seed=999, device="auto", amp="auto", log_every=50,
                      save_g="DCGAN_celeba_g.pth", save_d="DCGAN_celeba_d.pth", ema=0.0, fid_every=0, fid_n=2000)
# The flags that define a run: --resume takes them from the checkpoint and refuses a different value.
RUN_FLAGS = ("image_size", "nz", "ngf", "ndf", "batch_size", "seed", "amp", "no_cache", "deterministic", "ema")

def build_parser(defaults=True):
    """The command line; defaults=False leaves out train's flags not typed: --resume restores those."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(description="Train a DCGAN on faces and sample from it.")
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train G and D on a folder of images", formatter_class=formatter,
                            argument_default=argparse.SUPPRESS)
    t.add_argument("--data", help="folder searched recursively for images")
    t.add_argument("--out", help="folder for grids, plots, losses.csv, checkpoint.pth")
    t.add_argument("--epochs", type=number(int, 1), help="total epochs (also when resuming)")
    t.add_argument("--batch-size", type=number(int, 1), help="per process (GPU) under torchrun")
    t.add_argument("--image-size", type=int, choices=IMAGE_SIZES, help="32, 64, 128 or 256")
    t.add_argument("--nz", type=number(int, 1, 10000), help="length of the latent z")
    t.add_argument("--ngf", type=number(int, 1, 2048), help="generator width")
    t.add_argument("--ndf", type=number(int, 1, 2048), help="discriminator width")
    t.add_argument("--lr", type=number(float, 0, 1, low_included=False), help="Adam learning rate (DCGAN paper)")
    t.add_argument("--beta1", type=number(float, 0, 1), help="Adam beta1 (DCGAN paper: 0.5, not 0.9)")
    t.add_argument("--workers", type=number(int, 0, 256), help="image-decoding processes (with --no-cache)")
    t.add_argument("--cache-dir", help="where the decoded dataset is cached")
    t.add_argument("--no-cache", action="store_true", help="decode every file every epoch instead of caching")
    t.add_argument("--compile", action="store_true", help="torch.compile G and D (CPU only)")
    t.add_argument("--deterministic", action="store_true", help="bit-identical runs on CUDA too (slower kernels)")
    t.add_argument("--sync-bn", action="store_true", help="torchrun: BatchNorm over the global batch")
    t.add_argument("--no-cuda-graph", action="store_true", help="launch each kernel of a step on its own")
    t.add_argument("--seed", type=SEED, help="data order, initial weights, noise")
    t.add_argument("--device", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps, cpu")
    t.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="auto: bf16 if native, else fp16 on GPUs")
    t.add_argument("--log-every", type=number(int, 1), help="iterations between log lines")
    t.add_argument("--save-g", help="generator weights, written every epoch")
    t.add_argument("--save-d", help="discriminator weights, written every epoch")
    t.add_argument("--ema", type=number(float, 0, 1), help="keep G_ema, G's weights averaged with this decay (0: off)")
    t.add_argument("--fid-every", type=number(int, 0), help="FID every K epochs, in fid.csv and fid.png (0: off)")
    t.add_argument("--fid-n", type=number(int, 2), help="samples, and training images, per FID of --fid-every")
    t.add_argument("--resume", metavar="PATH", default=None, help="continue a run from its checkpoint.pth")
    t.add_argument("--init-g", metavar="PATH", default=None, help="start G from saved weights (fresh optimizer)")
    t.add_argument("--init-d", metavar="PATH", default=None, help="start D from saved weights (fresh optimizer)")
    t.set_defaults(func=train, **(TRAIN_DEFAULTS if defaults else {}))
    s = commands.add_parser("sample", help="draw faces from a trained generator", formatter_class=formatter)
    s.add_argument("--ckpt", required=True, help="generator weights (ours, the tutorial's, or checkpoint.pth)")
    s.add_argument("--n", type=number(int, 1), default=64, help="number of images")
    s.add_argument("--nrow", type=number(int, 1), default=8, help="images per row in the grid")
    s.add_argument("--seed", type=SEED, default=None, help="latent seed (default: random, printed)")
    s.add_argument("--out", default="results/samples.png", help="grid image to write (at most 256 images)")
    s.add_argument("--separate", metavar="DIR", help="also write every image as DIR/NNNNNN.png")
    s.add_argument("--interpolate", type=number(int, 1), metavar="STEPS", help="n // STEPS rows of spherical paths")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=sample)
    y = commands.add_parser("synth", help="draw cartoon faces to train on (no download)", formatter_class=formatter)
    y.add_argument("--out", default="datasets/synth", help="folder for the JPEGs")
    y.add_argument("--n", type=number(int, 1), default=6000, help="number of faces")
    y.add_argument("--size", type=int, choices=IMAGE_SIZES, default=64, help="image side in pixels")
    y.add_argument("--seed", type=SEED, default=0)
    y.set_defaults(func=synth)
    return parser

def main(argv=None):
    """Run the subcommand; a UserError, running out of memory or a failed write end in one line, no traceback."""
    args = build_parser().parse_args(argv)
    if args.command == "train":  # the flags typed, which --resume keeps; it restores the others
        args.given = set(vars(build_parser(defaults=False).parse_args(argv))) & TRAIN_DEFAULTS.keys()
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (MemoryError, torch.OutOfMemoryError):
        print("error: out of memory: lower --batch-size (or --image-size, --ngf, --ndf); saved files are intact",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # disk full, permission denied while writing results
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; files saved before this point are intact", file=sys.stderr)
        sys.exit(1)

if __name__ == "__main__":
    main()
