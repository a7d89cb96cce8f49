#!/usr/bin/env bash
# Install the real data sets that mentor's loaders read offline (they never download).
# Safe to run again: each step is skipped when its files are already there.
#   - Debian packages dataset-fashion-mnist and fortunes (apt-get install)
#   - r-cran-mlbench, only unpacked (apt-get download + dpkg -x) into
#     ${MENTOR_DATA_DIR:-$HOME/.cache/mentor}/mlbench: installing it would pull in R.
# Set MLBENCH_DEB=/path/to/r-cran-mlbench_*.deb to unpack a .deb you already have.
set -euo pipefail

DEST="${MENTOR_DATA_DIR:-$HOME/.cache/mentor}/mlbench"
RDA="$DEST/usr/lib/R/site-library/mlbench/data/LetterRecognition.rda"
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

if [ -f "$RDA" ]; then
  echo "ok: LetterRecognition already at $RDA"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  chmod 777 "$tmp"  # apt-get download runs as the _apt user, which must be able to write here
  deb="${MLBENCH_DEB:-}"
  if [ -z "$deb" ]; then
    apt_update
    (cd "$tmp" && apt-get download -qq r-cran-mlbench)
    deb="$(ls "$tmp"/r-cran-mlbench_*.deb)"
  fi
  mkdir -p "$DEST"
  dpkg -x "$deb" "$DEST"
  if [ ! -f "$RDA" ]; then
    echo "error: $deb did not contain $RDA; check the package r-cran-mlbench." >&2
    exit 1
  fi
  echo "unpacked: LetterRecognition at $RDA"
fi
