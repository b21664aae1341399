#!/usr/bin/env bash
# Installs Debian packages by name (runs `apt-get update` once per machine first). Needs root.
set -euo pipefail
missing=()
for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0
stamp=/var/lib/apt/periodic/livestream-update-stamp
if [ ! -f "$stamp" ]; then apt-get update -q >&2 && mkdir -p "$(dirname "$stamp")" && touch "$stamp"; fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
