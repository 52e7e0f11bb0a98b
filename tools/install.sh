#!/bin/bash
# Install vpool: the binary, the systemd unit, shell completions (bash, zsh,
# fish) and man pages generated from the command-line definitions.
#
#   sudo tools/install.sh                 # build (release) and install under /usr/local
#   sudo tools/install.sh --enable        # ... and enable the service at boot
#   tools/install.sh --destdir /tmp/pkg   # stage into a directory (packaging)
#
# Options: --prefix DIR (default /usr/local), --destdir DIR (default none),
# --binary PATH (install this binary instead of building), --enable
# (`systemctl enable vpool`; not with --destdir).
#
# Installs:
#   PREFIX/bin/vpool
#   /etc/systemd/system/vpool.service          (ExecStart points at PREFIX/bin/vpool)
#   PREFIX/share/bash-completion/completions/vpool
#   PREFIX/share/zsh/site-functions/_vpool
#   PREFIX/share/fish/vendor_completions.d/vpool.fish
#   PREFIX/share/man/man1/vpool*.1
# Running it again replaces them (idempotent). The service is not started:
# `systemctl start vpool` (or a reboot with --enable) serves the pools the
# state directory /var/lib/vpool lists.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/usr/local
destdir=
binary=
enable=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --destdir) destdir="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --enable) enable=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$binary" ]; then
    command -v cargo >/dev/null || { echo "install.sh: cargo is missing: install Rust (https://rustup.rs) or pass --binary PATH" >&2; exit 1; }
    (cd "$root" && cargo build --release)
    binary="$root/target/release/vpool"
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }
if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or stage with --destdir DIR" >&2
    exit 1
fi

bin="$destdir$prefix/bin"
share="$destdir$prefix/share"
unitdir="$destdir/etc/systemd/system"
install -d "$bin" "$unitdir" "$share/bash-completion/completions" \
    "$share/zsh/site-functions" "$share/fish/vendor_completions.d" "$share/man/man1"
install -m 0755 "$binary" "$bin/vpool"
sed "s|/usr/local/bin/vpool|$prefix/bin/vpool|g" "$root/docs/vpool.service" > "$unitdir/vpool.service"
chmod 0644 "$unitdir/vpool.service"
"$binary" completions bash > "$share/bash-completion/completions/vpool"
"$binary" completions zsh > "$share/zsh/site-functions/_vpool"
"$binary" completions fish > "$share/fish/vendor_completions.d/vpool.fish"
"$binary" manpages "$share/man/man1"
echo "installed vpool $("$binary" --version | awk '{print $2}') into $destdir$prefix (unit: $unitdir/vpool.service)"

if [ -z "$destdir" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$enable" = 1 ]; then
        systemctl enable vpool
        echo "enabled: the daemon starts at boot (now: systemctl start vpool)"
    else
        echo "start it with: systemctl start vpool   (at every boot: systemctl enable vpool)"
    fi
elif [ "$enable" = 1 ]; then
    echo "install.sh: --enable needs systemd (and no --destdir); enable vpool.service by hand" >&2
fi
