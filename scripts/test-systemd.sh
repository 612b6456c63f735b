#!/usr/bin/env bash
# The Debian package under a real systemd as PID 1 (docs/packaging.md, "Testing"):
#
#   scripts/test-systemd.sh [--quick] [--deb FILE] [--keep-cache]
#
# 1. builds the .deb (scripts/build-deb.sh; CLUSTERD_DEB_BIN_DIR=target/debug packages a debug build),
#    runs lintian (no error or warning allowed) and checks its file list;
# 2. makes a Debian 12 root with debootstrap once (cached in /var/cache/clusterd-systemd-test) and boots
#    three machines m1..m3 from it with `systemd-nspawn --boot`, each on an overlay of the shared,
#    read-only base, each in a network namespace made here and veth'd to a bridge in a "switch"
#    namespace (192.0.2.11-13/24, a client at 192.0.2.200);
# 3. on m1: `apt-get install ./clusterd_*.deb` enables and starts nothing; remove and purge leave only
#    /var/lib/clusterd and the administrator's files; installed again;
# 4. the cluster: PKI made with clusterctl and copied in, `systemctl start clusterd` (Type=notify: the unit
#    is active only after READY), `cluster init`, `node add`; a package (VIP + nginx, the one of
#    docs/getting-started.md); `systemctl status` shows the cgroup tree (daemon and PACKAGE.RESOURCE@NODE,
#    no process in the service's own cgroup); `systemctl kill --kill-whom=main -s KILL` (a crash) and
#    `systemctl restart` of a frozen package adopt the running nginx (same pids); a daemon stopped with
#    SIGSTOP is killed and restarted by systemd's watchdog; journald has the daemon's logs; `systemctl
#    stop` hands the package over, and powering the owner off (its link down, its machine's cgroup
#    killed) moves it.
#
# --quick (CI) skips the watchdog and the frozen-package restart. Everything this script makes (mounts,
# namespaces, cgroups, machines, files) is removed at its end, also on failure; the root namespace's
# interfaces, addresses, routes and firewall are never touched. Root only: skips without root, fails in
# CI (CI=true). systemd-machined cannot run on a host whose PID 1 is not systemd, so machines are not
# registered (`--register=no`), commands enter them with nsenter, and "power off" kills the machine's
# cgroup (its nspawn and every process of the container) instead of `machinectl terminate`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

quick=false
deb=
keep_cache=true
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=true ;;
    --deb) deb=$(realpath "$2"); shift ;;
    --no-cache) keep_cache=false ;;
    --keep-cache) keep_cache=true ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "test-systemd: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then
    echo "test-systemd: needs root and CI=true: refusing to skip" >&2
    exit 1
  fi
  echo "test-systemd: skipping, needs root"
  exit 0
fi
for tool in debootstrap systemd-nspawn lintian nsenter unshare ip curl dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "test-systemd: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done

# Everything below runs in a private mount namespace: the overlays and the tmpfs nspawn needs vanish
# with it, whatever happens.
if [ -z "${CLUSTERD_SYSTEST_INNER:-}" ]; then
  args=()
  $quick && args+=(--quick)
  [ -n "$deb" ] && args+=(--deb "$deb")
  $keep_cache || args+=(--no-cache)
  exec unshare --mount --propagation private env CLUSTERD_SYSTEST_INNER=1 "$0" "${args[@]}"
fi

started=$(date +%s)
log() { printf '== [%3ss] %s\n' "$(($(date +%s) - started))" "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
check() { # check DESCRIPTION COMMAND...: runs the command, fails the test with DESCRIPTION if it fails
  local what=$1
  shift
  "$@" || fail "$what"
}

machines=(m1 m2 m3)
declare -A address=([m1]=192.0.2.11 [m2]=192.0.2.12 [m3]=192.0.2.13)
client=192.0.2.200
vip=192.0.2.100
prefix=cdsys
cache=${CLUSTERD_SYSTEST_CACHE:-/var/cache/clusterd-systemd-test}
work=$(mktemp -d /var/tmp/clusterd-systest.XXXXXX)
cgroup2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
cgroup_v1_systemd=$(awk '$3 == "cgroup" && $4 ~ /name=systemd/ { print $2; exit }' /proc/self/mounts)
[ -n "$cgroup2" ] || fail "no cgroup2 mount on this host"
cgroup_name=clusterd-systest-$$

# ---------------------------------------------------------------------------------------------- cleanup
cleanup() {
  local status=$?
  set +e
  if [ $status -ne 0 ]; then
    save_journals 2>/dev/null
    for machine in "${machines[@]}"; do
      [ -n "$(leader "$machine" 2>/dev/null)" ] && { in_machine "$machine" clusterctl status 2>&1 | head -30; break; }
    done
  fi
  for machine in "${machines[@]}"; do
    power_off "$machine" 2>/dev/null
  done
  for dir in "$cgroup2" "$cgroup_v1_systemd"; do
    [ -n "$dir" ] && [ -d "$dir/$cgroup_name" ] && find "$dir/$cgroup_name" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  for machine in "${machines[@]}"; do
    mountpoint -q "$work/$machine/root" && umount -l "$work/$machine/root"
  done
  for netns in "${machines[@]}" client sw; do
    ip netns del "$prefix-$netns" 2>/dev/null
  done
  mountpoint -q /run/systemd/nspawn && umount -l /run/systemd/nspawn
  if [ $status -ne 0 ]; then
    rm -rf "$repo/target/test-systemd-logs" && mkdir -p "$repo/target/test-systemd-logs"
    for machine in "${machines[@]}"; do
      cp "$work/$machine/journal.txt" "$repo/target/test-systemd-logs/$machine.journal" 2>/dev/null
    done
    echo "journals kept in target/test-systemd-logs/"
    for machine in "${machines[@]}"; do
      [ -f "$work/$machine/journal.txt" ] && { echo "--- last journal lines of $machine ($(wc -l <"$work/$machine/journal.txt") lines)"; grep -v -E 'systemd\[1\]: (Start|Stop|Reach|Finish|Mount|Listen|Creat|Remov|Clos)' "$work/$machine/journal.txt" | tail -40; }
    done
  fi
  rm -rf "$work"
  if ! $keep_cache; then rm -rf "$cache"; fi
  [ $status -eq 0 ] && log "passed" || echo "test-systemd: FAILED (status $status)" >&2
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------- machines
nspawn_pid() { cat "$work/$1/nspawn.pid" 2>/dev/null; }
leader() { # the machine's PID 1, as seen from the host
  local pid
  pid=$(nspawn_pid "$1") || return 1
  awk '{ print $1 }' "/proc/$pid/task/$pid/children" 2>/dev/null
}
in_machine() { # in_machine MACHINE COMMAND...: runs COMMAND inside the machine's namespaces
  local machine=$1
  shift
  nsenter -t "$(leader "$machine")" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb "$@"
}
power_off() { # pulls the plug: the machine's link goes down and every process of it (nspawn included) dies
  local cgroup=$cgroup2/$cgroup_name/$1
  [ -d "$cgroup" ] || return 0
  # The network namespace is this test's and outlives the machine: without this its addresses
  # (the VIP too) would go on answering ARP, unlike a machine without power.
  ip -n "$prefix-$1" link set eth0 down 2>/dev/null
  echo 1 >"$cgroup/cgroup.kill"
  for _ in $(seq 100); do
    grep -q '^populated 0' "$cgroup/cgroup.events" && return 0
    sleep 0.1
  done
  return 1
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

make_base() {
  local base=$cache/base packages=systemd,systemd-sysv,dbus,iproute2,procps,python3,nginx-light,curl,kmod
  if [ -f "$base/.clusterd-base" ] && [ "$(cat "$base/.clusterd-base")" = "$packages" ]; then
    log "base root: $base (cached)"
    return
  fi
  log "base root: debootstrap bookworm into $base (about a minute, once)"
  rm -rf "$base" "$base.tmp"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include="$packages" bookworm "$base.tmp" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
    >"$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log"; fail "debootstrap failed"; }
  # Machines get their address from this test, their package manager needs no network.
  rm -f "$base.tmp/etc/machine-id" && touch "$base.tmp/etc/machine-id"
  echo "$packages" >"$base.tmp/.clusterd-base"
  mv "$base.tmp" "$base"
}

make_network() {
  ip netns add "$prefix-sw"
  ip -n "$prefix-sw" link set lo up
  ip -n "$prefix-sw" link add br0 type bridge
  ip -n "$prefix-sw" link set br0 up
  local node addr
  for node in "${machines[@]}" client; do
    if [ "$node" = client ]; then addr=$client; else addr=${address[$node]}; fi
    ip netns add "$prefix-$node"
    ip -n "$prefix-$node" link set lo up
    ip -n "$prefix-sw" link add "$node" type veth peer name eth0 netns "$prefix-$node"
    ip -n "$prefix-sw" link set "$node" master br0 up
    ip -n "$prefix-$node" addr add "$addr/24" dev eth0
    ip -n "$prefix-$node" link set eth0 up
  done
}

boot() { # boot MACHINE: overlay root, own cgroup and network namespace, systemd as PID 1
  local machine=$1 dir=$work/$1
  mkdir -p "$dir/upper" "$dir/work" "$dir/root"
  if ! mountpoint -q "$dir/root"; then
    mount -t overlay overlay -o "lowerdir=$cache/base,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
    echo "$machine" >"$dir/root/etc/hostname"
    # The test's drop-in: a short watchdog (the shipped unit has 10 s) and no core files.
    mkdir -p "$dir/root/etc/systemd/system/clusterd.service.d"
    printf '[Service]\nWatchdogSec=3s\nLimitCORE=0\n' >"$dir/root/etc/systemd/system/clusterd.service.d/test.conf"
  fi
  mkdir -p "$cgroup2/$cgroup_name/$machine"
  [ -n "$cgroup_v1_systemd" ] && mkdir -p "$cgroup_v1_systemd/$cgroup_name/$machine"
  # nspawn's own cgroup (it puts the container in …/payload, itself in …/supervisor); the
  # container runs the unified hierarchy as Debian 12 does, also on this hybrid host.
  (
    echo $BASHPID >"$cgroup2/$cgroup_name/$machine/cgroup.procs"
    [ -n "$cgroup_v1_systemd" ] && echo $BASHPID >"$cgroup_v1_systemd/$cgroup_name/$machine/cgroup.procs"
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
    exec systemd-nspawn --quiet --boot --directory="$dir/root" --machine="$machine" --register=no --keep-unit \
      --network-namespace-path="/run/netns/$prefix-$machine" --capability=CAP_NET_ADMIN --console=read-only </dev/null >"$dir/console.log" 2>&1
  ) &
  echo $! >"$dir/nspawn.pid"
  disown # its death at power-off is the point, not news
}

wait_booted() {
  local machine=$1 state
  wait_for 60 "$machine to boot" in_machine "$machine" systemctl is-system-running --wait
  state=$(in_machine "$machine" systemctl is-system-running || true)
  [ "$state" = running ] || echo "note: $machine is $state: $(in_machine "$machine" systemctl --failed --no-legend | tr '\n' ' ')"
}

journal() { in_machine "$1" journalctl --no-pager -q -o short-monotonic "${@:2}"; }
save_journals() { # keeps the last journal of each machine that still runs (printed on failure)
  local machine
  for machine in "${machines[@]}"; do
    [ -n "$(leader "$machine")" ] && journal "$machine" >"$work/$machine/journal.txt" 2>&1
  done
  return 0
}
ctl() { local machine=$1; shift; in_machine "$machine" clusterctl "$@"; }
curl_vip() { ip netns exec "$prefix-client" curl -fsS --max-time 1 "http://$vip/"; }
unit_pids() { # unit_pids MACHINE CGROUP-LEAF: pids of a leaf of clusterd.service, sorted
  in_machine "$1" cat "/sys/fs/cgroup/system.slice/clusterd.service/$2/cgroup.procs" 2>/dev/null | sort -n | tr '\n' ' '
}
web_field() { # web_field MACHINE FIELD: a field of `pkg status web --output json`, asked on MACHINE
  ctl "$1" --output json pkg status web | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'] or '')"
}
owner_of_web() { web_field "$1" owner 2>/dev/null; }
voters() { ctl "$1" --output json status | python3 -c "import json,sys; print(sum(n['role'] == 'voter' for n in json.load(sys.stdin)['nodes']))"; }
three_voters() { [ "$(voters m1)" = 3 ]; }
vip_served_by() { [ "$(curl_vip)" = "served by $1" ]; }
vip_served_by_survivor() { case "$(curl_vip)" in "served by m1" | "served by m3") return 0 ;; *) return 1 ;; esac; }
restarted() { # restarted MACHINE N: clusterd restarted more than N times and is active again
  [ "$(in_machine "$1" systemctl show -P NRestarts clusterd)" -gt "$2" ] && [ "$(in_machine "$1" systemctl is-active clusterd)" = active ]
}
m1_back_online() { # the cluster has seen m1 again (its record no longer says "stopped")
  ctl m1 --output json status | python3 -c "import json,sys; sys.exit(any(n['name'] == 'm1' and n['leaving'] for n in json.load(sys.stdin)['nodes']))"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---------------------------------------------------------------------------------------------- 1. package
if [ -z "$deb" ]; then
  log "building the package (scripts/build-deb.sh${CLUSTERD_DEB_BIN_DIR:+ with the binaries of $CLUSTERD_DEB_BIN_DIR})"
  deb=$(scripts/build-deb.sh | tail -1)
fi
log "package: $deb ($(du -h "$deb" | cut -f1))"
lintian_out=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v 'running with root privileges' || true)
[ -n "$lintian_out" ] && echo "$lintian_out"
grep -q -E '^(E|W):' <<<"$lintian_out" && fail "lintian reports errors or warnings"
contents=$(dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|')
for path in /usr/sbin/clusterd /usr/bin/clusterctl /lib/systemd/system/clusterd.service \
  /usr/lib/tmpfiles.d/clusterd.conf /etc/clusterd/clusterd.toml.example /usr/share/man/man8/clusterd.8.gz \
  /usr/share/man/man1/clusterctl.1.gz /usr/share/man/man1/clusterctl-pkg-apply.1.gz \
  /usr/share/bash-completion/completions/clusterctl /usr/share/zsh/vendor-completions/_clusterctl \
  /usr/lib/ocf/resource.d/clusterd/lvm-vg /usr/share/doc/clusterd/copyright /usr/share/doc/clusterd/changelog.gz \
  /usr/share/doc/clusterd/getting-started.md /usr/share/doc/clusterd/README.md; do
  grep -qx "$path" <<<"$contents" || fail "the package lacks $path"
done
unexpected=$(grep -v -E '^/(usr/(sbin|bin|share|lib/ocf|lib/tmpfiles\.d)|lib/systemd/system|etc/clusterd)(/|$)' <<<"$contents" | grep -v -x '/' | grep -v -x -E '/(usr|lib|etc|usr/lib|lib/systemd)/' || true)
[ -z "$unexpected" ] || fail "unexpected paths in the package: $unexpected"
log "lintian: no error, no warning; file list as expected ($(grep -vc '/$' <<<"$contents") files)"

# ---------------------------------------------------------------------------------------------- 2. machines
make_base
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn # nspawn refuses to clean this folder on a disk
for machine in "${machines[@]}"; do ip netns del "$prefix-$machine" 2>/dev/null || true; done
ip netns del "$prefix-client" 2>/dev/null || true
ip netns del "$prefix-sw" 2>/dev/null || true
make_network
for machine in "${machines[@]}"; do boot "$machine"; done
for machine in "${machines[@]}"; do wait_booted "$machine"; done
log "booted ${machines[*]} (systemd $(in_machine m1 systemctl --version | head -1 | cut -d' ' -f2) as PID 1)"
for machine in "${machines[@]}"; do
  cp "$deb" "$work/$machine/root/root/"
done
deb_name=$(basename "$deb")

# ---------------------------------------------------------------------------------------------- 3. install, remove, purge
snapshot() { # every path of the machine's own filesystem, less what changes by itself
  in_machine "$1" find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
    -o -path /var/log -o -path /var/cache -o -path /var/lib/apt -o -path /var/lib/dpkg -o -path /var/lib/systemd \
    -o -path /var/tmp -o -path /root \) -prune -o -print | sort
}
before=$(snapshot m1)
in_machine m1 apt-get install -y -q --no-install-recommends "/root/$deb_name" >"$work/apt-install.log" 2>&1 ||
  { cat "$work/apt-install.log"; fail "apt-get install ./$deb_name failed"; }
check "the unit is not enabled by the installation" test "$(in_machine m1 systemctl is-enabled clusterd || true)" = disabled
check "the daemon is not started by the installation" test "$(in_machine m1 systemctl is-active clusterd || true)" = inactive
check "tmpfiles made /run/clusterd" in_machine m1 test -d /run/clusterd
check "clusterd --version runs" in_machine m1 sh -c 'clusterd --version >/dev/null'
check "man clusterctl is installed" in_machine m1 test -f /usr/share/man/man1/clusterctl.1.gz
package_files=$(in_machine m1 dpkg -L clusterd)
# Run the daemon once so that it has data to keep.
in_machine m1 clusterctl ca init --dir /etc/clusterd/pki >/dev/null
in_machine m1 clusterctl ca issue m1 --dir /etc/clusterd/pki --ip "${address[m1]}" >/dev/null
in_machine m1 sh -c "sed -e 's/node1/m1/g' -e 's/192.0.2.11/${address[m1]}/' /etc/clusterd/clusterd.toml.example >/etc/clusterd/clusterd.toml"
in_machine m1 systemctl start clusterd
in_machine m1 clusterctl cluster init >/dev/null
in_machine m1 systemctl stop clusterd
in_machine m1 apt-get remove -y -q clusterd >/dev/null 2>&1 || fail "apt-get remove clusterd failed"
check "the binaries are gone after remove" in_machine m1 test ! -e /usr/sbin/clusterd
check "the conffile stays after remove" in_machine m1 test -f /etc/clusterd/clusterd.toml.example
in_machine m1 apt-get purge -y -q clusterd >/dev/null 2>&1 || fail "apt-get purge clusterd failed"
check "dpkg forgot the package" test -z "$(in_machine m1 dpkg-query -W -f='${Status}' clusterd 2>/dev/null | grep -v not-installed || true)"
survivors=$(in_machine m1 sh -c 'while read -r path; do
  [ -n "$path" ] && [ ! -d "$path" ] && { [ -e "$path" ] || [ -L "$path" ]; } && echo "$path"
done; true' <<<"$package_files")
[ -z "$survivors" ] || fail "the purge left files of the package: $survivors"
for dir in /usr/share/doc/clusterd /usr/lib/ocf/resource.d/clusterd /etc/clusterd/clusterd.toml.example; do
  if in_machine m1 test -e "$dir"; then fail "$dir survived the purge"; fi
done
check "the conffile is gone after purge" in_machine m1 test ! -e /etc/clusterd/clusterd.toml.example
check "/var/lib/clusterd stays after purge" in_machine m1 test -d /var/lib/clusterd/raft
check "the administrator's node file stays after purge" in_machine m1 test -f /etc/clusterd/clusterd.toml
after=$(snapshot m1)
left=$(comm -13 <(echo "$before") <(echo "$after") | grep -v -E '^/(var/lib/clusterd|etc/clusterd)(/|$)' || true)
[ -z "$left" ] || fail "the purge left: $left"
removed=$(comm -23 <(echo "$before") <(echo "$after") || true)
[ -z "$removed" ] || fail "install and purge removed: $removed"
in_machine m1 rm -rf /var/lib/clusterd /etc/clusterd
log "m1: install enabled and started nothing; remove kept the conffile; purge left only /var/lib/clusterd and the administrator's files"

# ---------------------------------------------------------------------------------------------- 4. the cluster
# The steps of docs/getting-started.md, with the PKI made on this host and copied in (join tokens will
# replace that step).
pki=$work/pki
host_ctl=$work/clusterctl # the packaged clusterctl, run on this host to make the PKI
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/clusterctl >"$host_ctl"
chmod +x "$host_ctl"
"$host_ctl" ca init --dir "$pki" >/dev/null
for machine in "${machines[@]}"; do
  "$host_ctl" ca issue "$machine" --dir "$pki" --ip "${address[$machine]}" >/dev/null
  in_machine "$machine" apt-get install -y -q --no-install-recommends "/root/$deb_name" >/dev/null 2>&1 ||
    fail "apt-get install on $machine failed"
  root=$work/$machine/root
  install -d -m 0700 "$root/etc/clusterd/pki"
  install -m 0644 "$pki/ca.crt" "$pki/$machine.crt" "$root/etc/clusterd/pki/"
  install -m 0600 "$pki/$machine.key" "$root/etc/clusterd/pki/"
  # The guide's node file, watchdog included, passes --check; the machines run without the
  # watchdog (they share this host's kernel: no softdog here).
  in_machine "$machine" env NAME="$machine" ADDRESS="${address[$machine]}" sh -c '
    sed -e "s/node1/$NAME/g" -e "s/192.0.2.11/$ADDRESS/" \
      -e "s/^#\[watchdog\]/[watchdog]/" -e "s|^#device = \"/dev/watchdog\"|device = \"/dev/watchdog\"|" \
      /etc/clusterd/clusterd.toml.example > /etc/clusterd/guide.toml
    grep -q "^device = \"/dev/watchdog\"" /etc/clusterd/guide.toml &&
    clusterd --config /etc/clusterd/guide.toml --check &&
    grep -v -e "^\[watchdog\]" -e "^device =" /etc/clusterd/guide.toml > /etc/clusterd/clusterd.toml &&
    clusterd --config /etc/clusterd/clusterd.toml --check' >/dev/null || fail "the guide's node file on $machine"
  # The web server is the cluster's to run: not the distribution's service.
  in_machine "$machine" systemctl disable --now nginx >/dev/null 2>&1
  in_machine "$machine" sh -c 'echo "served by $(hostname)" > /var/www/html/index.html'
done
install -d "$work/m1/root/etc/clusterd/packages.d"
cat >"$work/m1/root/etc/clusterd/packages.d/web.toml" <<EOF
name = "web"
nodes = ["m1", "m2", "m3"]
failover = "ordered"
failback = "manual"
auto_run = true

[[resource]]
name = "vip"
type = "ip"
address = "$vip/24"
interface = "eth0"

[[resource]]
name = "server"
type = "process"
command = ["/usr/sbin/nginx", "-g", "daemon off;"]
ready = { tcp = "127.0.0.1:80" }
stop_signal = "SIGQUIT"
monitor = { interval = "2s", timeout = "5s" }
EOF

for machine in "${machines[@]}"; do
  in_machine "$machine" systemctl enable --now clusterd >/dev/null 2>&1 ||
    { journal "$machine" -u clusterd | tail -20; fail "systemctl enable --now clusterd on $machine"; }
done
for machine in "${machines[@]}"; do
  check "clusterd on $machine is active" test "$(in_machine "$machine" systemctl is-active clusterd)" = active
  status_text=$(in_machine "$machine" systemctl show -P StatusText clusterd)
  check "READY carried the status text on $machine (got '$status_text')" test "$status_text" = "serving as node $machine"
  # Type=notify: systemd makes the unit active only on READY=1 (else it would stay "activating"
  # until TimeoutStartSec); the status text can only have come through the notify socket.
  check "clusterd.service on $machine is Type=notify" test "$(in_machine "$machine" systemctl show -P Type clusterd)" = notify
done
log "clusterd active on ${machines[*]} (Type=notify: READY=1 and the status text 'serving as node mN' received)"

ctl m1 cluster init >/dev/null
ctl m1 node add m2 "${address[m2]}:7400" >/dev/null
ctl m1 node add m3 "${address[m3]}:7400" >/dev/null
wait_for 20 "three voters" three_voters
# The guide's timings (step 5): a lease long enough for a crashed daemon to be restarted by systemd
# (RestartSec=1s) and renew it; with the default 1 s lease a lease-only owner whose daemon crashed
# loses its packages to another node instead (docs/safety.md).
ctl m1 cluster set lease 3s >/dev/null
ctl m1 cluster set stop_budget 2s >/dev/null
ctl m1 pkg validate /etc/clusterd/packages.d/web.toml >/dev/null || fail "pkg validate web.toml"
ctl m1 pkg apply /etc/clusterd/packages.d/web.toml >/dev/null
wait_for 30 "the VIP to answer from m1" vip_served_by m1
log "3 voters; package web (VIP + nginx) runs on m1"

# The cgroup tree: the daemon in `daemon`, nginx in `web.server@m1`, nothing in the service's own cgroup.
tree=$(in_machine m1 systemctl status --no-pager --lines=0 clusterd)
echo "$tree" | sed -n '/CGroup:/,$p'
grep -q -- '─daemon' <<<"$tree" || fail "systemctl status shows no daemon cgroup"
grep -q -- '─web.server@m1' <<<"$tree" || fail "systemctl status shows no web.server@m1 cgroup"
check "no process sits in the service's own cgroup" test -z "$(in_machine m1 cat /sys/fs/cgroup/system.slice/clusterd.service/cgroup.procs)"
check "clusterd runs in the daemon cgroup" test -n "$(unit_pids m1 daemon)"

# A planned switchover and back (guide, step 8).
ctl m1 pkg move web --to m2 >/dev/null
wait_for 30 "the VIP to answer from m2 after pkg move" vip_served_by m2
check "no nginx cgroup left on m1 after the move" in_machine m1 test ! -e /sys/fs/cgroup/system.slice/clusterd.service/web.server@m1
ctl m2 pkg move web --to m1 >/dev/null
wait_for 30 "the VIP to answer from m1 after pkg move" vip_served_by m1
ctl m3 events >/dev/null || fail "clusterctl events on m3"
log "pkg move to m2 and back to m1"
nginx_pids=$(unit_pids m1 web.server@m1)
[ -n "$nginx_pids" ] || fail "no nginx in web.server@m1"

# A crash of the daemon: systemd restarts it, it adopts nginx where it runs (same pids, same epoch).
epoch_before=$(web_field m1 epoch)
restarts_before=$(in_machine m1 systemctl show -P NRestarts clusterd)
in_machine m1 systemctl kill --kill-whom=main --signal=SIGKILL clusterd
wait_for 20 "systemd to restart the crashed clusterd" restarted m1 "$restarts_before"
sleep 2 # a few monitor intervals: a wrong adoption would restart nginx
check "nginx kept its pids across the daemon's crash" test "$(unit_pids m1 web.server@m1)" = "$nginx_pids"
check "the package stayed on m1 at its epoch" test "$(owner_of_web m1):$(web_field m1 epoch)" = "m1:$epoch_before"
check "the VIP still answers from m1" test "$(curl_vip)" = "served by m1"
log "kill -9 of clusterd: restarted by systemd, nginx adopted (pids $nginx_pids)"

if ! $quick; then
  # A restart with the package frozen: the daemon leaves it running and the new one adopts it.
  ctl m1 pkg freeze web >/dev/null
  in_machine m1 systemctl restart clusterd
  # Unfreeze only once the cluster has seen m1 back (before that its record still says "stopped", and
  # the controller would restart the package at a new epoch instead of letting m1 adopt it).
  wait_for 30 "m1 to be back online after the restart" m1_back_online
  ctl m1 pkg unfreeze web >/dev/null
  sleep 2
  check "nginx kept its pids across systemctl restart (frozen package)" test "$(unit_pids m1 web.server@m1)" = "$nginx_pids"
  check "the package is still on m1" test "$(owner_of_web m1)" = m1
  log "systemctl restart with the package frozen: nginx adopted"

  # The watchdog: a frozen daemon (SIGSTOP) stops petting; systemd kills and restarts it.
  restarts_before=$(in_machine m3 systemctl show -P NRestarts clusterd)
  in_machine m3 systemctl kill --kill-whom=main --signal=SIGSTOP clusterd
  wait_for 30 "the watchdog to restart the frozen clusterd on m3" restarted m3 "$restarts_before"
  grep -q 'Watchdog timeout' <<<"$(journal m3 -u clusterd)" || fail "no watchdog timeout in m3's journal"
  log "SIGSTOP of clusterd on m3: systemd's watchdog (WatchdogSec=3s in the test) killed and restarted it"
fi

# journald has the daemon's own logs.
m1_journal=$(journal m1 -u clusterd -o cat)
grep -q 'process started' <<<"$m1_journal" || fail "no 'process started' line in m1's journal"
grep -q "moved into the daemon's cgroup" <<<"$m1_journal" || fail "no cgroup move in m1's journal"

# A clean stop hands the package over (quorum stays: m2 and m3 run on).
in_machine m1 systemctl stop clusterd
wait_for 30 "the VIP to answer from m2 after m1's stop" vip_served_by m2
check "nginx is gone from m1" test -z "$(in_machine m1 pgrep -x nginx || true)"
check "clusterd on m1 is inactive" test "$(in_machine m1 systemctl is-active clusterd || true)" = inactive
log "systemctl stop clusterd on m1: web handed over to m2"
in_machine m1 systemctl start clusterd
wait_for 30 "m1 to be back online" m1_back_online

# Power off the owner: the package moves on (lease-only mode: once m2's lease has expired).
save_journals
off_at=$(now_ms)
power_off m2 || fail "m2 did not power off"
wait_for 30 "the VIP to answer from m1 or m3" vip_served_by_survivor
failover_ms=$(($(now_ms) - off_at))
new_owner=$(owner_of_web m3)
check "the VIP answers from the new owner $new_owner" vip_served_by "$new_owner"
log "m2 powered off: web served by $new_owner after ${failover_ms} ms (lease-only mode, lease 3 s; includes the 0.2 s polling)"
save_journals
