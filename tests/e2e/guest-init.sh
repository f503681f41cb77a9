#!/bin/busybox sh
# /init of the balloon-2395 e2e test guests (busybox sh, packed by prepare.sh).
#
# Boots to a command loop on the virtio-serial port named
# org.balloon2395.ctl. Protocol (one command per line, host -> guest):
#     SEQ COMMAND [ARGS...]
# reply (guest -> host):
#     @@BEGIN SEQ@@
#     ...output lines...
#     @@END SEQ RC@@
# Commands: ping, meminfo, vmstat, oom, hog NAME MIB, ramp NAME STEP MAX [MS],
# free NAME, status NAME, hogs, sh SHELL-CODE, poweroff.
# Kernel command line: `noballoon` skips the virtio_balloon driver,
# `swappiness=N` (default 10).
# Everything printed here goes to the console (ttyS0 -> host log file).

PATH=/bin:/sbin
export PATH
CHANNEL=org.balloon2395.ctl
HOGS=/run/hogs

/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p "$HOGS"

say() { echo "B2395E2E: $*"; }

say "init start, uptime $(cut -d' ' -f1 /proc/uptime)"

CMDLINE=$(cat /proc/cmdline)
NOBALLOON=0
SWAPPINESS=10
for word in $CMDLINE; do
    case "$word" in
        noballoon) NOBALLOON=1 ;;
        swappiness=*) SWAPPINESS=${word#swappiness=} ;;
    esac
done

# Modules, in dependency order (written by prepare.sh from modules.dep).
while read -r mod; do
    [ -n "$mod" ] || continue
    base=${mod##*/}
    base=${base%.ko}
    if [ "$base" = virtio_balloon ] && [ "$NOBALLOON" = 1 ]; then
        say "skipping $base (noballoon)"
        continue
    fi
    insmod "/lib/modules/$mod" || say "insmod $base failed"
done < /etc/modules.list

echo "$SWAPPINESS" > /proc/sys/vm/swappiness
hostname b2395e2e-guest

# Find the control port.
PORT=
i=0
while [ -z "$PORT" ] && [ $i -lt 100 ]; do
    for f in /sys/class/virtio-ports/*/name; do
        [ -r "$f" ] || continue
        if [ "$(cat "$f")" = "$CHANNEL" ]; then
            d=${f%/name}
            PORT=/dev/${d##*/}
            if [ ! -c "$PORT" ]; then
                dev=$(cat "$d/dev")
                mknod "$PORT" c "${dev%%:*}" "${dev##*:}"
            fi
        fi
    done
    [ -n "$PORT" ] || { i=$((i + 1)); usleep 100000; }
done

hog_pid() {
    [ -f "$HOGS/$1.pid" ] && cat "$HOGS/$1.pid"
}

alive() {
    # true when pid $1 exists and is not a zombie
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
    state=$(cut -d')' -f2 "/proc/$1/stat" 2>/dev/null | cut -d' ' -f2)
    [ -n "$state" ] || return 1
    [ "$state" != Z ]
}

valid_name() {
    case "$1" in
        ''|*[!A-Za-z0-9_.-]*) echo "bad hog name: '$1'"; return 1 ;;
    esac
}

start_hog() {
    # start_hog NAME MIB [memhog options...]
    name=$1; mib=$2; shift 2
    valid_name "$name" || return 2
    if alive "$(hog_pid "$name")"; then
        echo "hog $name already running"
        return 1
    fi
    rm -f "$HOGS/$name.pid" "$HOGS/$name.status"
    memhog -d -p "$HOGS/$name.pid" -s "$HOGS/$name.status" "$@" "$mib"
}

run_cmd() {
    cmd=$1; shift
    case "$cmd" in
        ping) echo pong ;;
        meminfo) cat /proc/meminfo ;;
        vmstat) cat /proc/vmstat ;;
        uptime) cat /proc/uptime ;;
        oom)
            echo "oom_kill $(grep '^oom_kill ' /proc/vmstat | cut -d' ' -f2)"
            echo "dmesg_killed $(dmesg | grep -c 'Out of memory: Killed process')"
            ;;
        hog)
            [ $# -eq 2 ] || { echo "usage: hog NAME MIB"; return 2; }
            start_hog "$1" "$2"
            ;;
        ramp)
            [ $# -ge 3 ] || { echo "usage: ramp NAME STEP_MIB MAX_MIB [INTERVAL_MS]"; return 2; }
            start_hog "$1" "$2" -r "$2" -m "$3" -i "${4:-1000}"
            ;;
        free)
            [ $# -eq 1 ] || { echo "usage: free NAME"; return 2; }
            valid_name "$1" || return 2
            pid=$(hog_pid "$1")
            [ -n "$pid" ] || { echo "no hog $1"; return 1; }
            kill -9 "$pid" 2>/dev/null
            n=0
            while alive "$pid" && [ $n -lt 100 ]; do usleep 50000; n=$((n + 1)); done
            rm -f "$HOGS/$1.pid" "$HOGS/$1.status"
            echo "freed $1"
            ;;
        status)
            [ $# -eq 1 ] || { echo "usage: status NAME"; return 2; }
            valid_name "$1" || return 2
            pid=$(hog_pid "$1")
            mib=$(cat "$HOGS/$1.status" 2>/dev/null)
            if alive "$pid"; then st=alive; else st=dead; fi
            echo "$1 $st ${mib:-0}"
            ;;
        hogs)
            for f in "$HOGS"/*.pid; do
                [ -f "$f" ] || continue
                n=${f##*/}; n=${n%.pid}
                run_cmd status "$n"
            done
            ;;
        sh) eval "${RAW#sh}" ;;
        poweroff) sync; poweroff -f ;;
        *) echo "unknown command: $cmd"; return 127 ;;
    esac
}

if [ -z "$PORT" ]; then
    say "control port $CHANNEL not found"
else
    say "READY port=$PORT uptime $(cut -d' ' -f1 /proc/uptime)"
    exec 3<>"$PORT"
    while :; do
        if ! IFS= read -r line <&3; then
            # EOF: no host connected to the socket; wait and retry.
            usleep 200000
            continue
        fi
        line=${line%"$(printf '\r')"}
        seq=${line%% *}
        rest=${line#"$seq"}
        rest=${rest# }
        [ -n "$seq" ] || continue
        RAW=$rest
        set -f
        # shellcheck disable=SC2086
        set -- $rest
        set +f
        {
            echo "@@BEGIN $seq@@"
            if [ $# -gt 0 ]; then
                ( run_cmd "$@" ) </dev/null 2>&1
                rc=$?
            else
                rc=0
            fi
            echo "@@END $seq $rc@@"
        } >&3
    done
fi

say "command loop ended; idling"
while :; do sleep 3600; done
