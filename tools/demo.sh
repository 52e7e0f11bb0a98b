#!/usr/bin/env bash
# The README's first command: build vpool and serve a demo pool made of image
# files (`vpool quickstart`). The build links the system's OpenSSL (TLS for
# NBD), so its headers are installed first when missing (apt-get, as root or
# through sudo). Arguments go to `vpool quickstart` (e.g. --no-serve).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

need=()
for p in pkg-config libssl-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "==> installing ${need[*]} (needed to build vpool)"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
fi
# The demo directory is made where this is run from (./vpool-demo).
exec cargo run --release --manifest-path "$root/Cargo.toml" -- quickstart "$@"
