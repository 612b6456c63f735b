#!/usr/bin/env bash
# Installs the Debian packages the tests, the demo and the benchmarks need (idempotent; root).
set -euo pipefail
packages=(
  iproute2 iputils-ping iputils-arping nftables   # namespaces, veth, partitions
  e2fsprogs util-linux lvm2 psmisc procps perl    # loop devices, mounts, process tools
  resource-agents libxml2-utils                   # ocf:heartbeat:* agents, ocf-tester (xmllint)
  fence-agents                                    # fence_dummy
  keepalived                                      # the failover anchor in the lab
  etcd-server etcd-client                         # the key-value anchor in the benchmark
  systemd                                         # systemd-analyze verify, systemd-tmpfiles
  chromium chromium-driver                        # the status page in a real browser (lab test)
  curl                                            # the example alert hook, WebDriver calls, nspawn test
  dpkg-dev binutils lintian                       # scripts/build-deb.sh: dpkg-shlibdeps, strip; lintian
  debootstrap systemd-container                   # scripts/test-systemd.sh: Debian roots, systemd-nspawn
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packaged etcd must not run as a service of this machine: the benchmark starts its own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
# promtool (`promtool check metrics` in the metrics test) without the Prometheus server: the
# Debian package also brings a service, a system user and a dozen JavaScript packages, so only its
# promtool binary is taken out of the .deb (checked by apt's signatures like any download).
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool from Debian's prometheus package"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1 \
     || { apt-get update -qq && apt-get download -qq prometheus >/dev/null; })
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
  install -m 0755 "$work/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$work"
  trap - EXIT
fi
if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
