#!/usr/bin/env bash
# Install the real data sets that mentor's loaders read offline (they never download).
# Safe to run again: each step is skipped when its files are already there.
#   - Debian packages dataset-fashion-mnist and fortunes (apt-get install)
#   - r-cran-mlbench (LetterRecognition) and r-cran-modeldata (Amazon fine-food reviews), only
#     unpacked (apt-get download + dpkg -x) into ${MENTOR_DATA_DIR:-$HOME/.cache/mentor}/mlbench
#     and .../modeldata: installing them would pull in R.
# Set MLBENCH_DEB / MODELDATA_DEB=/path/to/the.deb to unpack a .deb you already have.
set -euo pipefail

ROOT="${MENTOR_DATA_DIR:-$HOME/.cache/mentor}"
R_LIB="usr/lib/R/site-library"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

updated=0
apt_update() {  # `apt-get update` at most once, and only when something must be fetched
  if [ "$updated" -eq 0 ]; then
    $SUDO apt-get update -qq
    updated=1
  fi
}

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

missing=()
for pkg in dataset-fashion-mnist fortunes; do
  if installed "$pkg"; then echo "ok: $pkg already installed"; else missing+=("$pkg"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_update
  echo "installing: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp"  # apt-get download runs as the _apt user, which must be able to write here

# unpack PACKAGE DEST FILE [DEB]: dpkg -x the package's .deb into DEST unless DEST/FILE exists
unpack() {
  local pkg="$1" dest="$2" file="$2/$3" deb="${4:-}"
  if [ -f "$file" ]; then
    echo "ok: $pkg already unpacked at $dest"
    return
  fi
  if [ -z "$deb" ]; then
    apt_update
    (cd "$tmp" && apt-get download -qq "$pkg")
    deb="$(ls "$tmp"/"${pkg}"_*.deb)"
  fi
  mkdir -p "$dest"
  dpkg -x "$deb" "$dest"
  if [ ! -f "$file" ]; then
    echo "error: $deb did not contain $file; check the package $pkg." >&2
    exit 1
  fi
  echo "unpacked: $pkg at $dest"
}

unpack r-cran-mlbench "$ROOT/mlbench" "$R_LIB/mlbench/data/LetterRecognition.rda" "${MLBENCH_DEB:-}"
unpack r-cran-modeldata "$ROOT/modeldata" "$R_LIB/modeldata/data/Rdata.rdx" "${MODELDATA_DEB:-}"
