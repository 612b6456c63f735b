#!/usr/bin/env bash
# What the metrics listener costs an idle node: a 3-node cluster on loopback (127.0.151.x), once
# without `metrics`, once with `metrics` + `status_page` and no scrape, once scraped every
# SCRAPE seconds (Prometheus' default is 15 s; 1 s here to make the cost visible). For each: 10 s to
# settle, then RSS and utime+stime of every clusterd over WINDOW seconds. Figures: docs/benchmarks.md.
#
#   scripts/bench-metrics-idle.sh [target/release]     (default: target/release; needs curl)
set -euo pipefail
bin="${1:-target/release}"
window="${WINDOW:-20}"
scrape="${SCRAPE:-1}"
ticks="$(getconf CLK_TCK)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/clusterctl" ca init --dir "$work/pki" >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

run() {
  local mode="$1"
  pids=()
  for i in 1 2 3; do
    local dir="$work/$mode/n$i"
    mkdir -p "$dir"
    [ -f "$work/pki/n$i.crt" ] || "$bin/clusterctl" ca issue "n$i" --ip "127.0.151.1$i" --dir "$work/pki" >/dev/null
    {
      if [ "$mode" != off ]; then
        echo "metrics = \"127.0.151.1$i:9464\""
        echo "status_page = true"
      fi
      echo "node = \"n$i\""
      echo "listen = \"127.0.151.1$i:7400\""
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
    for _ in $(seq 100); do [ -S "$work/$mode/n$i/clusterd.sock" ] && break; sleep 0.05; done
  done
  "$bin/clusterctl" --socket "$work/$mode/n1/clusterd.sock" cluster init >/dev/null
  for i in 2 3; do
    "$bin/clusterctl" --socket "$work/$mode/n1/clusterd.sock" node add "n$i" "127.0.151.1$i:7400" >/dev/null
  done
  sleep 10
  local before=() scraper=""
  for pid in "${pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  if [ "$mode" = scraped ]; then
    ( while true; do
        for i in 1 2 3; do curl -s -o /dev/null "http://127.0.151.1$i:9464/metrics"; done
        sleep "$scrape"
      done ) &
    scraper="$!"
  fi
  sleep "$window"
  [ -n "$scraper" ] && { kill "$scraper"; wait "$scraper" 2>/dev/null || true; }
  local n=0
  for pid in "${pids[@]}"; do
    local used=$(( $(cpu_ticks "$pid") - before[n] ))
    n=$((n + 1))
    awk -v mode="$mode" -v node="n$n" -v rss="$(rss_kib "$pid")" -v used="$used" -v ticks="$ticks" -v window="$window" \
      'BEGIN { printf "| %s | %s | %.1f | %.2f |\n", mode, node, rss / 1024, 100 * used / ticks / window }'
  done
  for pid in "${pids[@]}"; do kill "$pid"; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

echo "| listener | node | RSS MiB | CPU % of a core over ${window} s |"
echo "|---|---|---|---|"
run off
run on
run scraped
