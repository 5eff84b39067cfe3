"""Benchmark: the PyTorch DCGAN tutorial's pipeline against dcgan.py's default fast path.

    python bench.py                                  # CelebA-like JPEGs generated on first use
    python bench.py --data ../shared/celeba-10k --device cuda --steps 200
    python bench.py --device cuda --batch-size 1024 --no-baseline --profile
    make bench

Both run on the same images and device, after warm-up, for --steps training steps:
- baseline: ImageFolder + DataLoader(--workers) decoding JPEGs every step, fp32, NCHW, D ending in
  Sigmoid with BCELoss, and .item() every step for the log, as the tutorial does (written here);
- dcgan.py: the images decoded once into the cache, batches gathered from it, bf16/fp16 autocast
  where the device supports it, channels_last, dcgan.train_step (its own code, imported), replayed as
  a CUDA graph on a GPU as dcgan.py does (--no-cuda-graph: each kernel launched on its own).
For each it reports training img/s end to end, data-loading-only img/s, FLOPs per image per step
(torch.utils.flop_counter) and model FLOP utilisation against the peak of a large matmul measured
in the same run (only for dtypes the device runs natively, and bounded in time); then the speed-ups.
--profile adds a torch.profiler view of dcgan.py's step: the busiest kernels, kernel launches and host
syncs per step, and how much of the step's wall time the GPU is busy. Everything goes to results/bench.json.
"""
import argparse
import json
import os
import platform
import random
import tempfile
import time

import torch
import torch.nn as nn
import torchvision.datasets as dset
import torchvision.transforms as transforms
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import dcgan


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", help="folder of images (default: generate CelebA-like 178x218 JPEGs)")
    p.add_argument("--fake-count", type=int, default=3000, help="images to generate when --data is not given")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, help="timed training steps for each pipeline (default: 200 on a GPU, "
                   "6 on a CPU, where a 64x64 step at batch 128 takes 1-5 s)")
    p.add_argument("--warmup", type=int, help="untimed steps first (cuDNN autotune, compile) (default: 20 on a GPU, "
                   "1 on a CPU)")
    p.add_argument("--workers", type=int, default=2, help="the baseline's DataLoader workers (tutorial: 2)")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"], help="dcgan.py's --amp")
    p.add_argument("--compile", action="store_true", help="torch.compile dcgan.py's G and D")
    p.add_argument("--no-cuda-graph", action="store_true", help="dcgan.py's --no-cuda-graph: no CUDA graph")
    p.add_argument("--no-baseline", action="store_true", help="time dcgan.py's pipeline alone")
    p.add_argument("--profile", action="store_true", help="profile a few of dcgan.py's steps (torch.profiler)")
    p.add_argument("--out", default="results/bench.json")
    return p.parse_args()


def celeba_like_folder(count, folder="datasets/bench"):
    """Synthetic faces saved as 178x218 JPEGs, the size of CelebA's aligned images, so decoding
    costs what it costs on CelebA. Made once and reused."""
    images = os.path.join(folder, "faces")
    if len(os.listdir(images) if os.path.isdir(images) else []) < count:
        os.makedirs(images, exist_ok=True)
        print(f"generating {count} CelebA-like 178x218 JPEGs in {images}/ (once)", flush=True)
        for i in range(count):
            face = dcgan.draw_synthetic_face(random.Random(i), 128).resize((178, 218), Image.BICUBIC)
            face.save(os.path.join(images, f"{i:06d}.jpg"), quality=90)
    return folder


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, budget_s=2.0):
    """FLOP/s of a large square matmul (the practical peak MFU is measured against): the best of
    repeated products, for about budget_s seconds at most."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: library load, kernel choice
    best, start, reps = float("inf"), time.perf_counter(), 10 if device.type == "cuda" else 1
    while time.perf_counter() - start < budget_s or best == float("inf"):
        sync(device)
        tick = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - tick) / reps)
    return 2 * n**3 / best


# ----------------------------------------------------------------------------- the tutorial's way

def tutorial_loader(data, image_size, batch_size, workers):
    """ImageFolder needs class sub-folders: a temporary folder with one link to --data gives it one."""
    root = tempfile.mkdtemp(prefix="bench-imagefolder-")
    os.symlink(os.path.abspath(data), os.path.join(root, "all"))
    dataset = dset.ImageFolder(root=root, transform=transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0)


def tutorial_models(image_size, device):
    netG = dcgan.Generator(image_size=image_size).to(device)
    netD = nn.Sequential(dcgan.Discriminator(image_size=image_size), nn.Sigmoid()).to(device)
    netG.apply(dcgan.init_weights)
    netD.apply(dcgan.init_weights)
    return netG, netD


def tutorial_step(netG, netD, optG, optD, criterion, real, nz=100):
    """The tutorial's iteration: D on real then fake (separate backwards), G on the same fakes."""
    b, device = real.size(0), real.device
    netD.zero_grad()
    label = torch.full((b,), 1.0, device=device)
    output = netD(real).view(-1)
    errD_real = criterion(output, label)
    errD_real.backward()
    D_x = output.mean().item()
    fake = netG(torch.randn(b, nz, 1, 1, device=device))
    label.fill_(0.0)
    output = netD(fake.detach()).view(-1)
    errD_fake = criterion(output, label)
    errD_fake.backward()
    optD.step()
    netG.zero_grad()
    label.fill_(1.0)
    output = netD(fake).view(-1)
    errG = criterion(output, label)
    errG.backward()
    optG.step()
    return (errD_real + errD_fake).item(), errG.item(), D_x


def run_baseline(args, device):
    loader = tutorial_loader(args.data, args.image_size, args.batch_size, args.workers)
    netG, netD = tutorial_models(args.image_size, device)
    optG, optD = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in (netG, netD))
    criterion = nn.BCELoss()

    def batches():
        while True:
            for real, _ in loader:
                yield real.to(device)
    source = batches()
    step = lambda: tutorial_step(netG, netD, optG, optD, criterion, next(source))
    with FlopCounterMode(display=False) as counter:
        step()
    result = time_training(step, args, device)
    result["data_img_s"] = time_loading(lambda: next(source), args, device)
    result["flops_per_img"] = counter.get_total_flops() / args.batch_size
    result["dtype"] = "float32"
    return result


# ----------------------------------------------------------------------------- dcgan.py's way

def run_dcgan(args, device):
    paths = dcgan.find_images(args.data)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache_dir:
        base = dcgan.cache_name(args.data, paths, args.image_size, cache_dir)
        start = time.perf_counter()
        dcgan.build_cache(paths, args.image_size, base)
        build_img_s = len(paths) / (time.perf_counter() - start)
        images, _ = dcgan.load_cache(base, args.image_size)
        images = dcgan.place_cache(images, device)
        amp_dtype = dcgan.choose_amp(args.amp, device)
        defaults = dcgan.build_parser().parse_args(["train", "--image-size", str(args.image_size)])
        G, D, opt_g, opt_d = dcgan.build_models(defaults, device)  # as `dcgan.py train` builds them
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        def batches():
            for epoch in range(10**9):
                order = dcgan.epoch_batches(len(images), args.batch_size, 0, epoch)
                for batch in dcgan.cached_batches(images, order, device):
                    yield dcgan.to_model_input(batch, device)
        source = batches()
        train_step = dcgan.graphed_train_step(args, device, amp_dtype)  # as dcgan.py trains
        step = lambda: train_step(G, D, opt_g, opt_d, scaler, next(source), defaults.nz, amp_dtype)
        with FlopCounterMode(display=False) as counter:
            step()
        if args.compile:
            G.compile()
            D.compile()
        result = time_training(step, args, device)
        result["data_img_s"] = time_loading(lambda: next(source), args, device)
        if args.profile:
            result["profile"] = profile_steps(step, device)
    result.update(flops_per_img=counter.get_total_flops() / args.batch_size, cache_build_img_s=build_img_s,
                  cuda_graph=train_step is not dcgan.train_step,
                  dtype=str(amp_dtype).replace("torch.", "") if amp_dtype else "float32")
    return result


# ----------------------------------------------------------------------------- timing and report

def time_training(step, args, device):
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        out = step()
    if torch.is_tensor(out):
        out.tolist()  # dcgan.py's step returns a device tensor: wait for the last step
    sync(device)
    return {"train_img_s": args.steps * args.batch_size / (time.perf_counter() - start)}


def profile_steps(step, device, steps=10):
    """Where one step's time goes: the kernels that take the most GPU time, and per step the kernel
    launches, host syncs and copies, the GPU's busy time and the wall time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            out = step()
        out.tolist()
        sync(device)
        wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    print(events.table(sort_by="self_device_time_total" if device.type == "cuda" else "self_cpu_time_total",
                       row_limit=15, max_name_column_width=60))
    count = lambda *names: sum(e.count for e in events if any(n in e.key for n in names)) / steps
    gpu_busy = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    report = {"wall_ms": 1e3 * wall, "gpu_busy_ms": gpu_busy / 1e3 / steps,
              "kernel_launches": count("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch"),
              "graph_launches": count("cudaGraphLaunch"), "host_syncs": count("Synchronize"),
              "memcpy": count("cudaMemcpy")}
    print("per step: " + ", ".join(f"{k} {v:.2f}" for k, v in report.items()), flush=True)
    return report


def time_loading(next_batch, args, device):
    steps = max(args.steps, 10)
    next_batch()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next_batch()
    sync(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def main():
    args = parse_args()
    device = dcgan.choose_device(args.device)
    on_cpu = device.type == "cpu"
    args.steps = args.steps or (6 if on_cpu else 200)
    args.warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 20)
    args.data = args.data or celeba_like_folder(args.fake_count)
    n_images = len(dcgan.find_images(args.data))
    if n_images < args.batch_size:
        raise SystemExit(f"error: --data {args.data} has {n_images} images, fewer than --batch-size")
    # Only the dtypes the two pipelines run in: fp32, and dcgan.py's autocast dtype. On a CPU --amp auto
    # picks bf16 only where it is native; an emulated bf16 matmul runs at ~1% of fp32 speed.
    amp_dtype = dcgan.choose_amp(args.amp, device)
    peaks = {str(dtype).replace("torch.", ""): matmul_peak(device, dtype)
             for dtype in {torch.float32, amp_dtype} - {None}}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"{n_images} images in {args.data} | batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{args.steps} steps after {args.warmup} warm-up", flush=True)
    results = {}
    for label, run in (("baseline", run_baseline), ("dcgan.py", run_dcgan))[args.no_baseline:]:
        torch.manual_seed(0)
        results[label] = r = run(args, device)
        r["peak_flops"] = peaks.get(r["dtype"], peaks["float32"])
        r["mfu"] = r["flops_per_img"] * r["train_img_s"] / r["peak_flops"]
        print(f"{label:9s} train {r['train_img_s']:10,.0f} img/s | data only {r['data_img_s']:12,.0f} img/s | "
              f"{r['flops_per_img'] / 1e9:.2f} GFLOP/img/step | MFU {100 * r['mfu']:.1f}% of "
              f"{r['peak_flops'] / 1e12:.2f} TFLOP/s {r['dtype']} matmul", flush=True)
    base, fast, speedup = results.get("baseline"), results["dcgan.py"], None
    if base:
        speedup = {"train": fast["train_img_s"] / base["train_img_s"], "data": fast["data_img_s"] / base["data_img_s"]}
        print(f"speed-up: training {speedup['train']:.2f}x, data loading {speedup['data']:.1f}x | "
              f"cache build {fast['cache_build_img_s']:,.0f} img/s on {os.cpu_count()} cores")
    report = {"device": str(device), "device_name": name, "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "data": args.data, "images": n_images, "batch_size": args.batch_size, "image_size": args.image_size,
              "steps": args.steps, "warmup": args.warmup, "workers": args.workers, "compile": args.compile,
              "peaks": peaks, "baseline": base, "dcgan": fast, "speedup": speedup}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
