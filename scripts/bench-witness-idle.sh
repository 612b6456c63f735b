#!/usr/bin/env bash
# What a witness costs an idle machine: a 3-node cluster on loopback (127.0.152.x) of two package
# nodes and a witness (n3, `role = "witness"` in its node file), no package. 10 s to settle, then RSS
# and utime+stime of every clusterd over WINDOW seconds, first with n1 leading, then with the witness
# leading (it runs the controller and grants the leases then). Target: witness RSS ≤ 15 MB (issue 12).
# Figures: docs/benchmarks.md, "Witness".
#
#   scripts/bench-witness-idle.sh [target/release]     (default: target/release)
set -euo pipefail
bin="${1:-target/release}"
window="${WINDOW:-20}"
ticks="$(getconf CLK_TCK)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
ctl() { "$bin/clusterctl" --socket "$work/n1/clusterd.sock" "$@"; }

"$bin/clusterctl" ca init --dir "$work/pki" >/dev/null
for i in 1 2 3; do
  dir="$work/n$i"
  mkdir -p "$dir"
  "$bin/clusterctl" ca issue "n$i" --ip "127.0.152.1$i" --dir "$work/pki" >/dev/null
  {
    [ "$i" = 3 ] && echo 'role = "witness"'
    echo "node = \"n$i\""
    echo "listen = \"127.0.152.1$i:7400\""
    echo "data_dir = \"$dir/data\""
    echo "socket = \"$dir/clusterd.sock\""
    echo "[tls]"
    echo "ca = \"$work/pki/ca.crt\""
    echo "cert = \"$work/pki/n$i.crt\""
    echo "key = \"$work/pki/n$i.key\""
  } > "$dir/clusterd.toml"
  CLUSTERD_LOG=warn "$bin/clusterd" --config "$dir/clusterd.toml" 2>"$dir/clusterd.log" &
  pids+=("$!")
done
for i in 1 2 3; do
  for _ in $(seq 100); do [ -S "$work/n$i/clusterd.sock" ] && break; sleep 0.05; done
done
ctl cluster init >/dev/null
for i in 2 3; do ctl node add "n$i" "127.0.152.1$i:7400" >/dev/null; done

measure() {
  local leader="$1"
  sleep 10
  local before=() n=0
  for pid in "${pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  sleep "$window"
  for pid in "${pids[@]}"; do
    local used=$(( $(cpu_ticks "$pid") - before[n] ))
    n=$((n + 1))
    local role=package; [ "$n" = 3 ] && role=witness
    awk -v leader="$leader" -v node="n$n" -v role="$role" -v rss="$(rss_kib "$pid")" -v used="$used" -v ticks="$ticks" \
      -v window="$window" 'BEGIN { printf "| %s | %s (%s) | %.1f | %.2f |\n", leader, node, role, rss / 1024, 100 * used / ticks / window }'
  done
}

echo "| leader | node | RSS MiB | CPU % of a core over ${window} s |"
echo "|---|---|---|---|"
measure n1
ctl cluster transfer-leader n3 >/dev/null
measure "n3 (the witness)"
ctl status | grep -q "witness" || { echo "n3 is not shown as a witness" >&2; exit 1; }
