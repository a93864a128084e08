#!/usr/bin/env bash
# Installs the Debian packages napari needs on a headless machine (the README lists them):
# a virtual X server and the xcb libraries Qt 6 loads. Does nothing when they
# are present; when they are missing and we are not root, says what to install.
set -euo pipefail
pkgs=(xvfb libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libxcb-cursor0 libgl1 libegl1 libdbus-1-3 libfontconfig1)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
