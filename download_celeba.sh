#!/usr/bin/env bash
# download_celeba.sh - put the aligned CelebA images (202,599 JPEGs, 178x218) into
# datasets/extracted/img_align_celeba/, verified, from the first source that works.
#
# Usage:
#   ./download_celeba.sh                         # try Kaggle, then Google Drive
#   ./download_celeba.sh path/to/archive.zip     # use an archive you already have
#   CELEBA_ZIP=path/to/archive.zip make download # same, through make
#
# Sources, in this order:
#   1. A local archive (first argument, or CELEBA_ZIP; the argument wins if both are given).
#      Both layouts work: the official img_align_celeba.zip (img_align_celeba/*.jpg) and
#      Kaggle's jessicali9530/celeba-dataset zip (img_align_celeba/img_align_celeba/*.jpg
#      plus CSV files). If this archive fails verification the script stops; it does not
#      fall back to the network behind your back.
#   2. Kaggle's download API over curl, with basic auth when credentials are found
#      (KAGGLE_USERNAME + KAGGLE_KEY, or ~/.kaggle/kaggle.json). Public datasets usually
#      download without them.
#   3. The official Google Drive file (the one torchvision uses) through gdown, when
#      gdown is installed (on PATH or in ./.venv/bin). Its md5 is always checked.
#
# Environment variables (all optional):
#   CELEBA_ZIP        local archive to use (same as the first argument)
#   CELEBA_DIR        target folder; default: datasets/extracted beside this script.
#                     The images end up in $CELEBA_DIR/img_align_celeba/, Kaggle's CSVs
#                     in $CELEBA_DIR/.
#   CELEBA_DOWNLOADS  where downloads (*.part while incomplete, then *.zip) are kept;
#                     default: a "downloads" folder beside $CELEBA_DIR.
#   CELEBA_URL        URL of the curl step; default: Kaggle's API URL below. Any URL curl
#                     understands works, e.g. CELEBA_URL=file:///tmp/some.zip in tests.
#                     Kaggle credentials are only ever sent to kaggle.com.
#   CELEBA_GDRIVE_ID  Google Drive file id of img_align_celeba.zip (default below).
#   CELEBA_MD5        expected md5 of the official img_align_celeba.zip (default below).
#                     It is checked for the Google Drive download and for any archive
#                     named img_align_celeba.zip. Setting it explicitly also checks a
#                     local archive of any name. Setting it empty (CELEBA_MD5=) turns the
#                     md5 check off, e.g. for a re-packed img_align_celeba.zip.
#   CELEBA_NO_GDOWN   set to 1 to skip the Google Drive step (used by the tests).
#   CELEBA_EXPECTED   expected number of images; default 202599. For tests only (a
#                     tiny count lets them use tiny archives).
#   KAGGLE_USERNAME, KAGGLE_KEY, KAGGLE_CONFIG_DIR   as for the kaggle CLI. Tests set
#                     HOME to a temporary folder so the real ~/.kaggle is never read.
#
# Examples:
#   CELEBA_ZIP=~/Downloads/archive.zip make download
#   CELEBA_DIR=/data/celeba ./download_celeba.sh
#   CELEBA_URL=file:///tmp/x.zip CELEBA_NO_GDOWN=1 CELEBA_EXPECTED=5 \
#       CELEBA_DIR=/tmp/t/extracted ./download_celeba.sh
#
# Guarantees: downloads go to a .part file (resumed with curl -C - on a re-run) and are
# renamed only when complete; every archive must pass `unzip -tq` before it is
# extracted; extraction happens in a temporary folder beside the target and is moved
# into place only when it succeeded, so a failed or interrupted run never leaves a
# half-filled target. A re-run on a complete folder does nothing.
# Needs bash (3.2 is enough), curl, unzip, find, and md5sum (or python3, or md5).

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

DEFAULT_KAGGLE_URL=https://www.kaggle.com/api/v1/datasets/download/jessicali9530/celeba-dataset
DEFAULT_GDRIVE_ID=0B7EVK8r0v71pZjFTYXZWM3FlRnM
DEFAULT_MD5=00d2c5bc6d35e252742224ab0c1e8fcb
DEFAULT_EXPECTED=202599
OFFICIAL_NAME=img_align_celeba.zip   # also the name of the image folder, without .zip
IMAGES=img_align_celeba

log() { printf 'download_celeba: %s\n' "$*"; }
warn() { printf 'download_celeba: warning: %s\n' "$*" >&2; }
err() { printf 'download_celeba: error: %s\n' "$*" >&2; }
die() {
    err "$*"
    exit 1
}

# Temporary folders to remove on any exit (success, error, Ctrl-C). Downloads are not
# listed here: a .part file is kept on purpose so that the next run resumes it.
CLEANUP=()
cleanup() {
    local d
    for d in ${CLEANUP[@]+"${CLEANUP[@]}"}; do
        rm -rf "$d"
    done
}

# Why the last step failed, for the messages; set by the functions below.
REASON=""
# The archive a download step produced.
ARCHIVE=""

# Number of *.jpg files directly in folder $1 (0 if it does not exist).
count_jpgs() {
    local n=0
    if [[ -d $1 ]]; then
        n=$(find "$1" -maxdepth 1 -type f -name '*.jpg' | wc -l)
    fi
    echo $((n)) # arithmetic drops the padding some wc implementations add
}

has_jpg() {
    local first
    first=$(find "$1" -maxdepth 1 -type f -name '*.jpg' -print 2>/dev/null | head -n 1) || true
    [[ -n $first ]]
}

# md5 of file $1 in lower-case hex; md5sum on Linux, python3 or md5 elsewhere (macOS).
md5_of() {
    local sum
    if command -v md5sum >/dev/null 2>&1; then
        sum=$(md5sum "$1") || return 1
        sum=${sum%% *}
    elif command -v python3 >/dev/null 2>&1; then
        sum=$(python3 -c '
import hashlib, sys
h = hashlib.md5()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1") || return 1
    elif command -v md5 >/dev/null 2>&1; then
        sum=$(md5 -q "$1") || return 1
    else
        return 1
    fi
    echo "$sum" | tr 'A-F' 'a-f'
}

# verify_archive FILE CHECK_MD5(yes/no): md5 (when asked) and `unzip -tq`.
# Returns 1 with REASON set when the archive is not usable.
verify_archive() {
    local zip=$1 check_md5=$2 sum out
    if [[ ! -s $zip ]]; then
        REASON="$zip is empty"
        return 1
    fi
    if [[ $check_md5 == yes ]]; then
        log "checking the md5 of $zip ..."
        if ! sum=$(md5_of "$zip"); then
            REASON="cannot compute an md5 (no md5sum, python3 or md5 found)"
            return 1
        fi
        if [[ $sum != "$MD5" ]]; then
            REASON="md5 mismatch for $zip: expected $MD5, got $sum"
            return 1
        fi
        log "md5 OK ($sum)"
    fi
    log "testing $zip (unzip -tq) ..."
    if ! out=$(unzip -tq "$zip" 2>&1); then
        REASON="$zip is not a valid zip archive or is corrupt: $(printf '%s\n' "$out" | tail -n 1)"
        return 1
    fi
    return 0
}

# The folder inside the unpacked archive $1 that holds the images: Kaggle's double
# nesting first, then the official layout, then images at the top, then anywhere.
find_jpg_dir() {
    local raw=$1 d first
    for d in "$raw/$IMAGES/$IMAGES" "$raw/$IMAGES" "$raw"; do
        if [[ -d $d ]] && has_jpg "$d"; then
            echo "$d"
            return 0
        fi
    done
    first=$(find "$raw" -type f -name '*.jpg' -print | head -n 1) || true
    if [[ -n $first ]]; then
        dirname "$first"
        return 0
    fi
    return 1
}

# Unpack archive $1 beside the target, build the final layout there
# ($IMAGES/*.jpg plus CSVs at the top), then move it into place.
# Called from `if`/`||` contexts where `set -e` is off, hence the explicit checks.
extract_and_install() {
    local zip=$1 tmp jpgdir csv n
    mkdir -p "$PARENT" || {
        REASON="cannot create $PARENT"
        return 1
    }
    tmp=$(mktemp -d "$PARENT/.extract-XXXXXX") || {
        REASON="cannot create a temporary folder in $PARENT"
        return 1
    }
    CLEANUP+=("$tmp")

    log "extracting $zip into $tmp (a minute or two for the full data set) ..."
    if ! unzip -q "$zip" -d "$tmp/raw"; then
        REASON="unzip failed on $zip (disk full?)"
        return 1
    fi
    if ! jpgdir=$(find_jpg_dir "$tmp/raw"); then
        REASON="no JPEG images in $zip (expected $IMAGES/*.jpg or $IMAGES/$IMAGES/*.jpg)"
        return 1
    fi

    mkdir "$tmp/new" || return 1
    # Kaggle ships the attribute, landmark and partition tables as CSVs; keep them
    # at the top of the target, beside the image folder.
    while IFS= read -r csv; do
        mv -f "$csv" "$tmp/new/" || {
            REASON="cannot move $csv"
            return 1
        }
    done < <(find "$tmp/raw" -type f -name '*.csv')
    # This also flattens Kaggle's img_align_celeba/img_align_celeba/.
    mv "$jpgdir" "$tmp/new/$IMAGES" || {
        REASON="cannot move the images out of $jpgdir"
        return 1
    }

    n=$(count_jpgs "$tmp/new/$IMAGES")
    if [[ $n -ne $EXPECTED ]]; then
        warn "$zip holds $n images, expected $EXPECTED; installing them anyway"
    fi

    if [[ ! -e $TARGET ]]; then
        # One rename: the target appears complete or not at all.
        mv "$tmp/new" "$TARGET" || {
            REASON="cannot move the extracted files to $TARGET"
            return 1
        }
    else
        # The target exists (maybe with other data in it): swap only the image folder,
        # keeping the old one until the new one is in place.
        if [[ -e $TARGET/$IMAGES ]]; then
            mv "$TARGET/$IMAGES" "$tmp/old" || {
                REASON="cannot move the old $TARGET/$IMAGES aside"
                return 1
            }
        fi
        if ! mv "$tmp/new/$IMAGES" "$TARGET/$IMAGES"; then
            if [[ -e $tmp/old ]]; then mv "$tmp/old" "$TARGET/$IMAGES" || true; fi
            REASON="cannot move the extracted images to $TARGET/$IMAGES"
            return 1
        fi
        for csv in "$tmp/new"/*.csv; do
            if [[ -e $csv ]]; then mv -f "$csv" "$TARGET/" || return 1; fi
        done
    fi
    log "done: $n images in $TARGET/$IMAGES"
    return 0
}

# Sets KUSER/KKEY/KSRC from KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json; empty if none.
kaggle_credentials() {
    KUSER="" KKEY="" KSRC=""
    if [[ -n ${KAGGLE_USERNAME:-} && -n ${KAGGLE_KEY:-} ]]; then
        KUSER=$KAGGLE_USERNAME KKEY=$KAGGLE_KEY KSRC="KAGGLE_USERNAME/KAGGLE_KEY"
        return 0
    fi
    local json="${KAGGLE_CONFIG_DIR:-${HOME:-}/.kaggle}/kaggle.json"
    if [[ -r $json ]]; then
        # {"username":"...","key":"..."}: plain sed, no jq or python needed.
        KUSER=$(sed -n 's/.*"username"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$json" | head -n 1)
        KKEY=$(sed -n 's/.*"key"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$json" | head -n 1)
        if [[ -n $KUSER && -n $KKEY ]]; then
            KSRC=$json
        else
            KUSER="" KKEY=""
        fi
    fi
    return 0
}

curl_reason() {
    case $1 in
    6) echo "curl could not resolve the host (no network?)" ;;
    7) echo "curl could not connect (no network or blocked?)" ;;
    18 | 56) echo "the transfer broke off (curl exit $1); re-run to resume it" ;;
    22) echo "HTTP error (curl exit 22: e.g. 401/403 without Kaggle credentials, 404, or 429 quota)" ;;
    28) echo "timed out (curl exit 28)" ;;
    35 | 60) echo "TLS/certificate problem (curl exit $1)" ;;
    37) echo "curl could not read the file (exit 37)" ;;
    *) echo "curl failed (exit $1)" ;;
    esac
}

# curl, with the Kaggle credentials when CURL_AUTH=yes. The key goes in through stdin
# (curl --config -), not the command line, so that it does not show up in `ps`;
# without --location-trusted curl sends no credentials to the hosts it is redirected to.
CURL_AUTH=no
run_curl() {
    if [[ $CURL_AUTH == yes ]]; then
        curl --config - "$@" <<<"user = \"$KUSER:$KKEY\""
    else
        curl "$@"
    fi
}

# reuse_earlier_download ZIP CHECK_MD5: a complete download from an earlier run is used again
# if it verifies (ARCHIVE set, returns 0); one that does not is deleted so it is fetched anew.
reuse_earlier_download() {
    [[ -f $1 ]] || return 1
    log "found an earlier download, $1"
    if verify_archive "$1" "$2"; then
        ARCHIVE=$1
        return 0
    fi
    warn "$REASON; deleting it and downloading again"
    rm -f "$1"
    return 1
}

# Step 2: download $URL with curl into $DOWNLOADS, resuming a .part from an earlier run.
try_curl() {
    local url=$URL name zip part check_md5=no rc=0
    local -a opts
    name=${url%%\?*}
    name=${name##*/}
    [[ $name == *.zip ]] || name="$name.zip"
    [[ $name != .zip ]] || name=celeba-dataset.zip
    zip="$DOWNLOADS/$name"
    part="$zip.part"
    if [[ $name == "$OFFICIAL_NAME" && -n $MD5 ]]; then check_md5=yes; fi

    if reuse_earlier_download "$zip" "$check_md5"; then return 0; fi
    mkdir -p "$DOWNLOADS" || {
        REASON="cannot create $DOWNLOADS"
        return 1
    }

    opts=(-fL --retry 3 --connect-timeout 30 -C - -o "$part")
    if [[ -t 2 ]]; then opts+=(--progress-bar); else opts+=(-sS); fi
    if [[ $url == https://www.kaggle.com/* || $url == https://kaggle.com/* ]]; then
        kaggle_credentials
        if [[ -n $KUSER ]]; then
            CURL_AUTH=yes
            log "using the Kaggle credentials of '$KUSER' (from $KSRC)"
        fi
    fi
    if [[ -s $part ]]; then
        log "resuming $part ($(wc -c <"$part" | tr -d ' ') bytes so far) from $url"
    else
        log "downloading $url to $part"
    fi
    run_curl "${opts[@]}" "$url" || rc=$?
    if [[ $rc -eq 33 ]]; then
        # The server cannot resume: start over.
        log "the server cannot resume $part; downloading it again from the start"
        rm -f "$part"
        rc=0
        run_curl "${opts[@]}" "$url" || rc=$?
    fi
    if [[ $rc -ne 0 ]]; then
        # A .part that was already complete makes some servers answer 416 to -C -.
        if [[ -s $part ]] && unzip -tq "$part" >/dev/null 2>&1; then
            log "$part was already complete"
        else
            REASON=$(curl_reason "$rc")
            if [[ -s $part ]]; then REASON="$REASON; kept $part to resume later"; fi
            return 1
        fi
    fi
    mv -f "$part" "$zip" || {
        REASON="cannot rename $part"
        return 1
    }
    if ! verify_archive "$zip" "$check_md5"; then
        rm -f "$zip" # a bad download must not be reused; a re-run fetches it again
        REASON="downloaded file unusable ($REASON); deleted it"
        return 1
    fi
    ARCHIVE=$zip
    return 0
}

# Step 3: the official file from Google Drive through gdown; always md5-checked.
try_gdown() {
    local zip="$DOWNLOADS/$OFFICIAL_NAME" part gdown help rc=0 check_md5=no
    local -a args
    part="$zip.part"
    if [[ ${CELEBA_NO_GDOWN:-0} == 1 ]]; then
        REASON="skipped (CELEBA_NO_GDOWN=1)"
        return 1
    fi
    if [[ -n $MD5 ]]; then check_md5=yes; fi
    if reuse_earlier_download "$zip" "$check_md5"; then return 0; fi
    if command -v gdown >/dev/null 2>&1; then
        gdown=$(command -v gdown)
    elif [[ -x $SCRIPT_DIR/.venv/bin/gdown ]]; then
        gdown=$SCRIPT_DIR/.venv/bin/gdown
    else
        REASON="gdown is not installed (install it with: python3 -m pip install gdown, then re-run)"
        return 1
    fi
    mkdir -p "$DOWNLOADS" || {
        REASON="cannot create $DOWNLOADS"
        return 1
    }
    args=("https://drive.google.com/uc?id=$GDRIVE_ID" -O "$part")
    # gdown writes to its own temporary file and renames it to $part when done;
    # --continue (recent gdown) resumes that temporary file.
    help=$("$gdown" --help 2>&1 || true)
    if [[ $help == *--continue* ]]; then args+=(--continue); fi
    if [[ ! -t 2 ]]; then args+=(--quiet); fi
    log "downloading $OFFICIAL_NAME from Google Drive (id $GDRIVE_ID) with $gdown"
    "$gdown" "${args[@]}" || rc=$?
    if [[ $rc -ne 0 || ! -s $part ]]; then
        REASON="gdown failed (exit $rc; Google Drive often refuses this popular file for a day: 'too many users')"
        return 1
    fi
    mv -f "$part" "$zip" || {
        REASON="cannot rename $part"
        return 1
    }
    if ! verify_archive "$zip" "$check_md5"; then
        rm -f "$zip"
        REASON="downloaded file unusable ($REASON); deleted it"
        return 1
    fi
    ARCHIVE=$zip
    return 0
}

usage() {
    # Print the comment header above.
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

main() {
    local local_zip="${CELEBA_ZIP:-}" n d check_md5
    local -a tried=()
    case ${1:-} in
    -h | --help)
        usage
        return 0
        ;;
    esac
    if [[ $# -gt 1 ]]; then
        usage >&2
        die "at most one argument (a local archive) is accepted"
    fi
    if [[ $# -eq 1 ]]; then local_zip=$1; fi

    TARGET=${CELEBA_DIR:-$SCRIPT_DIR/datasets/extracted}
    TARGET=${TARGET%/}
    PARENT=$(dirname "$TARGET")
    DOWNLOADS=${CELEBA_DOWNLOADS:-$PARENT/downloads}
    URL=${CELEBA_URL:-$DEFAULT_KAGGLE_URL}
    GDRIVE_ID=${CELEBA_GDRIVE_ID:-$DEFAULT_GDRIVE_ID}
    # Unset: the official md5. Set but empty: no md5 check.
    MD5=$(printf '%s' "${CELEBA_MD5-$DEFAULT_MD5}" | tr 'A-F' 'a-f')
    EXPECTED=${CELEBA_EXPECTED:-$DEFAULT_EXPECTED}
    [[ $EXPECTED =~ ^[0-9]+$ ]] || die "CELEBA_EXPECTED must be a number, not '$EXPECTED'"

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # A run killed hard (kill -9, power loss) cannot clean up after itself; its
    # temporary folders are only ever partial, so remove them now.
    for d in "$PARENT"/.extract-*; do
        if [[ -d $d ]]; then
            log "removing $d, left over from an interrupted run"
            rm -rf "$d"
        fi
    done

    if [[ -d $TARGET/$IMAGES ]]; then
        n=$(count_jpgs "$TARGET/$IMAGES")
        if [[ $n -eq $EXPECTED ]]; then
            log "CelebA is already there: $n images in $TARGET/$IMAGES; nothing to do"
            return 0
        fi
        warn "$TARGET/$IMAGES holds $n images, expected $EXPECTED; getting CelebA again" \
            "(the folder is replaced only once a complete new copy is extracted)"
    fi

    # 1. A local archive: use it or fail, never fall through to the network.
    if [[ -n $local_zip ]]; then
        [[ -f $local_zip ]] || die "no such archive: $local_zip"
        check_md5=no
        if [[ -n ${CELEBA_MD5:-} ]] ||
            [[ $(basename "$local_zip") == "$OFFICIAL_NAME" && -n $MD5 ]]; then
            check_md5=yes
        fi
        log "using the local archive $local_zip"
        if ! verify_archive "$local_zip" "$check_md5"; then
            if [[ $REASON == *"md5 mismatch"* ]]; then
                REASON="$REASON (for an archive that is not the official file, set CELEBA_MD5= to skip this check)"
            fi
            die "$REASON"
        fi
        extract_and_install "$local_zip" || die "$REASON"
        return 0
    fi

    # 2. Kaggle (or CELEBA_URL) over curl.
    if try_curl; then
        extract_and_install "$ARCHIVE" || die "$REASON"
        log "kept the download $ARCHIVE (delete it to free space; a re-run would reuse it)"
        return 0
    fi
    tried+=("curl $URL: $REASON")

    # 3. Google Drive through gdown.
    if try_gdown; then
        extract_and_install "$ARCHIVE" || die "$REASON"
        log "kept the download $ARCHIVE (delete it to free space; a re-run would reuse it)"
        return 0
    fi
    tried+=("Google Drive id $GDRIVE_ID via gdown: $REASON")

    rmdir "$DOWNLOADS" 2>/dev/null || true # do not leave an empty folder behind
    err "could not get CelebA from any source. Tried:"
    for d in "${tried[@]}"; do
        printf '  - %s\n' "$d" >&2
    done
    {
        printf 'Download img_align_celeba.zip by hand, from the official CelebA page\n'
        printf '  https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html ("Align&Cropped Images")\n'
        printf 'or from Kaggle (https://www.kaggle.com/datasets/jessicali9530/celeba-dataset), then run:\n'
        printf '  CELEBA_ZIP=/path/to/img_align_celeba.zip make download\n'
    } >&2
    return 1
}

# Run only when executed, so that tests can source the file and call its functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
