#!/usr/bin/env bash
# System packages a fresh Debian 12 machine lacks for ManiSkill CPU rendering.
# SAPIEN needs a Vulkan device; on a machine without a GPU that is Mesa's llvmpipe,
# and only Mesa 25 (bookworm-backports) works: Debian 12's own Mesa 22.3 does not.
# Idempotent: does nothing when a recent Mesa Vulkan driver is already installed.
set -euo pipefail

have_mesa() {
  local v
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  [ -n "$v" ] && dpkg --compare-versions "$v" ge 25 && dpkg-query -W libvulkan1 >/dev/null 2>&1 || return 1
}

if have_mesa; then
  echo "setup_system: Mesa $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) and libvulkan1 already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | $SUDO tee /etc/apt/sources.list.d/backports.sources >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq -t bookworm-backports libvulkan1 mesa-vulkan-drivers
echo "setup_system: installed Mesa $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
