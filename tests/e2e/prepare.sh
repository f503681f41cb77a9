#!/usr/bin/env bash
# Prepare this host for the balloon-2395 end-to-end tests (real QEMU guests).
#
#   sudo tests/e2e/prepare.sh        # idempotent; re-run any time
#
# What it does:
#   1. installs (apt, --no-install-recommends) qemu-system-x86, libvirt-daemon,
#      libvirt-daemon-driver-qemu, libvirt-clients, busybox-static, cpio, kmod,
#      gcc, libc6-dev when missing (never libvirt-daemon-system);
#   2. creates the libvirt-qemu user and group libvirtd insists on;
#   3. writes a marked block into /etc/libvirt/qemu.conf: QEMU runs as root,
#      no cgroups, no namespaces, no security driver;
#   4. starts virtlogd and libvirtd when they are not running, recording the
#      PIDs it started in $STATE_DIR/daemons (teardown.sh stops exactly those);
#   5. waits until `virsh -c qemu:///system version` answers;
#   6. builds the guest assets once into $BALLOON_E2E_CACHE
#      (default /var/cache/balloon-2395-e2e): vmlinuz, initramfs.gz (busybox,
#      virtio modules, guest-init.sh as /init, memhog built with gcc -static).
#      They are rebuilt only when an input changes (stamp file).
#
# Exit codes: 0 ready, 77 this host cannot run the e2e tests (reason printed),
# 1 something failed.
#
# Environment: BALLOON_E2E_CACHE (asset dir), BALLOON_E2E_KERNEL_PKG (kernel
# package to fetch, default: what linux-image-cloud-amd64 depends on).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${BALLOON_E2E_CACHE:-/var/cache/balloon-2395-e2e}
STATE_DIR=/run/balloon-2395-e2e
URI=qemu:///system
# zsh, groff-base, man-db: not the guests', but the unit suite's: tests/test_completion.py runs the zsh
# completion in a real zsh, tests/test_manpage.py renders the page with groff and man
PACKAGES=(qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu
          libvirt-clients busybox-static cpio kmod gcc libc6-dev zsh groff-base man-db)
# Modules the guest loads (deps are resolved from modules.dep).
GUEST_MODULES=(virtio_pci virtio_console virtio_balloon)
# Bump when the way the initramfs is assembled changes.
ASSET_FORMAT=1

export LC_ALL=C
T0=$(date +%s.%N)

log() { printf 'prepare: %s\n' "$*"; }
skip() { printf 'prepare: SKIP: %s\n' "$*" >&2; exit 77; }
die() { printf 'prepare: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(id -u)" = 0 ] || skip "must run as root (it installs packages and starts libvirtd)"
[ "$(uname -m)" = x86_64 ] || skip "needs an x86_64 host (guest kernel is amd64)"
command -v dpkg-query >/dev/null 2>&1 || skip "no dpkg-query: not a Debian-like host"

mkdir -p "$STATE_DIR"
exec 9>"$STATE_DIR/prepare.lock"
flock -w 600 9 || die "another prepare.sh holds $STATE_DIR/prepare.lock"

# ---------------------------------------------------------------- packages
missing=()
for p in "${PACKAGES[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    case "$st" in ii*) ;; *) missing+=("$p") ;; esac
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || skip "no apt-get to install: ${missing[*]}"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
else
    log "packages present"
fi
for b in virsh libvirtd virtlogd qemu-system-x86_64 busybox cpio depmod gcc gzip; do
    command -v "$b" >/dev/null 2>&1 || die "$b not found after install"
done
BUSYBOX=/bin/busybox   # from busybox-static (conflicts with the dynamic one)
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing"

# ---------------------------------------------------------------- user/group
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system -g libvirt-qemu \
    -d /var/lib/libvirt -s /usr/sbin/nologin -c "Libvirt Qemu" libvirt-qemu

# ---------------------------------------------------------------- qemu.conf
QEMU_CONF=/etc/libvirt/qemu.conf
mkdir -p /etc/libvirt
touch "$QEMU_CONF"
BEGIN_MARK='# BEGIN balloon-2395-e2e block, managed by tests-e2e-prepare.sh'
END_MARK='# END balloon-2395-e2e block'
wanted_block=$(cat <<EOF
$BEGIN_MARK
user = "root"
group = "root"
cgroup_controllers = [ ]
namespaces = [ ]
security_driver = "none"
$END_MARK
EOF
)
# exact-string matching only (awk), never a regex built from the markers
current_block=$(awk -v b="$BEGIN_MARK" -v e="$END_MARK" \
    '$0 == b { on = 1 } on { print } $0 == e { on = 0 }' "$QEMU_CONF")
conf_changed=0
if [ "$current_block" != "$wanted_block" ]; then
    tmp=$(mktemp "$QEMU_CONF.XXXXXX")
    # drop our old block, comment out competing settings, append ours
    awk -v b="$BEGIN_MARK" -v e="$END_MARK" '
        $0 == b { on = 1; next }
        on { if ($0 == e) on = 0; next }
        /^[ \t]*(user|group|cgroup_controllers|namespaces|security_driver)[ \t]*=/ {
            print "#b2395e2e# " $0; next }
        { print }' "$QEMU_CONF" > "$tmp"
    printf '%s\n' "$wanted_block" >> "$tmp"
    chmod --reference="$QEMU_CONF" "$tmp"
    mv "$tmp" "$QEMU_CONF"
    conf_changed=1
    log "wrote settings block into $QEMU_CONF"
fi

# ---------------------------------------------------------------- daemons
# libvirt-daemon-system (not installed: it pulls systemd) would create these.
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu \
         /var/lib/libvirt/images
# $STATE_DIR/daemons: "NAME PID STARTTIME" for each daemon this script started.
starttime() { awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }
running_pid() {
    # pid of a running daemon called $1 (any owner), or nothing
    pgrep -x "$1" 2>/dev/null | head -n1
}
recorded() {  # name pid: true when prepare.sh started this very process
    local start
    start=$(starttime "$2")
    [ -n "$start" ] && grep -qx "$1 $2 $start" "$STATE_DIR/daemons" 2>/dev/null
}
stop_recorded() {  # name pid
    local i
    kill -TERM "$2"
    for i in $(seq 1 150); do kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$2" 2>/dev/null && die "$1 (pid $2) did not stop"
    grep -v "^$1 $2 " "$STATE_DIR/daemons" > "$STATE_DIR/daemons.tmp" || true
    mv "$STATE_DIR/daemons.tmp" "$STATE_DIR/daemons"
}
start_daemon() {
    local name=$1 pidfile=$2; shift 2
    local pid
    pid=$(running_pid "$name" || true)
    if [ -n "$pid" ] && [ "$name" = libvirtd ] && [ "$conf_changed" = 1 ] \
       && recorded "$name" "$pid"; then
        log "restarting $name (pid $pid, started by prepare.sh) for the new $QEMU_CONF"
        stop_recorded "$name" "$pid"
        pid=$(running_pid "$name" || true)
    fi
    if [ -n "$pid" ]; then
        if recorded "$name" "$pid"; then
            log "$name already running (pid $pid, started by an earlier prepare.sh)"
        else
            log "$name already running (pid $pid, not started by prepare.sh)"
        fi
        if [ "$name" = libvirtd ] && [ "$conf_changed" = 1 ]; then
            log "WARNING: $QEMU_CONF changed but libvirtd $pid was not started by" \
                "prepare.sh; restart it yourself for the settings to apply"
        fi
        return 0
    fi
    rm -f "$pidfile"
    # close the lock fds: the daemons must not inherit (and hold) the locks
    "$name" -d --pid-file "$pidfile" "$@" 8>&- 9>&- || die "$name failed to start"
    local i
    for i in $(seq 1 100); do
        [ -s "$pidfile" ] && break
        sleep 0.1
    done
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || die "$name did not stay up"
    echo "$name $pid $(starttime "$pid")" >> "$STATE_DIR/daemons"
    log "started $name (pid $pid)"
}
start_daemon virtlogd /run/virtlogd.pid
start_daemon libvirtd /run/libvirtd.pid

ok=0
for i in $(seq 1 120); do
    if timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
done
[ "$ok" = 1 ] || die "virsh -c $URI version does not answer"
log "libvirt answers: $(virsh -c "$URI" version 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g')"

# ---------------------------------------------------------------- guest assets
mkdir -p "$CACHE"
exec 8>"$CACHE/.lock"
flock -w 600 8 || die "cache $CACHE is locked"

# Kernel: fetched once (apt-get download + dpkg -x, never installed).
KDIR=$CACHE/kernel
if [ ! -s "$KDIR/vmlinuz" ] || [ ! -s "$KDIR/modules.dep" ] || [ ! -s "$KDIR/release" ] \
   || [ "$(cat "$KDIR/modules.wanted" 2>/dev/null)" != "${GUEST_MODULES[*]}" ]; then
    kpkg=${BALLOON_E2E_KERNEL_PKG:-}
    if [ -z "$kpkg" ]; then
        kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
               | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
        if [ -z "$kpkg" ]; then
            apt-get update -qq || true
            kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
                   | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
        fi
    fi
    [ -n "$kpkg" ] || die "cannot resolve the linux-image-cloud-amd64 kernel package"
    log "fetching guest kernel $kpkg"
    work=$(mktemp -d "$CACHE/.kernel.XXXXXX")
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg") \
        || die "apt-get download $kpkg failed"
    deb=$(ls "$work"/*.deb | head -n1)
    dpkg-deb -x "$deb" "$work/x"
    release=$(ls "$work/x/lib/modules" | head -n1)
    [ -n "$release" ] || die "no modules in $deb"
    depmod -b "$work/x" "$release" || die "depmod failed"
    new=$work/out
    mkdir -p "$new/modules"
    cp "$work/x/boot/vmlinuz-$release" "$new/vmlinuz"
    cp "$work/x/lib/modules/$release/modules.dep" "$new/modules.dep"
    # keep only the modules the guest may load (with their deps)
    for m in "${GUEST_MODULES[@]}"; do
        rel=$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$new/modules.dep" | cut -d: -f1)
        [ -n "$rel" ] || die "module $m not in $release"
        for f in $rel $(grep -E "^$rel:" "$new/modules.dep" | cut -d: -f2); do
            mkdir -p "$new/modules/$(dirname "$f")"
            cp "$work/x/lib/modules/$release/$f" "$new/modules/$f"
        done
    done
    echo "$release" > "$new/release"
    echo "${GUEST_MODULES[*]}" > "$new/modules.wanted"
    echo "$(basename "$deb")" > "$new/package"
    rm -rf "$KDIR"
    mv "$new" "$KDIR"
    rm -rf "$work"
    log "guest kernel $release cached in $KDIR"
fi
RELEASE=$(cat "$KDIR/release")

# Load order: deps first (modules.dep lists each module's full dep closure).
declare -A seen=()
ORDER=()
load_order() {
    local rel=$1 d
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    for d in $(grep -E "^$rel:" "$KDIR/modules.dep" | cut -d: -f2); do
        load_order "$d"
    done
    ORDER+=("$rel")
}
for m in "${GUEST_MODULES[@]}"; do
    load_order "$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$KDIR/modules.dep" | cut -d: -f1)"
done

stamp_input() {
    echo "format $ASSET_FORMAT"
    echo "kernel $(cat "$KDIR/package") $RELEASE"
    sha256sum "$HERE/guest-init.sh" "$HERE/memhog.c" "$BUSYBOX" "$KDIR/vmlinuz" | awk '{print $1}'
    printf '%s\n' "${ORDER[@]}"
    gcc --version | head -n1
}
want_stamp=$(stamp_input | sha256sum | cut -d' ' -f1)
have_stamp=$(cat "$CACHE/stamp" 2>/dev/null || true)

if [ "$want_stamp" = "$have_stamp" ] && [ -s "$CACHE/vmlinuz" ] \
   && [ -s "$CACHE/initramfs.gz" ] && [ -x "$CACHE/memhog" ]; then
    log "guest assets up to date in $CACHE"
else
    log "building guest assets in $CACHE"
    work=$(mktemp -d "$CACHE/.build.XXXXXX")
    gcc -static -O2 -Wall -o "$work/memhog" "$HERE/memhog.c" || die "memhog build failed"
    root=$work/root
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules}
    cp "$BUSYBOX" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    cp "$work/memhog" "$root/bin/memhog"
    cp "$HERE/guest-init.sh" "$root/init"
    chmod 0755 "$root/init" "$root/bin/busybox" "$root/bin/memhog"
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    : > "$root/etc/modules.list"
    for rel in "${ORDER[@]}"; do
        mkdir -p "$root/lib/modules/$(dirname "$rel")"
        cp "$KDIR/modules/$rel" "$root/lib/modules/$rel"
        echo "$rel" >> "$root/etc/modules.list"
    done
    (cd "$root" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null -o -H newc --quiet -R 0:0) | gzip -9n > "$work/initramfs.gz"
    cp "$KDIR/vmlinuz" "$work/vmlinuz"
    for f in vmlinuz initramfs.gz memhog; do mv -f "$work/$f" "$CACHE/$f"; done
    echo "$want_stamp" > "$CACHE/stamp"
    rm -rf "$work"
    log "built initramfs ($(du -h "$CACHE/initramfs.gz" | cut -f1)) with modules:" \
        "$(for r in "${ORDER[@]}"; do basename "$r" .ko; done | tr '\n' ' ')"
fi

# Marker read by lib/balloon2395_testkit/prepared.py to find the assets of a non-default cache.
echo "$CACHE" > "$STATE_DIR/cache-dir"
T1=$(date +%s.%N)
log "ready in $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }') s;" \
    "assets: $CACHE/{vmlinuz,initramfs.gz}"
