#!/usr/bin/env bash
# Builds clusterd and clusterctl of the previous release, v0.1.0, for the upgrade tests, and prints
# the folder of the two binaries. The release is found by its tag, else by its commit (a clone may
# not carry tags); it is checked out as a git worktree in target/v0.1.0/src and built into
# target/v0.1.0/target once (a few minutes); later runs reuse it. Concurrent callers wait for each
# other. docs/upgrades.md, "Tests".
set -euo pipefail
cd "$(dirname "$0")/.."
tag=v0.1.0
commit=99d889580de0eae7cac037c71c1c7b021c07c244
base=target/v0.1.0
mkdir -p "$base"
exec 9>"$base/build.lock"
flock 9

if found=$(git rev-parse --verify --quiet "$tag^{commit}"); then
    [ "$found" = "$commit" ] || { echo "tag $tag points at $found, expected $commit" >&2; exit 1; }
elif ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "neither tag $tag nor commit $commit is in this clone: fetch the history (git fetch --unshallow)" >&2
    exit 1
fi
src="$base/src"
if [ "$(git -C "$src" rev-parse HEAD 2>/dev/null || true)" != "$commit" ]; then
    rm -rf "$src"
    git worktree prune
    git worktree add --detach --force "$src" "$commit" >&2
fi
bin="$PWD/$base/target/debug"
if [ ! -x "$bin/clusterd" ] || [ ! -x "$bin/clusterctl" ]; then
    echo "building clusterd $tag ($commit) into $base/target" >&2
    (cd "$src" && env -u CARGO_TARGET_DIR -u RUSTFLAGS cargo build --locked -p clusterd -p clusterctl --target-dir ../target >&2)
fi
[ "$("$bin/clusterd" --version)" = "clusterd 0.1.0" ] || { echo "$bin/clusterd is not clusterd 0.1.0" >&2; exit 1; }
echo "$bin"
