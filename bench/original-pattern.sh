#!/usr/bin/env bash
# The original balloon-2395's work per cycle, call for call, for bench/cost.py to set
# against the port: `virsh list` piped through grep and awk, then for every running
# domain `dommemstat --period`, `dommemstat` twice (read by line number), `dumpxml`
# through grep, and its arithmetic in bc and cut. Written for the benchmark from the
# original's described behaviour; guests inside the band, so no setmem.
#   original-pattern.sh CYCLES        (virsh from PATH)
set -u
minimal=25 maximal=35
for ((cycle = 0; cycle < $1; cycle++)); do
    for vm in $(virsh list --all | grep running | awk '{print $2}'); do
        virsh dommemstat "$vm" --period 1 > /dev/null
        actual=$(virsh dommemstat "$vm" | sed -n 1p | awk '{print $2}')
        usable=$(virsh dommemstat "$vm" | sed -n 8p | awk '{print $2}')
        actual=$(echo "$actual / 1024" | bc)
        usable=$(echo "$usable / 1024" | bc)
        pct=$(echo "$usable * 100 / $actual" | bc | cut -d. -f1)
        if virsh dumpxml "$vm" | grep -q microsoft; then
            continue
        fi
        if [ "$pct" -gt "$maximal" ] || [ "$pct" -lt "$minimal" ]; then
            echo "$vm: usable $pct% outside the band" >&2
        fi
    done
done
