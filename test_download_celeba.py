"""Tests for download_celeba.sh, all offline on tiny zip files (file:// URLs for curl, a fake gdown).
`make test` runs them with test_dcgan.py."""
import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Offline: every run points CELEBA_DIR, CELEBA_DOWNLOADS and HOME into tmp_path, disables the
# Google Drive step (unless a test fakes gdown) and uses a tiny CELEBA_EXPECTED, so nothing
# touches the network or the real datasets/ folder.

SCRIPT = HERE / "download_celeba.sh"

N = 5  # images per test archive; CELEBA_EXPECTED defaults to this in the tests
CSVS = [
    "list_attr_celeba.csv",
    "list_bbox_celeba.csv",
    "list_eval_partition.csv",
    "list_landmarks_align_celeba.csv",
]
# The script only counts *.jpg files; these bytes are a JPEG start and end marker.
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000") + b"\x00" * 64 + b"\xff\xd9"


def make_zip(path, layout="official", n=N, csvs=None):
    """Write a small CelebA-like archive in the official or Kaggle layout."""
    if layout == "official":
        prefix = "img_align_celeba/"
    elif layout == "kaggle":
        prefix = "img_align_celeba/img_align_celeba/"
    else:
        raise ValueError(layout)
    if csvs is None:
        csvs = CSVS if layout == "kaggle" else []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i in range(1, n + 1):
            z.writestr(f"{prefix}{i:06d}.jpg", JPEG + bytes([i]))
        for name in csvs:
            z.writestr(name, "image_id,value\n000001.jpg,1\n")
    return path


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def t(tmp_path):
    """Paths and a clean environment for one test."""

    class T:
        root = tmp_path
        datasets = tmp_path / "datasets"
        target = tmp_path / "datasets" / "extracted"
        images = tmp_path / "datasets" / "extracted" / "img_align_celeba"
        downloads = tmp_path / "datasets" / "downloads"
        home = tmp_path / "home"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CELEBA_", "KAGGLE_"))
        }

        def run(self, *args, **extra_env):
            env = dict(self.env)
            for k, v in extra_env.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = str(v)
            return subprocess.run(
                ["bash", str(SCRIPT), *map(str, args)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        def jpgs(self):
            return sorted(p.name for p in self.images.glob("*.jpg"))

        def leftovers(self):
            if not self.datasets.exists():
                return []
            return sorted(p.name for p in self.datasets.glob(".extract-*"))

    T.home.mkdir()
    T.env.update(
        HOME=str(T.home),
        CELEBA_DIR=str(T.target),
        CELEBA_DOWNLOADS=str(T.downloads),
        CELEBA_NO_GDOWN="1",
        CELEBA_EXPECTED=str(N),
        # Never the real Kaggle URL: a missing local file, so curl fails at once.
        CELEBA_URL=(tmp_path / "no-such-download.zip").as_uri(),
    )
    return T()


def assert_failed_cleanly(t, r):
    assert r.returncode != 0, r.stdout + r.stderr
    assert not t.target.exists()
    assert t.leftovers() == []


# --- local archives -----------------------------------------------------------------


def test_official_layout_via_argument_checks_md5(t):
    z = make_zip(t.root / "img_align_celeba.zip", "official")
    r = t.run(z, CELEBA_MD5=md5(z))
    assert r.returncode == 0, r.stderr
    assert "md5 OK" in r.stdout
    assert t.jpgs() == [f"{i:06d}.jpg" for i in range(1, N + 1)]
    assert sorted(p.name for p in t.target.iterdir()) == ["img_align_celeba"]
    assert t.leftovers() == []
    assert not t.downloads.exists()  # nothing was downloaded


def test_kaggle_layout_via_env_is_flattened_and_keeps_csvs(t):
    z = make_zip(t.root / "archive.zip", "kaggle")
    r = t.run(CELEBA_ZIP=z)
    assert r.returncode == 0, r.stderr
    assert len(t.jpgs()) == N
    assert not (t.images / "img_align_celeba").exists()
    assert sorted(p.name for p in t.target.iterdir()) == sorted(CSVS + ["img_align_celeba"])
    assert "md5" not in r.stdout  # a non-official name is not md5-checked by default
    assert t.leftovers() == []


def test_argument_wins_over_env(t):
    good = make_zip(t.root / "good.zip", "official")
    r = t.run(good, CELEBA_ZIP=t.root / "missing.zip")
    assert r.returncode == 0, r.stderr
    assert len(t.jpgs()) == N


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad_crc"])
def test_corrupt_local_zip_fails_and_leaves_nothing(t, damage):
    z = make_zip(t.root / "archive.zip", "kaggle")
    data = bytearray(z.read_bytes())
    if damage == "garbage":
        data = bytearray(b"<html>not a zip</html>" * 10)
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:  # flip a byte inside the first stored image: only the CRC check notices
        i = bytes(data).index(JPEG)
        data[i + 30] ^= 0xFF
    z.write_bytes(bytes(data))
    r = t.run(z)
    assert_failed_cleanly(t, r)
    assert "not a valid zip" in r.stderr


def test_wrong_md5_fails_and_leaves_nothing(t):
    z = make_zip(t.root / "archive.zip", "official")
    r = t.run(z, CELEBA_MD5="0" * 32)
    assert_failed_cleanly(t, r)
    assert "md5 mismatch" in r.stderr
    assert md5(z) in r.stderr


def test_official_name_is_checked_against_the_official_md5(t):
    z = make_zip(t.root / "img_align_celeba.zip", "official")
    r = t.run(z)
    assert_failed_cleanly(t, r)
    assert "00d2c5bc6d35e252742224ab0c1e8fcb" in r.stderr
    assert "CELEBA_MD5=" in r.stderr  # says how to skip the check for a re-packed zip


def test_empty_md5_disables_the_check(t):
    z = make_zip(t.root / "img_align_celeba.zip", "official")
    r = t.run(z, CELEBA_MD5="")
    assert r.returncode == 0, r.stderr
    assert len(t.jpgs()) == N


def test_failed_local_archive_does_not_fall_back_to_network(t):
    good = make_zip(t.root / "good.zip", "kaggle")
    r = t.run(t.root / "missing.zip", CELEBA_URL=good.as_uri())
    assert_failed_cleanly(t, r)
    assert "no such archive" in r.stderr
    assert not t.downloads.exists()


def test_archive_without_jpegs_fails(t):
    z = t.root / "empty.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("list_attr_celeba.csv", "a,b\n")
    r = t.run(z)
    assert_failed_cleanly(t, r)
    assert "no JPEG images" in r.stderr


# --- the curl (Kaggle) step -----------------------------------------------------------


def test_curl_step_downloads_then_extracts(t):
    src = make_zip(t.root / "celeba-dataset.zip", "kaggle")
    r = t.run(CELEBA_URL=src.as_uri())
    assert r.returncode == 0, r.stderr
    assert len(t.jpgs()) == N
    assert (t.target / "list_eval_partition.csv").exists()
    assert (t.downloads / "celeba-dataset.zip").read_bytes() == src.read_bytes()
    assert not list(t.downloads.glob("*.part"))
    assert t.leftovers() == []


def test_curl_step_resumes_a_part_file(t):
    src = make_zip(t.root / "celeba-dataset.zip", "kaggle")
    t.downloads.mkdir(parents=True)
    data = src.read_bytes()
    (t.downloads / "celeba-dataset.zip.part").write_bytes(data[: len(data) // 3])
    r = t.run(CELEBA_URL=src.as_uri())
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    assert (t.downloads / "celeba-dataset.zip").read_bytes() == data
    assert len(t.jpgs()) == N


def test_curl_step_reuses_an_earlier_download(t):
    t.downloads.mkdir(parents=True)
    make_zip(t.downloads / "celeba-dataset.zip", "kaggle")
    r = t.run(CELEBA_URL="http://127.0.0.1:9/celeba-dataset")  # unreachable, not needed
    assert r.returncode == 0, r.stderr
    assert "earlier download" in r.stdout
    assert len(t.jpgs()) == N


def test_corrupt_download_is_deleted(t):
    bad = t.root / "celeba-dataset.zip"
    bad.write_bytes(b"<html>quota exceeded</html>")
    r = t.run(CELEBA_URL=bad.as_uri())
    assert_failed_cleanly(t, r)
    assert "not a valid zip" in r.stderr
    assert "CELEBA_ZIP=" in r.stderr
    assert not t.downloads.exists() or list(t.downloads.iterdir()) == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/celeba.zip", "file:///nonexistent/celeba.zip"])
def test_unreachable_url_fails_with_instructions(t, url):
    r = t.run(CELEBA_URL=url)
    assert_failed_cleanly(t, r)
    assert "could not get CelebA from any source" in r.stderr
    assert url in r.stderr  # says what was tried
    assert "CELEBA_NO_GDOWN" in r.stderr  # and why the Drive step did not run
    assert "mmlab.ie.cuhk.edu.hk" in r.stderr
    assert "CELEBA_ZIP=/path/to/img_align_celeba.zip make download" in r.stderr
    assert not t.downloads.exists()


# --- idempotence and counts ---------------------------------------------------------


def test_rerun_on_complete_folder_downloads_nothing(t):
    assert t.run(make_zip(t.root / "a.zip", "kaggle")).returncode == 0
    src = make_zip(t.root / "celeba-dataset.zip", "kaggle")
    r = t.run(CELEBA_URL=src.as_uri())
    assert r.returncode == 0, r.stderr
    assert "already there" in r.stdout
    assert f"{N} images" in r.stdout
    assert not t.downloads.exists()
    # ...even with no source available at all
    r = t.run(CELEBA_URL="http://127.0.0.1:9/x.zip")
    assert r.returncode == 0, r.stderr
    assert "already there" in r.stdout


def test_wrong_count_warns_and_keeps_folder_when_nothing_to_fetch(t):
    assert t.run(make_zip(t.root / "a.zip", "official")).returncode == 0
    r = t.run(CELEBA_EXPECTED=7)
    assert r.returncode != 0
    assert f"holds {N} images, expected 7" in r.stderr
    assert len(t.jpgs()) == N  # the existing folder is left alone
    assert t.leftovers() == []


def test_wrong_count_is_replaced_and_other_files_kept(t):
    t.images.mkdir(parents=True)
    (t.images / "000001.jpg").write_bytes(JPEG)
    (t.images / "000002.jpg").write_bytes(JPEG)
    (t.target / "notes.txt").write_text("mine")
    r = t.run(make_zip(t.root / "archive.zip", "kaggle"))
    assert r.returncode == 0, r.stderr
    assert f"holds 2 images, expected {N}" in r.stderr
    assert len(t.jpgs()) == N
    assert (t.target / "notes.txt").read_text() == "mine"
    assert (t.target / "list_attr_celeba.csv").exists()
    assert t.leftovers() == []


def test_archive_with_a_different_count_warns_with_the_number(t):
    r = t.run(make_zip(t.root / "small.zip", "official", n=3))
    assert r.returncode == 0, r.stderr
    assert f"holds 3 images, expected {N}" in r.stderr
    assert len(t.jpgs()) == 3


def test_stale_temp_folder_from_interrupted_run_is_removed(t):
    stale = t.datasets / ".extract-AbC123" / "raw" / "img_align_celeba"
    stale.mkdir(parents=True)
    (stale / "999999.jpg").write_bytes(JPEG)
    r = t.run(make_zip(t.root / "archive.zip", "official"))
    assert r.returncode == 0, r.stderr
    assert "interrupted run" in r.stdout
    assert t.jpgs() == [f"{i:06d}.jpg" for i in range(1, N + 1)]
    assert t.leftovers() == []


def test_interrupted_extraction_leaves_no_target(t):
    """Kill the script during extraction: no target and no temp folder remain."""
    big = t.root / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(1, 3001):
            z.writestr(f"img_align_celeba/{i:06d}.jpg", JPEG * 200 + bytes([i % 256]))
    env = dict(t.env, CELEBA_EXPECTED="3000")
    p = subprocess.Popen(
        ["bash", str(SCRIPT), str(big)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until extraction has started, then send SIGTERM like a Ctrl-C / kill would.
    for line in p.stdout:
        if "extracting" in line:
            break
    p.terminate()
    p.wait(timeout=30)
    if p.returncode == 0:
        pytest.skip("extraction finished before the signal arrived")
    assert not t.target.exists()
    assert t.leftovers() == []


# --- the Google Drive (gdown) step, with a fake gdown ---------------------------------


def fake_gdown(t, source):
    """A stand-in gdown on PATH that 'downloads' source to the -O path."""
    bindir = t.root / "bin"
    bindir.mkdir()
    exe = bindir / "gdown"
    exe.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "${1:-}" = --help ]; then echo "usage: gdown [-O OUTPUT] [--continue] URL"; exit 0; fi\n'
        'echo "$@" >> "$FAKE_GDOWN_LOG"\n'
        'while [ $# -gt 0 ]; do if [ "$1" = -O ]; then out=$2; fi; shift; done\n'
        f'cp "{source}" "$out"\n'
    )
    exe.chmod(0o755)
    return {
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "CELEBA_NO_GDOWN": None,
        "FAKE_GDOWN_LOG": t.root / "gdown.log",
    }


def test_gdown_step_checks_md5_and_extracts(t):
    src = make_zip(t.root / "drive.zip", "official")
    r = t.run(CELEBA_MD5=md5(src), CELEBA_GDRIVE_ID="FAKEID", **fake_gdown(t, src))
    assert r.returncode == 0, r.stderr
    assert "md5 OK" in r.stdout
    assert len(t.jpgs()) == N
    assert (t.downloads / "img_align_celeba.zip").exists()
    log = (t.root / "gdown.log").read_text()
    assert "FAKEID" in log and "--continue" in log


def test_gdown_download_with_wrong_md5_is_deleted(t):
    src = make_zip(t.root / "drive.zip", "official")
    r = t.run(**fake_gdown(t, src))  # the default, official md5 does not match
    assert_failed_cleanly(t, r)
    assert "md5 mismatch" in r.stderr
    assert not (t.downloads / "img_align_celeba.zip").exists()


def test_missing_gdown_says_how_to_install_it(t):
    if shutil.which("gdown") or (HERE / ".venv" / "bin" / "gdown").exists():
        pytest.skip("gdown is installed here")
    r = t.run(CELEBA_NO_GDOWN=None)
    assert_failed_cleanly(t, r)
    assert "pip install gdown" in r.stderr


# --- helpers and hygiene --------------------------------------------------------------


def source_and_call(t, snippet, **extra_env):
    env = dict(t.env, **{k: str(v) for k, v in extra_env.items()})
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; {snippet}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_kaggle_credentials_from_json_and_env(t):
    (t.home / ".kaggle").mkdir()
    (t.home / ".kaggle" / "kaggle.json").write_text('{"username": "alice", "key": "0123abcd"}')
    r = source_and_call(t, 'kaggle_credentials; echo "$KUSER:$KKEY"')
    assert r.stdout.strip() == "alice:0123abcd"
    r = source_and_call(t, 'kaggle_credentials; echo "$KUSER:$KKEY"', KAGGLE_USERNAME="bob", KAGGLE_KEY="k")
    assert r.stdout.strip() == "bob:k"
    (t.home / ".kaggle" / "kaggle.json").unlink()
    r = source_and_call(t, 'kaggle_credentials; echo "[$KUSER:$KKEY]"')
    assert r.stdout.strip() == "[:]"


def test_help_documents_the_variables(t):
    r = t.run("--help")
    assert r.returncode == 0
    for var in ["CELEBA_ZIP", "CELEBA_DIR", "CELEBA_DOWNLOADS", "CELEBA_URL", "CELEBA_MD5",
                "CELEBA_GDRIVE_ID", "CELEBA_NO_GDOWN", "CELEBA_EXPECTED"]:
        assert var in r.stdout


def test_script_is_executable_and_lints_clean():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
