#!/bin/busybox sh
# /init of the Debian e2e guest's initrd (packed by lib/balloon2395_testkit/debian_image.py): loads the
# modules the root disk needs (virtio-pci, virtio-blk; the listed order has dependencies first; ext4 is
# built into Debian's cloud kernel), mounts root= and hands over to the image's systemd.
# Any failure powers the guest off, the reason on the console.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "B2395E2E initrd: $*"
    poweroff -f
}

root=/dev/vda
mode=rw
for word in $(cat /proc/cmdline); do
    case "$word" in
        root=*) root=${word#root=} ;;
        ro|rw) mode=$word ;;
    esac
done

while read -r module; do
    insmod "/lib/modules/$module" || fail "insmod $module failed"
done < /etc/modules.order

n=0
until [ -b "$root" ]; do
    n=$((n + 1))
    [ $n -le 100 ] || fail "no root device $root"
    usleep 100000
done
mkdir -p /newroot
mount -t ext4 -o "$mode" "$root" /newroot || fail "cannot mount $root"
# an absolute symlink on the image: it resolves only once switched
[ -L /newroot/sbin/init ] || [ -x /newroot/sbin/init ] || fail "no /sbin/init on $root"
for fs in dev proc sys; do
    mount --move "/$fs" "/newroot/$fs"
done
exec switch_root /newroot /sbin/init
