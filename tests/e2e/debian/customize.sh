#!/usr/bin/env bash
# Turns the tree mmdebstrap made into the Debian e2e guest, before mkfs.ext4 -d packs it (run as root
# on the host by lib/balloon2395_testkit/debian_image.py):
#     customize.sh ROOT MEMHOG CACHE_MIB
# ROOT the tree, MEMHOG the static memory hog built from ../memhog.c, CACHE_MIB the MiB of files the
# agent's `cache` command reads (random bytes, in 64 MiB files under /srv/b2395/cache).
set -euo pipefail
root=$1 memhog=$2 cache_mib=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

echo b2395e2e-debian > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tb2395e2e-debian\n' > "$root/etc/hosts"
cat > "$root/etc/fstab" <<'FSTAB'
/dev/vda  /     ext4  rw,noatime  0 0
# the guest's own swap disk, formatted by mkswap on the host (a guest without one has
# systemd.mask=dev-vdb.swap on its kernel command line)
/dev/vdb  none  swap  sw  0 0
FSTAB
# empty: each boot makes its own, as the guests share the image
: > "$root/etc/machine-id"

mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' > "$root/etc/systemd/journald.conf.d/b2395.conf"

# Redis: no snapshots (a fork copying the data set under memory pressure would blur what is
# measured); DEBUG POPULATE for the agent, from the guest only
cat >> "$root/etc/redis/redis.conf" <<'REDIS'

# balloon-2395 e2e guest
save ""
appendonly no
enable-debug-command local
REDIS

install -D -m 0755 "$here/agent.py" "$root/usr/local/lib/b2395/agent.py"
install -D -m 0644 "$here/b2395-agent.service" "$root/etc/systemd/system/b2395-agent.service"
install -D -m 0755 "$memhog" "$root/usr/local/bin/memhog"
chroot "$root" systemctl enable b2395-agent.service
# No logins (the agent is the way in), no timers that would wake a guest being measured, and none of
# the early units this guest has no use for: under software emulation each costs seconds of boot.
chroot "$root" systemctl mask getty@.service serial-getty@.service getty-static.service \
    dpkg-db-backup.timer fstrim.timer systemd-tmpfiles-clean.timer systemd-pstore.service \
    modprobe@dm_mod.service modprobe@configfs.service modprobe@fuse.service modprobe@loop.service \
    modprobe@drm.service kmod-static-nodes.service systemd-modules-load.service systemd-random-seed.service \
    systemd-remount-fs.service systemd-sysusers.service systemd-update-utmp.service \
    systemd-update-utmp-runlevel.service sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-kernel-config.mount sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount
# Coldplug only what the guest uses: its disks (the swap unit waits for /dev/vdb's) and the virtio
# devices (their add events load virtio_balloon and virtio_console); not the ~200 others.
mkdir -p "$root/etc/systemd/system/systemd-udev-trigger.service.d"
cat > "$root/etc/systemd/system/systemd-udev-trigger.service.d/b2395.conf" <<'UDEV'
[Service]
ExecStart=
ExecStart=-udevadm trigger --type=devices --action=add --subsystem-match=virtio --subsystem-match=block
UDEV

mkdir -p "$root/srv/b2395/cache"
for i in $(seq 1 $((cache_mib / 64))); do
    head -c 64M /dev/urandom > "$root/srv/b2395/cache/file-$(printf %02d "$i")"
done
