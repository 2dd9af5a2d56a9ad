#!/usr/bin/env bash
# Installs a WebGPU-capable Vulkan driver for machines without a GPU: Mesa's lavapipe from
# bookworm-backports (Mesa 25; bookworm's own Mesa 22.3 is rejected by Dawn). Debian bookworm
# only; idempotent. Needs root (or sudo).
set -euo pipefail
if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && ldconfig -p | grep -q libvulkan.so.1; then
    mesa=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
    case "$mesa" in 2[5-9].*|[3-9]*) echo "lavapipe already installed (mesa-vulkan-drivers $mesa)"; exit 0 ;; esac
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
. /etc/os-release
if [ "${VERSION_CODENAME:-}" != "bookworm" ]; then
    echo "setup-lavapipe.sh knows Debian bookworm only (this is ${PRETTY_NAME:-unknown});" >&2
    echo "install Mesa >= 25 with lavapipe (mesa-vulkan-drivers) and libvulkan1 yourself" >&2
    exit 1
fi
src=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # same mirror and keyring as the machine's bookworm entry
    uri=$(grep -hs -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}')
    key=$(grep -hs -m1 '^Signed-By:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}')
    $sudo tee "$src" >/dev/null <<SRC
Types: deb
URIs: ${uri:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main
Signed-By: ${key:-/usr/share/keyrings/debian-archive-keyring.gpg}
SRC
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -t bookworm-backports \
    mesa-vulkan-drivers libvulkan1 >/dev/null
echo "lavapipe installed (mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers))"
