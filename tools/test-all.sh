#!/usr/bin/env bash
# The whole vpool test suite, as CI runs it (.ci/run calls this script).
# Installs the system packages the tests need, idempotently, then runs:
# formatting and lint checks, unit/property/crash/corruption/CLI tests, and a
# short fuzz run of every decoder target. Run as root on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the build and tests need: OpenSSL (TLS for NBD), real NBD clients (qemu-io, qemu-img,
# nbdinfo, nbdcopy and nbdfuse from libnbd-bin, fio), FUSE, the filesystem tools used on top,
# the container engines the volume plugin is tested with (busybox-static makes their image),
# Prometheus (its server scrapes the daemon's metrics; promtool checks them), and a single-node Ceph
# cluster for RBD members (tools/ceph-test-cluster: monitor, OSD, the rbd tool, librbd).
PACKAGES=(ca-certificates pkg-config libssl-dev openssl qemu-utils libnbd-bin fio fuse3 e2fsprogs xfsprogs util-linux mount
    docker.io containerd podman runc busybox-static umoci prometheus ceph-mon ceph-osd ceph-common librbd1 uuid-runtime)
FUZZ_SECONDS="${FUZZ_SECONDS:-15}"

log() { printf '\n==> %s\n' "$*"; }

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy"
cargo clippy --all-targets -- -D warnings

log "cargo test"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
timeout 3600 cargo test 2>&1 | tee "$results"
test_status=${PIPESTATUS[0]}
if [ "$test_status" -ne 0 ]; then
    echo "cargo test failed (exit $test_status)"
    exit "$test_status"
fi

log "fuzz targets (${FUZZ_SECONDS}s each)"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    timeout 1200 cargo install cargo-fuzz --locked
fi
fuzzed=0
for target in decode_label decode_superblock decode_node decode_catalog decode_nbd decode_control decode_plugin decode_filter decode_stream; do
    (cd fuzz && RUSTC_BOOTSTRAP=1 timeout $((FUZZ_SECONDS + 600)) \
        cargo fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -n 3)
    fuzzed=$((fuzzed + 1))
done

passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$results" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$results" | awk '{s += $1} END {print s + 0}')
echo
echo "summary: $((passed + fuzzed)) passed, $failed failed"
