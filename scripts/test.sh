#!/usr/bin/env bash
# The test command of the README: installs what the tests need, checks formatting and lints, runs
# the short versions of the benchmarks and the nemesis, then every test. Run as root: the
# namespace, loop-device and lab tests need it (with CI=true they fail rather than skip).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --all-targets --locked
bin=target/debug

export CLUSTERD_BIN="$PWD/$bin/clusterd" CLUSTERCTL_BIN="$PWD/$bin/clusterctl"

echo "== the previous release, v0.1.0, for the upgrade tests (built once into target/v0.1.0)"
previous=$(scripts/build-previous-release.sh)
export CLUSTERD_V0_1_BIN="$previous/clusterd" CLUSTERCTL_V0_1_BIN="$previous/clusterctl"
echo "== short benchmarks (the full ones: docs/benchmarks.md)"
"$bin/clusterbench" --quick
"$bin/clusterlab" --name cibench down >/dev/null 2>&1 || true
"$bin/clusterlab" --name cibench bench-keepalived --trials 2 --advert-int 1 --split-hold 2
"$bin/clusterlab" --name cifail bench-failover --quick
"$bin/clusterlab" --name cipromo bench-promotion --quick
"$bin/clusterlab" --name ciscale bench-scale --quick

echo "== the Debian package under systemd as PID 1 (short; the full one: scripts/test-systemd.sh)"
CLUSTERD_DEB_BIN_DIR="$bin" scripts/test-systemd.sh --quick

echo "== tests"
cargo nextest run --workspace --locked --no-fail-fast
