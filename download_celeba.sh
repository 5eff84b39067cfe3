#!/usr/bin/env bash
# download_celeba.sh - put the aligned CelebA images (202,599 JPEGs, 178x218) into
# datasets/extracted/img_align_celeba/, verified, from the first source that works.
#
# Usage:
#   ./download_celeba.sh                         # try the sources below, in order
#   ./download_celeba.sh path/to/archive.zip     # use an archive you already have
#   CELEBA_ZIP=path/to/archive.zip make download # same, through make
#
# Sources, in order; each download resumes its own $CELEBA_DOWNLOADS/celeba-NAME.zip.part:
#   local   the archive given as the argument or CELEBA_ZIP (if it fails, the script stops)
#   kaggle  Kaggle's API over curl: anonymous, then username/key, then an API token (bearer)
#   gdrive  the official file on Google Drive, through gdown (on PATH or in ./.venv/bin)
#   mirror  Udacity's copy of the official file, over curl
# gdrive and mirror must match the official md5 00d2c5bc6d35e252742224ab0c1e8fcb. Every archive
# must hold exactly CELEBA_EXPECTED images img_align_celeba/NNNNNN.jpg (any folders above,
# __MACOSX ignored) and pass its md5, or `unzip -t` where no md5 is known. After a free-space
# check, the images (and Kaggle's CSVs) are extracted flat into a temporary folder beside the
# image folder, on its filesystem, and renamed into place with a .complete marker (source,
# md5, count) that re-runs trust. A symlinked image folder is followed; one without a marker is
# adopted if it holds exactly that many non-empty NNNNNN.jpg. Ctrl-C, kill or a full disk
# leave the image folder as it was. Exit status: 0 done, 1 failed, 130/143 SIGINT/SIGTERM.
#
# Environment variables (all optional):
#   CELEBA_ZIP         local archive (the same as the first argument, which wins)
#   CELEBA_DIR         target folder, default datasets/extracted beside this script: images
#                      go to $CELEBA_DIR/img_align_celeba/, Kaggle's CSVs to $CELEBA_DIR/
#   CELEBA_DOWNLOADS   where downloads are kept; default: "downloads" beside $CELEBA_DIR
#   CELEBA_URL         URL of the kaggle source, e.g. file:///tmp/x.zip (credentials only
#                      ever go to kaggle.com)
#   CELEBA_GDRIVE_ID   Google Drive file id; default 0B7EVK8r0v71pZjFTYXZWM3FlRnM
#   CELEBA_MIRROR_URL  URL of the mirror source; empty skips it
#   CELEBA_MD5         md5 that every source must match; empty (CELEBA_MD5=): no md5 checks
#   CELEBA_NO_GDOWN    1 skips the gdrive source
#   CELEBA_EXPECTED    number of images; default 202599 (tests use tiny archives)
#   KAGGLE_USERNAME, KAGGLE_KEY, KAGGLE_API_TOKEN, KAGGLE_CONFIG_DIR, XDG_CONFIG_HOME: as
#                      for the kaggle CLI; kaggle.json and access_token are read from
#                      $KAGGLE_CONFIG_DIR (default ~/.kaggle), then ~/.config/kaggle
# Needs bash, coreutils, unzip and curl.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEFAULT_KAGGLE_URL=https://www.kaggle.com/api/v1/datasets/download/jessicali9530/celeba-dataset
DEFAULT_MIRROR_URL=https://s3-us-west-1.amazonaws.com/udacity-dlnfd/datasets/celeba.zip
OFFICIAL_MD5=00d2c5bc6d35e252742224ab0c1e8fcb
DOWNLOAD_BYTES=7200 DISK_BYTES=9300 # per image: in the zip, and on disk with block slack
JPG='[0-9][0-9][0-9][0-9][0-9][0-9].jpg'
TMP="" REASON="" SUM="" ARCHIVE="" MADE=() XARGS=() AUTHS=()

log() { printf 'download_celeba: %s\n' "$*"; }
warn() { printf 'download_celeba: warning: %s\n' "$*" >&2; }
die() { printf 'download_celeba: error: %s\n' "$*" >&2 && exit 1; }
cleanup() { # on any exit: put a moved-aside image folder back, remove what this run made
    if [[ -n $TMP && -d $TMP/old && ! -e $REAL ]]; then mv "$TMP/old" "$REAL"; fi
    if [[ -n $TMP ]]; then rm -rf "$TMP"; fi
    for d in ${MADE[@]+"${MADE[@]}"}; do rmdir "$d" 2>/dev/null || true; done
}
md5_for() { printf '%s' "${CELEBA_MD5-$1}" | tr 'A-F' 'a-f'; } # CELEBA_MD5, even empty, wins
md5_of() { local s && s=$(md5sum <"$1" 2>/dev/null || md5 -q <"$1") && printf '%s' "${s%% *}"; }
dev_of() { stat -c %d "$1" 2>/dev/null || stat -f %d "$1"; }

existing() { # $1 or its nearest existing parent
    local d=$1 && while [[ ! -d $d ]]; do d=$(dirname "$d"); done && printf '%s' "$d"
}
check_free() { # check_free DIR BYTES
    local d=$1 _fs _size _used avail
    read -r _fs _size _used avail _ < <(df -Pk "$d" | tail -n 1)
    if [[ $avail =~ ^[0-9]+$ ]] && ((avail * 1024 < $2)); then
        die "not enough free space on the filesystem of $d: need $((($2 + 1048575) / 1048576)) MB, have $((avail / 1024)) MB"
    fi
}
need_space() { # need_space DOWNLOAD_BYTES: room for that download and for the images
    local dl=$1 img=$((EXPECTED * DISK_BYTES)) d t
    d=$(existing "$(dirname "$REAL")") t=$(existing "$DOWNLOADS")
    if ((dl > 0)) && [[ $(dev_of "$d") == "$(dev_of "$t")" ]]; then img=$((img + dl)) dl=0; fi
    check_free "$d" "$img"
    if ((dl > 0)); then check_free "$t" "$dl"; fi
}

# verify ZIP MD5: REASON and 1 unless ZIP holds exactly EXPECTED distinct img_align_celeba/NNNNNN.jpg
# outside __MACOSX and matches MD5 if one is given, else passes `unzip -t`. Sets SUM and XARGS.
verify() {
    local zip=$1 want=$2 all names n u out
    log "checking $zip ..."
    all=$(unzip -Z1 "$zip" 2>/dev/null) || { REASON="$zip is not a valid zip archive" && return 1; }
    names=$(grep -v '^__MACOSX/' <<<"$all" | grep -E 'img_align_celeba/[0-9]{6}\.jpg$' || true)
    n=$(grep -c . <<<"$names" || true) u=$(grep -o '[^/]*$' <<<"$names" | sort -u | grep -c . || true)
    if ((n != EXPECTED)); then
        REASON="$zip holds $n images, expected $EXPECTED (img_align_celeba/NNNNNN.jpg outside __MACOSX)"
        return 1
    fi
    ((u == n)) || { REASON="$zip holds $((n - u)) duplicate image names" && return 1; }
    XARGS=() && if grep -qE '^__MACOSX/.*img_align_celeba/[0-9]{6}\.jpg$' <<<"$all"; then XARGS=(-x '__MACOSX/*'); fi
    SUM=$(md5_of "$zip" | tr 'A-F' 'a-f')
    if [[ -n $want && $SUM != "$want" ]]; then
        REASON="md5 mismatch for $zip: expected $want, got $SUM" && return 1
    elif [[ -n $want ]]; then
        log "md5 OK ($SUM)"
    elif ! out=$(unzip -tq "$zip" 2>&1); then
        REASON="$zip is not a valid zip archive or is corrupt: $(tail -n 1 <<<"$out")" && return 1
    fi
}

# install ZIP SOURCE: extract flat into a temporary folder beside the image folder (its filesystem,
# checked), add the marker, then one rename into place; Kaggle's CSVs go to TARGET.
install() {
    local zip=$1 parent n rc=0
    parent=$(dirname "$REAL")
    if [[ ! -d $parent ]]; then mkdir -p "$parent" && MADE+=("$parent"); fi
    TMP=$(mktemp -d "$parent/.extract-XXXXXX")
    if [[ -e $REAL && $(dev_of "$REAL") != "$(dev_of "$TMP")" ]]; then
        die "$REAL is a mount point, which a rename cannot replace; set CELEBA_DIR to a folder inside it"
    fi
    log "extracting $zip into $TMP (a minute or two for the full data set) ..."
    unzip -q -j -n "$zip" "*img_align_celeba/$JPG" ${XARGS[@]+"${XARGS[@]}"} -d "$TMP/img" ||
        die "unzip failed on $zip (disk full?); nothing was installed"
    n=$(find "$TMP/img" -type f | wc -l)
    ((n == EXPECTED)) || die "extracted $((n)) images from $zip, expected $EXPECTED"
    unzip -q -j -n "$zip" '*.csv' -x '__MACOSX/*' -d "$TMP/csv" 2>/dev/null || rc=$?
    ((rc == 0 || rc == 11)) || die "unzip failed on the CSV files of $zip (disk full?)" # 11: none
    printf 'source=%s\nmd5=%s\ncount=%s\ndate=%s\n' "$2" "$SUM" "$n" "$(date -u +%FT%TZ)" >"$TMP/img/.complete"
    if [[ -e $REAL ]]; then mv "$REAL" "$TMP/old"; fi
    mv "$TMP/img" "$REAL"
    for f in "$TMP"/csv/*.csv; do if [[ -f $f ]]; then mv -f "$f" "$TARGET/"; fi; done
    log "done: $EXPECTED images in $IMGDIR"
}

kaggle_auths() { # AUTHS+= curl config lines: username/key (basic auth), then an API token (bearer)
    local dirs=("${KAGGLE_CONFIG_DIR:-${HOME:-}/.kaggle}" "${XDG_CONFIG_HOME:-${HOME:-}/.config}/kaggle")
    local user=${KAGGLE_USERNAME:-} key=${KAGGLE_KEY:-} token=${KAGGLE_API_TOKEN:-} d
    for d in "${dirs[@]}"; do
        if [[ (-z $user || -z $key) && -r $d/kaggle.json ]]; then
            user=$(sed -n 's/.*"username"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$d/kaggle.json")
            key=$(sed -n 's/.*"key"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$d/kaggle.json")
        fi
        if [[ -z $token && -r $d/access_token ]]; then token=$(tr -d ' \r\n' <"$d/access_token"); fi
    done
    if [[ -n $user && -n $key ]]; then AUTHS+=("user = \"$user:$key\""); fi
    if [[ -n $token ]]; then AUTHS+=("header = \"Authorization: Bearer $token\""); fi
}

# get_curl URL PART: download into PART, resuming it; at kaggle.com anonymously first, then with
# each credential after an HTTP error. Credentials go in on stdin (--config -), never in argv.
get_curl() {
    local url=$1 part=$2 rc=0 auth u
    local opts=(-fL --retry 3 --connect-timeout 30 -C - -o "$part" --config -)
    if [[ -t 2 ]]; then opts+=(--progress-bar); else opts+=(-sS); fi
    AUTHS=("") && case $url in https://www.kaggle.com/* | https://kaggle.com/*) kaggle_auths ;; esac
    for auth in "${AUTHS[@]}"; do
        case $auth in
        user*) u=${auth#*\"} && log "retrying as Kaggle user ${u%%:*} (username and key)" ;;
        header*) log "retrying with a Kaggle API token (bearer)" ;;
        esac
        if [[ -s $part ]]; then log "resuming $part from $url"; else log "downloading $url to $part"; fi
        rc=0 && curl "${opts[@]}" "$url" <<<"$auth" || rc=$?
        if ((rc == 33)); then # the server cannot resume: start over
            rm -f "$part" && rc=0 && curl "${opts[@]}" "$url" <<<"$auth" || rc=$?
        fi
        if ((rc == 0)); then return 0; elif ((rc != 22)); then break; fi # 22: an HTTP error
    done
    # A .part that was already complete makes some servers answer 416 to -C -.
    if [[ -s $part ]] && unzip -tq "$part" >/dev/null 2>&1; then return 0; fi
    case $rc in
    6 | 7 | 28) REASON="curl exit $rc: no connection (no network, or blocked?)" ;;
    18 | 56) REASON="curl exit $rc: the transfer broke off" ;;
    22) REASON="curl exit 22: an HTTP error (401/403 without Kaggle credentials, 404, 429 quota)" ;;
    *) REASON="curl exit $rc" ;;
    esac
    if [[ -s $part ]]; then REASON="$REASON; kept $part to resume later"; fi
    return 1
}

get_gdown() { # get_gdown GDOWN URL PART
    local args=("$2" -O "$3")
    if [[ $("$1" --help 2>&1 || true) == *--continue* ]]; then args+=(--continue); fi
    if [[ ! -t 2 ]]; then args+=(--quiet); fi
    log "downloading $2 with $1 to $3"
    if "$1" "${args[@]}" && [[ -s $3 ]]; then return 0; fi
    rm -f "$3" # gdown resumes its own temporary file, not this one
    REASON="gdown failed (Google Drive often refuses this popular file for a day: 'too many users')"
    return 1
}

# fetch NAME URL MD5: ARCHIVE= this source's verified $DOWNLOADS/celeba-NAME.zip (an earlier
# download is reused), or REASON and 1. A download that fails verification is deleted.
fetch() {
    local name=$1 url=$2 md5=$3 zip=$DOWNLOADS/celeba-$1.zip gdown="" have
    if [[ -z $url ]]; then
        REASON="skipped (CELEBA_MIRROR_URL is empty)" && return 1
    elif [[ $name == gdrive && ${CELEBA_NO_GDOWN:-0} == 1 ]]; then
        REASON="skipped (CELEBA_NO_GDOWN=1)" && return 1
    elif [[ $name == gdrive ]] && ! gdown=$(command -v gdown || ls "$SCRIPT_DIR/.venv/bin/gdown" 2>/dev/null); then
        REASON="gdown is not installed (python3 -m pip install gdown, then re-run)" && return 1
    fi
    if [[ -f $zip ]]; then
        log "found an earlier download, $zip"
        if verify "$zip" "$md5"; then ARCHIVE=$zip && return 0; fi
        warn "$REASON; deleting it and downloading again" && rm -f "$zip"
    fi
    have=$({ wc -c <"$zip.part"; } 2>/dev/null || echo 0)
    need_space $((EXPECTED * DOWNLOAD_BYTES > have ? EXPECTED * DOWNLOAD_BYTES - have : 0))
    if [[ ! -d $DOWNLOADS ]]; then
        mkdir -p "$DOWNLOADS" || { REASON="cannot create $DOWNLOADS" && return 1; }
        MADE+=("$DOWNLOADS")
    fi
    if [[ -n $gdown ]]; then get_gdown "$gdown" "$url" "$zip.part" || return 1; else
        get_curl "$url" "$zip.part" || return 1; fi
    mv -f "$zip.part" "$zip" || { REASON="cannot rename $zip.part" && return 1; }
    verify "$zip" "$md5" || { rm -f "$zip" && REASON="$REASON; deleted it" && return 1; }
    ARCHIVE=$zip
}

main() {
    case ${1:-} in -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" && return 0 ;; esac
    [[ $# -le 1 ]] || die "at most one argument (a local archive) is accepted; see --help"
    local zip=${1:-${CELEBA_ZIP:-}} n src name url md5 tried=()
    TARGET=${CELEBA_DIR:-$SCRIPT_DIR/datasets/extracted} && TARGET=${TARGET%/}
    IMGDIR=$TARGET/img_align_celeba REAL=$TARGET/img_align_celeba
    DOWNLOADS=${CELEBA_DOWNLOADS:-$(dirname "$TARGET")/downloads}
    EXPECTED=${CELEBA_EXPECTED:-202599}
    [[ $EXPECTED =~ ^[0-9]+$ ]] || die "CELEBA_EXPECTED must be a number, not '$EXPECTED'"
    trap cleanup EXIT && trap 'exit 130' INT && trap 'exit 143' TERM
    if [[ -L $IMGDIR ]]; then
        [[ -d $IMGDIR ]] || die "$IMGDIR is a symlink to a missing folder: create it or remove the link"
        REAL=$(cd -P "$IMGDIR" && pwd) && log "following the symlink $IMGDIR to $REAL"
    fi
    for d in "$(dirname "$REAL")"/.extract-*; do # left by a kill -9
        if [[ -d $d/old && ! -e $REAL ]]; then mv "$d/old" "$REAL"; fi
        if [[ -d $d ]]; then log "removing $d, left over from an interrupted run" && rm -rf "$d"; fi
    done

    if [[ -f $REAL/.complete ]]; then
        n=$(sed -n 's/^count=//p' "$REAL/.complete")
        src=$(sed -n 's/^source=//p' "$REAL/.complete")
        if [[ $n == "$EXPECTED" ]]; then
            log "CelebA is already there: $n images in $IMGDIR (from $src); nothing to do" && return 0
        fi
        warn "$IMGDIR holds $n images, expected $EXPECTED (says its .complete marker); getting CelebA again"
    elif [[ -d $REAL ]]; then # no marker: adopt the folder if it is complete
        n=$(find "$REAL/" -maxdepth 1 -type f -name "$JPG" ! -empty | wc -l) && n=$((n))
        if ((n == EXPECTED)); then
            { printf 'source=existing folder\nmd5=none\ncount=%s\n' "$n" >"$REAL/.complete"; } 2>/dev/null || true
            log "CelebA is already there: $n images in $IMGDIR (a folder without marker); nothing to do"
            return 0
        fi
        warn "$IMGDIR holds $n images, expected $EXPECTED; getting CelebA again (it is replaced only by a complete copy)"
    fi

    if [[ -n $zip ]]; then # a local archive: use it or fail, never fall through to the network
        [[ -f $zip ]] || die "no such archive: $zip"
        need_space 0 && log "using the local archive $zip"
        verify "$zip" "$(md5_for "")" || die "$REASON"
        install "$zip" "local ($zip)"
        return 0
    fi
    for src in "kaggle|${CELEBA_URL:-$DEFAULT_KAGGLE_URL}|" \
        "gdrive|https://drive.google.com/uc?id=${CELEBA_GDRIVE_ID:-0B7EVK8r0v71pZjFTYXZWM3FlRnM}|$OFFICIAL_MD5" \
        "mirror|${CELEBA_MIRROR_URL-$DEFAULT_MIRROR_URL}|$OFFICIAL_MD5"; do
        IFS='|' read -r name url md5 <<<"$src"
        if fetch "$name" "$url" "$(md5_for "$md5")"; then
            install "$ARCHIVE" "$name ($url)"
            log "kept the download $ARCHIVE (delete it to free space)" && return 0
        fi
        tried+=("$name ($url): $REASON")
    done
    printf '%s\n' "download_celeba: error: could not get CelebA from any source. Tried:" "${tried[@]/#/  - }" \
        'Download img_align_celeba.zip by hand, from the official CelebA page' \
        '  https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html ("Align&Cropped Images")' \
        'or from Kaggle (https://www.kaggle.com/datasets/jessicali9530/celeba-dataset), then run:' \
        '  CELEBA_ZIP=/path/to/img_align_celeba.zip make download' >&2
    return 1
}

main "$@"
