#!/usr/bin/env bash
# Installs Debian packages by name (runs `apt-get update` once per machine first). Needs root.
# Waits up to 5 minutes for the apt lock another process holds; stops with an error if the update fails.
set -euo pipefail
missing=()
for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0
lock_wait=(-o DPkg::Lock::Timeout=300)
stamp=/var/lib/apt/periodic/livestream-update-stamp
if [ ! -f "$stamp" ]; then
  if ! apt-get "${lock_wait[@]}" update -q >&2; then
    echo "apt-install: 'apt-get update' failed (see above); not installing ${missing[*]}" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$stamp")"
  touch "$stamp"
fi
DEBIAN_FRONTEND=noninteractive apt-get "${lock_wait[@]}" install -y -q --no-install-recommends "${missing[@]}" >&2
