#!/usr/bin/env bash
# The full upgrade test (docs/upgrades.md, "Tests"): builds v0.1.0 from its commit, writes the
# fixtures of its formats again with its own code and checks they are the committed ones
# (compat/v0.1.0/fixtures.json), then runs every upgrade test ROUNDS times (default 3): the format
# tests, the loopback upgrades and, as root, the lab upgrade with the observer. CI runs each once
# (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
bin=$(scripts/build-previous-release.sh)
export CLUSTERD_V0_1_BIN="$bin/clusterd" CLUSTERCTL_V0_1_BIN="$bin/clusterctl"

echo "== the fixtures are v0.1.0's own bytes"
(cd compat/generate-v0.1.0 && cargo build --locked --target-dir ../../target/v0.1.0/target)
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
target/v0.1.0/target/debug/generate-v010-fixtures target/v0.1.0/src "$fresh"
diff -u compat/v0.1.0/fixtures.json "$fresh"

echo "== upgrade tests, $rounds rounds"
filter='test(v0_1) | test(upgrade) | binary(upgrade) | binary(compat_v0_1)'
for round in $(seq "$rounds"); do
    echo "-- round $round"
    cargo nextest run --workspace --locked --no-fail-fast -E "$filter"
done
