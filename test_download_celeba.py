"""Tests for download_celeba.sh, all offline on tiny zip files: file:// URLs for curl, and fake `curl`,
`gdown`, `unzip` and `df` on PATH where a test needs one. `make test` runs them with test_dcgan.py."""
import hashlib
import os
import re
import shutil
import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Offline: every run points CELEBA_DIR, CELEBA_DOWNLOADS and HOME into tmp_path, disables the
# Google Drive step (unless a test fakes gdown), points both curl sources at missing local files
# (unless a test fakes curl) and uses a tiny CELEBA_EXPECTED, so nothing touches the network or
# the real datasets/ folder.

SCRIPT = HERE / "download_celeba.sh"

N = 5  # images per test archive; CELEBA_EXPECTED defaults to this in the tests
CSVS = [
    "list_attr_celeba.csv",
    "list_bbox_celeba.csv",
    "list_eval_partition.csv",
    "list_landmarks_align_celeba.csv",
]
# The script only looks at names; these bytes are a JPEG start and end marker.
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000") + b"\x00" * 64 + b"\xff\xd9"
OFFICIAL_MD5 = "00d2c5bc6d35e252742224ab0c1e8fcb"
KAGGLE_URL = "https://www.kaggle.com/api/v1/datasets/download/jessicali9530/celeba-dataset"


def image(i):
    return JPEG + bytes([i % 256])


def names(n=N):
    return [f"{i:06d}.jpg" for i in range(1, n + 1)]


def make_zip(path, layout="official", n=N, csvs=None):
    """Write a small CelebA-like archive in the official or Kaggle layout."""
    prefix = {"official": "img_align_celeba/", "kaggle": "img_align_celeba/img_align_celeba/"}[layout]
    if csvs is None:
        csvs = CSVS if layout == "kaggle" else []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i in range(1, n + 1):
            z.writestr(f"{prefix}{i:06d}.jpg", image(i))
        for name in csvs:
            z.writestr(name, "image_id,value\n000001.jpg,1\n")
    return path


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_exe(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(0o755)


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
        bin = tmp_path / "bin"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CELEBA_", "KAGGLE_", "XDG_"))
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

        def jpgs(self, folder=None):
            return sorted(p.name for p in (folder or self.images).glob("*.jpg"))

        def leftovers(self):
            found = []
            for d in (self.datasets, self.target):
                if d.is_dir():
                    found += sorted(p.name for p in d.glob(".extract-*"))
            return found

    T.home.mkdir()
    T.bin.mkdir()
    T.env.update(
        HOME=str(T.home),
        PATH=f"{T.bin}{os.pathsep}{os.environ['PATH']}",  # fake tools go in T.bin
        CELEBA_DIR=str(T.target),
        CELEBA_DOWNLOADS=str(T.downloads),
        CELEBA_NO_GDOWN="1",
        CELEBA_EXPECTED=str(N),
        # Never the real Kaggle or mirror URL: missing local files, so curl fails at once.
        CELEBA_URL=(tmp_path / "no-such-download.zip").as_uri(),
        CELEBA_MIRROR_URL=(tmp_path / "no-such-mirror.zip").as_uri(),
    )
    return T()


def assert_failed_cleanly(t, r):
    assert r.returncode == 1, r.stdout + r.stderr
    assert not t.target.exists()
    assert t.leftovers() == []


# --- fakes on PATH -------------------------------------------------------------------------


def fake_gdown(t, source, mode="copy"):
    """A stand-in gdown that 'downloads' source to its -O path. Like the real one with --continue,
    it keeps an -O file that is already there; mode="fail" fails."""
    write_exe(
        t.bin / "gdown",
        'if [ "${1:-}" = --help ]; then echo "usage: gdown [-O OUTPUT] [--continue] URL"; exit 0; fi\n'
        'echo "$@" >> "$FAKE_GDOWN_LOG"\n'
        'while [ $# -gt 0 ]; do if [ "$1" = -O ]; then out=$2; fi; shift; done\n'
        'if [ -e "$out" ]; then echo "Skipping already downloaded file $out" >&2; exit 0; fi\n'
        f'if [ "{mode}" = fail ]; then exit 1; fi\n'
        f'cp "{source}" "$out"\n',
    )
    return {"CELEBA_NO_GDOWN": None, "FAKE_GDOWN_LOG": t.root / "gdown.log"}


def gdown_outputs(t):
    lines = (t.root / "gdown.log").read_text().splitlines()
    return [line.split()[line.split().index("-O") + 1] for line in lines]


def fake_curl(t, source, mode="auth", want=""):
    """A stand-in curl that logs its arguments and what it reads from --config -, one JSON-ish line
    per call. mode="auth": copy source to -o when the config holds `want` (empty: always), else
    exit 22 like an HTTP 401; mode="partial": write half of source to -o and exit 18."""
    write_exe(
        t.bin / "curl",
        'args="$*"; out=""; url=""; cfg=""\n'
        'while [ $# -gt 0 ]; do\n'
        '  case $1 in\n'
        '    -o) out=$2; shift ;;\n'
        '    -K|--config) if [ "$2" = - ]; then cfg=$(cat); fi; shift ;;\n'
        '    -C|--retry|--connect-timeout) shift ;;\n'
        '    -*) ;;\n'
        '    *) url=$1 ;;\n'
        '  esac\n'
        '  shift\n'
        'done\n'
        'printf "url=%s|out=%s|config=%s|args=%s\\n" "$url" "$out" "$cfg" "$args" >> "$FAKE_CURL_LOG"\n'
        f'if [ "{mode}" = partial ]; then\n'
        f'  size=$(wc -c < "{source}"); head -c $((size / 2)) "{source}" > "$out"; exit 18\n'
        'fi\n'
        'case $cfg in *"$FAKE_CURL_WANT"*) ;; *) exit 22 ;; esac\n'
        f'cp "{source}" "$out"\n',
    )
    return {"FAKE_CURL_LOG": t.root / "curl.log", "FAKE_CURL_WANT": want}


def curl_calls(t):
    log = t.root / "curl.log"
    if not log.exists():
        return []
    return [dict(kv.split("=", 1) for kv in line.split("|", 3)) for line in log.read_text().splitlines()]


def fake_df(t, avail_kb):
    """A stand-in df that reports avail_kb KB free on every filesystem."""
    write_exe(
        t.bin / "df",
        'echo "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
        f'echo "/dev/fake 100000000 1 {avail_kb} 1% /"\n',
    )


# --- regression tests for the six bugs of issue 13 ----------------------------------------


def test_bug1_wrong_count_fails_with_the_number_and_installs_nothing(t):
    z = make_zip(t.root / "small.zip", "official", n=N - 2)
    for _ in range(2):  # and a re-run does the same, instead of re-installing
        r = t.run(z)
        assert_failed_cleanly(t, r)
        assert f"holds {N - 2} images, expected {N}" in r.stderr
        assert "already there" not in r.stdout


def test_bug1_downloaded_archive_with_wrong_count_is_deleted(t):
    src = make_zip(t.root / "small.zip", "kaggle", n=N + 1)
    r = t.run(CELEBA_URL=src.as_uri())
    assert_failed_cleanly(t, r)
    assert f"holds {N + 1} images, expected {N}" in r.stderr
    assert not t.downloads.exists() or list(t.downloads.iterdir()) == []


@pytest.mark.parametrize("top", ["archive", "faces", "dataset", "Downloads", "zzz"])
def test_bug2_zip_remade_on_a_mac_installs_images_not_appledouble_stubs(t, top):
    z = t.root / "archive.zip"
    stub = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + b"\x00" * (4096 - 16)
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(1, N + 1):
            zf.writestr(f"{top}/img_align_celeba/{i:06d}.jpg", image(i))
            zf.writestr(f"__MACOSX/{top}/img_align_celeba/._{i:06d}.jpg", stub)
        zf.writestr(f"{top}/list_attr_celeba.csv", "image_id,value\n")
        zf.writestr(f"__MACOSX/{top}/._list_attr_celeba.csv", stub)
    r = t.run(z)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert sorted(p.name for p in t.target.iterdir()) == ["img_align_celeba", "list_attr_celeba.csv"]
    assert t.jpgs() == names()
    assert [p.read_bytes() for p in sorted(t.images.glob("*.jpg"))] == [image(i) for i in range(1, N + 1)]


def test_bug3_symlinked_complete_folder_is_used_not_replaced(t):
    real = t.root / "other-disk" / "img_align_celeba"
    real.mkdir(parents=True)
    for i, name in enumerate(names(), 1):
        (real / name).write_bytes(image(i))
    t.target.mkdir(parents=True)
    t.images.symlink_to(real)
    src = make_zip(t.root / "celeba-dataset.zip", "kaggle")
    r = t.run(CELEBA_URL=src.as_uri())
    assert r.returncode == 0, r.stderr
    assert "already there" in r.stdout
    assert t.images.is_symlink() and t.images.resolve() == real
    assert not t.downloads.exists()  # nothing downloaded
    assert t.jpgs(real) == names()


@pytest.fixture
def other_fs(tmp_path):
    """A folder on another filesystem than tmp_path (tmpfs /dev/shm), removed afterwards."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a writable /dev/shm on another filesystem than the temporary folder")
    d = shm / f"test_download_celeba-{uuid.uuid4().hex}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_bug4_extraction_happens_on_the_filesystem_of_the_target(t, other_fs):
    """CELEBA_DIR on another filesystem than its parent (here: a link to tmpfs): the temporary
    folder must be on the target's filesystem, so that installing is one rename, not a copy."""
    real_target = other_fs / "extracted"
    real_target.mkdir()
    t.datasets.mkdir()
    t.target.symlink_to(real_target)
    # A pass-through unzip that records the filesystem of every folder it extracts into.
    real_unzip = shutil.which("unzip")
    write_exe(
        t.bin / "unzip",
        'prev=""; for a in "$@"; do if [ "$prev" = -d ]; then mkdir -p "$a"; '
        'stat -c %d "$a" >> "$FAKE_UNZIP_LOG"; fi; prev=$a; done\n'
        f'exec "{real_unzip}" "$@"\n',
    )
    r = t.run(make_zip(t.root / "archive.zip", "official"), FAKE_UNZIP_LOG=t.root / "unzip.log")
    assert r.returncode == 0, r.stderr
    assert t.jpgs(real_target / "img_align_celeba") == names()
    devices = set((t.root / "unzip.log").read_text().split())
    assert devices == {str(real_target.stat().st_dev)}
    assert t.leftovers() == [] and list(real_target.glob(".extract-*")) == []


def test_bug5_explicit_md5_applies_to_the_curl_source(t):
    src = make_zip(t.root / "celeba-dataset.zip", "kaggle")
    r = t.run(CELEBA_URL=src.as_uri(), CELEBA_MD5="0" * 32)
    assert_failed_cleanly(t, r)
    assert "md5 mismatch" in r.stderr and md5(src) in r.stderr
    r = t.run(CELEBA_URL=src.as_uri(), CELEBA_MD5=md5(src).upper())
    assert r.returncode == 0, r.stderr
    assert "md5 OK" in r.stdout
    assert t.jpgs() == names()


def test_bug6_curl_and_gdown_never_share_a_part_file(t):
    """curl leaves a partial download behind; gdown must still download its own file."""
    src = make_zip(t.root / "drive.zip", "official")
    env = {**fake_curl(t, src, mode="partial"), **fake_gdown(t, src)}
    r = t.run(CELEBA_URL="https://example.invalid/img_align_celeba.zip", CELEBA_MD5=md5(src), **env)
    assert r.returncode == 0, r.stderr
    assert t.jpgs() == names()
    curl_outs = {c["out"] for c in curl_calls(t)}
    assert curl_outs and not curl_outs & set(gdown_outputs(t))


# --- local archives -----------------------------------------------------------------


def test_official_layout_via_argument_checks_md5(t):
    z = make_zip(t.root / "img_align_celeba.zip", "official")
    r = t.run(z, CELEBA_MD5=md5(z))
    assert r.returncode == 0, r.stderr
    assert "md5 OK" in r.stdout
    assert t.jpgs() == names()
    assert sorted(p.name for p in t.target.iterdir()) == ["img_align_celeba"]
    assert t.leftovers() == []
    assert not t.downloads.exists()  # nothing was downloaded


def test_kaggle_layout_via_env_is_flattened_and_keeps_csvs(t):
    z = make_zip(t.root / "archive.zip", "kaggle")
    r = t.run(CELEBA_ZIP=z)
    assert r.returncode == 0, r.stderr
    assert t.jpgs() == names()
    assert not (t.images / "img_align_celeba").exists()
    assert sorted(p.name for p in t.target.iterdir()) == sorted(CSVS + ["img_align_celeba"])
    assert "md5" not in r.stdout  # a local archive has no known md5 unless CELEBA_MD5 is set
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


def test_local_archive_is_judged_by_its_listing_not_its_name(t):
    """No name heuristics: an archive called img_align_celeba.zip has no md5 by default (the
    listing and `unzip -t` decide); CELEBA_MD5 checks it, and CELEBA_MD5= checks nothing."""
    z = make_zip(t.root / "img_align_celeba.zip", "official")
    r = t.run(z)
    assert r.returncode == 0, r.stderr
    assert "md5" not in r.stdout
    assert t.jpgs() == names()
    assert t.run(z, CELEBA_MD5="").returncode == 0


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
        zf.writestr("photos/000001.jpg", JPEG)  # not in an img_align_celeba folder
    r = t.run(z)
    assert_failed_cleanly(t, r)
    assert f"holds 0 images, expected {N}" in r.stderr


def test_duplicate_image_names_fail(t):
    z = make_zip(t.root / "archive.zip", "official", n=N - 1)
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("img_align_celeba/img_align_celeba/000001.jpg", JPEG)
    r = t.run(z)
    assert_failed_cleanly(t, r)
    assert "duplicate" in r.stderr


# --- the curl (Kaggle) step -----------------------------------------------------------


def test_curl_step_downloads_then_extracts(t):
    src = make_zip(t.root / "celeba-dataset.zip", "kaggle")
    r = t.run(CELEBA_URL=src.as_uri())
    assert r.returncode == 0, r.stderr
    assert t.jpgs() == names()
    assert (t.target / "list_eval_partition.csv").exists()
    assert (t.downloads / "celeba-kaggle.zip").read_bytes() == src.read_bytes()
    assert not list(t.downloads.glob("*.part"))
    assert t.leftovers() == []


def test_curl_step_resumes_a_part_file(t):
    src = make_zip(t.root / "celeba-dataset.zip", "kaggle")
    t.downloads.mkdir(parents=True)
    data = src.read_bytes()
    (t.downloads / "celeba-kaggle.zip.part").write_bytes(data[: len(data) // 3])
    r = t.run(CELEBA_URL=src.as_uri())
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    assert (t.downloads / "celeba-kaggle.zip").read_bytes() == data
    assert len(t.jpgs()) == N


def test_curl_step_reuses_an_earlier_download(t):
    t.downloads.mkdir(parents=True)
    make_zip(t.downloads / "celeba-kaggle.zip", "kaggle")
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
    assert r.stderr.count("could not get CelebA from any source") == 1
    assert url in r.stderr  # says what was tried
    assert "CELEBA_NO_GDOWN" in r.stderr  # and why the Drive step did not run
    assert t.env["CELEBA_MIRROR_URL"] in r.stderr
    assert "mmlab.ie.cuhk.edu.hk" in r.stderr
    assert "CELEBA_ZIP=/path/to/img_align_celeba.zip make download" in r.stderr
    assert not t.downloads.exists()


def test_mirror_is_md5_checked_against_the_official_md5(t):
    src = make_zip(t.root / "celeba.zip", "official")
    r = t.run(CELEBA_MIRROR_URL=src.as_uri())
    assert_failed_cleanly(t, r)
    assert f"md5 mismatch for {t.downloads / 'celeba-mirror.zip'}: expected {OFFICIAL_MD5}" in r.stderr
    r = t.run(CELEBA_MIRROR_URL=src.as_uri(), CELEBA_MD5="")  # no md5: the listing decides
    assert r.returncode == 0, r.stderr
    assert t.jpgs() == names()
    assert "source=mirror" in (t.images / ".complete").read_text()


def test_empty_mirror_url_skips_the_mirror(t):
    r = t.run(CELEBA_MIRROR_URL="")
    assert_failed_cleanly(t, r)
    assert "skipped (CELEBA_MIRROR_URL is empty)" in r.stderr


@pytest.mark.parametrize("source", ["local", "kaggle", "gdrive", "mirror"])
def test_explicit_md5_applies_to_every_source(t, source):
    src = make_zip(t.root / "celeba-src.zip", "official")
    env = {"local": {}, "kaggle": {"CELEBA_URL": src.as_uri()}, "mirror": {"CELEBA_MIRROR_URL": src.as_uri()}}
    args = [src] if source == "local" else []
    if source == "gdrive":
        env["gdrive"] = fake_gdown(t, src)
    r = t.run(*args, CELEBA_MD5="f" * 32, **env[source])
    assert_failed_cleanly(t, r)
    assert f"expected {'f' * 32}, got {md5(src)}" in r.stderr
    r = t.run(*args, CELEBA_MD5=md5(src), **env[source])
    assert r.returncode == 0, r.stderr
    assert "md5 OK" in r.stdout
    assert f"md5={md5(src)}" in (t.images / ".complete").read_text()


def test_each_source_has_its_own_part_file(t):
    src = make_zip(t.root / "celeba-src.zip", "official")
    env = {**fake_curl(t, src, mode="partial"), **fake_gdown(t, src, mode="fail")}
    r = t.run(CELEBA_URL="https://example.invalid/img_align_celeba.zip",
              CELEBA_MIRROR_URL="https://example.invalid/celeba.zip", **env)
    assert_failed_cleanly(t, r)
    parts = [c["out"] for c in curl_calls(t)] + gdown_outputs(t)
    assert sorted(parts) == [str(t.downloads / f"celeba-{s}.zip.part") for s in ("gdrive", "kaggle", "mirror")]
    assert all(Path(c["out"]).stat().st_size > 0 for c in curl_calls(t))  # kept to resume later
    assert "kept" in r.stderr and "to resume" in r.stderr


# --- the Kaggle API with credentials, through a fake curl ----------------------------------


def kaggle_run(t, want, **env):
    src = make_zip(t.root / "archive.zip", "kaggle")
    return t.run(CELEBA_URL=None, **fake_curl(t, src, want=want), **env)


def test_kaggle_anonymous_first(t):
    (t.home / ".kaggle").mkdir()
    (t.home / ".kaggle" / "kaggle.json").write_text('{"username": "alice", "key": "0123abcd"}')
    r = kaggle_run(t, want="")
    assert r.returncode == 0, r.stderr
    calls = curl_calls(t)
    assert [(c["url"], c["config"]) for c in calls] == [(KAGGLE_URL, "")]
    assert (t.target / "list_attr_celeba.csv").exists()


@pytest.mark.parametrize("where", ["~/.kaggle", "~/.config/kaggle", "KAGGLE_CONFIG_DIR", "env"])
def test_kaggle_legacy_username_and_key(t, where):
    env = {}
    if where == "env":
        env = {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "0123abcd"}
    else:
        d = t.root / "kcfg" if where == "KAGGLE_CONFIG_DIR" else t.home / where[2:]
        d.mkdir(parents=True)
        (d / "kaggle.json").write_text('{"username":"alice","key":"0123abcd"}\n')
        if where == "KAGGLE_CONFIG_DIR":
            env = {"KAGGLE_CONFIG_DIR": d}
    r = kaggle_run(t, want='user = "alice:0123abcd"', **env)
    assert r.returncode == 0, r.stderr
    calls = curl_calls(t)
    assert [c["config"] for c in calls] == ["", 'user = "alice:0123abcd"']  # anonymous first
    assert all("0123abcd" not in c["args"] for c in calls)  # the key is never on the command line
    assert "alice" in r.stdout


@pytest.mark.parametrize("where", ["KAGGLE_API_TOKEN", "~/.kaggle/access_token"])
def test_kaggle_bearer_token(t, where):
    env = {}
    if where == "KAGGLE_API_TOKEN":
        env = {"KAGGLE_API_TOKEN": "KGAT_secret"}
    else:
        (t.home / ".kaggle").mkdir()
        (t.home / ".kaggle" / "access_token").write_text("KGAT_secret\n")
    r = kaggle_run(t, want='header = "Authorization: Bearer KGAT_secret"', **env)
    assert r.returncode == 0, r.stderr
    calls = curl_calls(t)
    assert [c["config"] for c in calls] == ["", 'header = "Authorization: Bearer KGAT_secret"']
    assert all("KGAT_secret" not in c["args"] for c in calls)


def test_kaggle_tries_every_credential_then_the_next_source(t):
    env = {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "k", "KAGGLE_API_TOKEN": "tok"}
    r = kaggle_run(t, want="never accepted", **env)
    assert_failed_cleanly(t, r)
    calls = curl_calls(t)
    assert [c["config"] for c in calls] == ["", 'user = "alice:k"', 'header = "Authorization: Bearer tok"', ""]
    assert calls[-1]["url"] == t.env["CELEBA_MIRROR_URL"]  # credentials only ever go to kaggle.com


def test_kaggle_credentials_are_not_sent_elsewhere(t):
    src = make_zip(t.root / "archive.zip", "kaggle")
    r = t.run(CELEBA_URL="https://example.com/celeba.zip", KAGGLE_API_TOKEN="tok",
              KAGGLE_USERNAME="alice", KAGGLE_KEY="k", **fake_curl(t, src, want="tok"))
    assert_failed_cleanly(t, r)
    assert [c["config"] for c in curl_calls(t)] == ["", ""]  # CELEBA_URL, then the mirror


# --- the .complete marker, re-runs, symlinks ------------------------------------------


def test_marker_records_source_md5_and_count(t):
    z = make_zip(t.root / "archive.zip", "official")
    assert t.run(z).returncode == 0
    marker = (t.images / ".complete").read_text()
    assert f"count={N}\n" in marker and f"md5={md5(z)}\n" in marker and "source=local" in marker


def test_rerun_trusts_the_marker_not_a_count(t):
    assert t.run(make_zip(t.root / "a.zip", "kaggle")).returncode == 0
    (t.images / "000001.jpg").unlink()  # the marker, not a count of files, is what a re-run trusts
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


def test_folder_without_marker_is_adopted_only_when_complete(t):
    t.images.mkdir(parents=True)
    for i, name in enumerate(names(), 1):
        (t.images / name).write_bytes(image(i))
    (t.images / "000003.jpg").write_bytes(b"")  # an empty file, as a full disk leaves them
    r = t.run()
    assert r.returncode == 1
    assert f"holds {N - 1} images, expected {N}" in r.stderr
    assert not (t.images / ".complete").exists()
    (t.images / "000003.jpg").write_bytes(image(3))
    r = t.run()
    assert r.returncode == 0, r.stderr
    assert "already there" in r.stdout
    assert "source=existing folder" in (t.images / ".complete").read_text()


def test_wrong_count_warns_and_keeps_folder_when_nothing_to_fetch(t):
    assert t.run(make_zip(t.root / "a.zip", "official")).returncode == 0
    r = t.run(CELEBA_EXPECTED=7)
    assert r.returncode == 1
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
    assert t.jpgs() == names()
    assert (t.target / "notes.txt").read_text() == "mine"
    assert (t.target / "list_attr_celeba.csv").exists()
    assert t.leftovers() == []


def test_install_follows_a_symlinked_image_folder(t):
    real = t.root / "other-disk" / "faces"
    real.mkdir(parents=True)
    (real / "old.jpg").write_bytes(JPEG)
    t.target.mkdir(parents=True)
    t.images.symlink_to(real)
    r = t.run(make_zip(t.root / "archive.zip", "official"))
    assert r.returncode == 0, r.stderr
    assert t.images.is_symlink() and t.images.resolve() == real
    assert t.jpgs(real) == names() and (real / ".complete").exists()
    assert list(real.parent.glob(".extract-*")) == [] and t.leftovers() == []


def test_broken_symlink_is_an_error(t):
    t.target.mkdir(parents=True)
    t.images.symlink_to(t.root / "gone")
    r = t.run(make_zip(t.root / "archive.zip", "official"))
    assert r.returncode == 1
    assert "symlink" in r.stderr
    assert t.images.is_symlink() and not (t.root / "gone").exists()


def test_stale_temp_folder_from_interrupted_run_is_removed(t):
    stale = t.target / ".extract-AbC123" / "img"
    stale.mkdir(parents=True)
    (stale / "999999.jpg").write_bytes(JPEG)
    r = t.run(make_zip(t.root / "archive.zip", "official"))
    assert r.returncode == 0, r.stderr
    assert "interrupted run" in r.stdout
    assert t.jpgs() == names()
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
    assert p.returncode == 143
    assert not t.target.exists()
    assert t.leftovers() == []


# --- free space -----------------------------------------------------------------------


def test_free_space_is_checked_before_downloading(t):
    fake_df(t, avail_kb=1)
    src = make_zip(t.root / "celeba-dataset.zip", "kaggle")
    r = t.run(CELEBA_URL=src.as_uri(), **fake_curl(t, src))
    assert_failed_cleanly(t, r)
    assert re.search(r"not enough free space .*: need \d+ MB, have 0 MB", r.stderr), r.stderr
    assert curl_calls(t) == []  # nothing was downloaded
    assert not t.downloads.exists()


def test_free_space_is_checked_before_extracting_a_local_zip(t):
    fake_df(t, avail_kb=1)
    r = t.run(make_zip(t.root / "archive.zip", "official"))
    assert_failed_cleanly(t, r)
    assert "not enough free space" in r.stderr


def test_enough_free_space_passes(t):
    fake_df(t, avail_kb=10**6)
    assert t.run(make_zip(t.root / "archive.zip", "official")).returncode == 0


# --- the Google Drive (gdown) step, with a fake gdown ---------------------------------


def test_gdown_step_checks_md5_and_extracts(t):
    src = make_zip(t.root / "drive.zip", "official")
    r = t.run(CELEBA_MD5=md5(src), CELEBA_GDRIVE_ID="FAKEID", **fake_gdown(t, src))
    assert r.returncode == 0, r.stderr
    assert "md5 OK" in r.stdout
    assert t.jpgs() == names()
    assert (t.downloads / "celeba-gdrive.zip").exists()
    log = (t.root / "gdown.log").read_text()
    assert "FAKEID" in log and "--continue" in log


def test_gdown_download_with_wrong_md5_is_deleted(t):
    src = make_zip(t.root / "drive.zip", "official")
    r = t.run(**fake_gdown(t, src))  # the default, official md5 does not match
    assert_failed_cleanly(t, r)
    assert f"md5 mismatch for {t.downloads / 'celeba-gdrive.zip'}: expected {OFFICIAL_MD5}" in r.stderr
    assert not (t.downloads / "celeba-gdrive.zip").exists()


def test_missing_gdown_says_how_to_install_it(t):
    if shutil.which("gdown") or (HERE / ".venv" / "bin" / "gdown").exists():
        pytest.skip("gdown is installed here")
    r = t.run(CELEBA_NO_GDOWN=None)
    assert_failed_cleanly(t, r)
    assert "pip install gdown" in r.stderr


# --- interface and hygiene ------------------------------------------------------------


def test_help_lists_every_variable_the_script_reads(t):
    r = t.run("--help")
    assert r.returncode == 0
    code = "\n".join(line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\b((?:CELEBA|KAGGLE)_[A-Z0-9_]+)", code))
    assert {"CELEBA_ZIP", "CELEBA_DIR", "CELEBA_DOWNLOADS", "CELEBA_URL", "CELEBA_MIRROR_URL", "CELEBA_MD5",
            "CELEBA_GDRIVE_ID", "CELEBA_NO_GDOWN", "CELEBA_EXPECTED", "KAGGLE_API_TOKEN"} <= used
    assert [v for v in sorted(used) if v not in r.stdout] == []


def test_too_many_arguments(t):
    r = t.run("a.zip", "b.zip")
    assert r.returncode == 1
    assert "at most one argument" in r.stderr


def test_messages_are_prefixed(t):
    r = t.run(make_zip(t.root / "archive.zip", "official"))
    lines = (r.stdout + r.stderr).splitlines()
    assert lines and all(line.startswith("download_celeba: ") for line in lines)


def test_script_is_executable_and_lints_clean():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
