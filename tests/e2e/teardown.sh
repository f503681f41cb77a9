#!/usr/bin/env bash
# Undo the runtime part of tests/e2e/prepare.sh: stop the daemons that
# prepare.sh started, by the PIDs it recorded in /run/balloon-2395-e2e/daemons.
# A recorded PID is signalled only while it still is the same process (same
# name, same start time); nothing else is ever signalled. Packages, the
# libvirt-qemu user, the qemu.conf block and the asset cache stay.
#
#   tests/e2e/teardown.sh            # refuse while e2e guests still run
#   tests/e2e/teardown.sh --sweep    # first destroy+undefine every domain
#                                    # whose name starts with "b2395e2e"
#   tests/e2e/teardown.sh --force    # stop the daemons anyway
set -uo pipefail

STATE_DIR=/run/balloon-2395-e2e
DAEMONS=$STATE_DIR/daemons
URI=qemu:///system
PREFIX=b2395e2e
export LC_ALL=C

sweep=0 force=0
for a in "$@"; do
    case "$a" in
        --sweep) sweep=1 ;;
        --force) force=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "teardown: unknown option $a" >&2; exit 2 ;;
    esac
done

log() { printf 'teardown: %s\n' "$*"; }

if [ ! -s "$DAEMONS" ]; then
    log "no daemons recorded in $DAEMONS: nothing to stop"
    exit 0
fi

# Domains of the e2e harness that are still defined.
if command -v virsh >/dev/null 2>&1 \
   && timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1; then
    mapfile -t ours < <(timeout 30 virsh -q -c "$URI" list --all --name 2>/dev/null \
                        | grep "^$PREFIX" || true)
    if [ ${#ours[@]} -gt 0 ]; then
        if [ "$sweep" = 1 ]; then
            for d in "${ours[@]}"; do
                [ -n "$d" ] || continue
                log "sweeping domain '$d'"
                timeout 60 virsh -q -c "$URI" destroy --domain "$d" >/dev/null 2>&1
                timeout 60 virsh -q -c "$URI" undefine --domain "$d" >/dev/null 2>&1 \
                    || log "could not undefine '$d'"
            done
        elif [ "$force" = 0 ]; then
            log "e2e domains still defined: ${ours[*]}"
            log "re-run with --sweep to remove them first (or --force to leave them)"
            exit 1
        fi
    fi
fi

starttime() { awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }
same_process() {  # name pid start
    [ -r "/proc/$2/stat" ] || return 1
    [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ] || return 1
    [ "$(starttime "$2")" = "$3" ]
}

rc=0
# stop in reverse start order (libvirtd before virtlogd)
mapfile -t lines < <(tac "$DAEMONS")
for line in "${lines[@]}"; do
    read -r name pid start <<<"$line"
    [ -n "${pid:-}" ] || continue
    if ! same_process "$name" "$pid" "$start"; then
        log "$name (pid $pid) already gone"
        continue
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 150); do
        same_process "$name" "$pid" "$start" || break
        sleep 0.1
    done
    if same_process "$name" "$pid" "$start"; then
        log "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        sleep 0.5
        if same_process "$name" "$pid" "$start"; then
            log "$name (pid $pid) still there"; rc=1; continue
        fi
    fi
done
[ "$rc" = 0 ] && rm -f "$DAEMONS"
exit "$rc"
