#!/usr/bin/env bash
# Set up balloon-2395 where this script lives: a .venv with its dependencies.
#   ./install.sh         runtime dependencies (sh, filelock, PyYAML)
#   ./install.sh --dev   also the test dependencies (pytest, hypothesis, mypy, ruff)
#   ./install.sh --bench also the benchmark's plotting (matplotlib); options may be combined
#   ./install.sh --metrics also prometheus-client, for the daemon's metrics
#   ./install.sh --systemd also a systemd unit running this checkout (enabled, started),
#                          /etc/balloon-2395/config.yaml (never overwritten), the manual page
#                          and the bash and zsh completions (under /usr/local/share)
#   ./install.sh --uninstall removes what --systemd installed (an edited config is kept)
# Idempotent: run it again after an update. BALLOON_ROOT=DIR installs the unit and config
# under DIR instead of / (packaging, tests) and then never calls systemctl.
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
dev=0
bench=0
metrics=0
systemd=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        --bench) bench=1 ;;
        --metrics) metrics=1 ;;
        --systemd) systemd=1 ;;
        --uninstall) uninstall=1 ;;
        -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

root=${BALLOON_ROOT:-}
unit="$root/etc/systemd/system/balloon-2395.service"
config="$root/etc/balloon-2395/config.yaml"
# where man, bash-completion and zsh look for what the local administrator installs: SOURCE TARGET
extras=("docs/balloon-2395.8 $root/usr/local/share/man/man8/balloon-2395.8"
        "examples/completion/bash/balloon-2395 $root/usr/local/share/bash-completion/completions/balloon-2395"
        "examples/completion/zsh/_balloon-2395 $root/usr/local/share/zsh/site-functions/_balloon-2395")
# what --systemd wrote, with checksums: --uninstall removes only those, and a config
# the operator has edited since stays
manifest="$root/var/lib/balloon-2395/installed"
# systemctl only for the real root of a machine that runs systemd
use_systemctl() { [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
[ -z "$root" ] && [ $((systemd + ${uninstall:-0})) -gt 0 ] && [ "$(id -u)" != 0 ] &&
    die "--systemd and --uninstall write under /etc: run as root (or set BALLOON_ROOT)"

if [ "${uninstall:-0}" = 1 ]; then
    [ -f "$manifest" ] || die "nothing to uninstall: $manifest does not exist"
    if use_systemctl; then
        systemctl disable --now balloon-2395.service || true
    fi
    while read -r sum path; do
        if [ ! -e "$root$path" ]; then
            continue
        elif [ "$(sha256sum < "$root$path" | cut -d' ' -f1)" = "$sum" ]; then
            rm -f "$root$path" && say "removed $root$path"
        else
            say "kept $root$path: changed since it was installed"
        fi
    done < "$manifest"
    rm -f "$manifest"
    rmdir "$(dirname "$manifest")" "$(dirname "$config")" 2>/dev/null || true
    use_systemctl && systemctl daemon-reload
    say "uninstalled (this checkout and its .venv stay: remove $here yourself)"
    exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 ||
    die "$python not found; on Debian/Ubuntu: apt-get install python3 python3-venv"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    die "Python >= 3.9 needed, $python is $("$python" -V 2>&1)"

venv_ok() { "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; }
if ! venv_ok; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        say "python venv support is missing: installing python3-venv with apt-get"
        apt-get update -qq && apt-get install -y -qq "python$pyver-venv" >/dev/null ||
            apt-get install -y -qq python3-venv >/dev/null ||
            die "could not install python3-venv; install it and run me again"
    else
        die "python venv support is missing: sudo apt-get install python3-venv (then run me again)"
    fi
fi

venv="$here/.venv"
if [ -e "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "$venv is broken (its Python is gone): recreating it"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv"
fi

reqs=(-r "$here/requirements.txt")
[ "$dev" = 1 ] && reqs=(-r "$here/requirements-dev.txt")
[ "$bench" = 1 ] && reqs+=(-r "$here/requirements-bench.txt")
[ "$metrics" = 1 ] && reqs+=(-r "$here/requirements-metrics.txt")
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}" ||
    die "pip could not install the dependencies (see above)"

chmod +x "$here/balloon-2395"

record() { echo "$(sha256sum < "$1" | cut -d' ' -f1) ${1#"$root"}" >> "$manifest.new"; }

if [ "$systemd" = 1 ]; then
    mkdir -p "$(dirname "$unit")" "$(dirname "$config")" "$(dirname "$manifest")"
    : > "$manifest.new"
    sed "s|/opt/balloon-2395/|$here/|g" "$here/examples/balloon-2395.service" > "$unit.new"
    mv "$unit.new" "$unit"
    chmod 644 "$unit"
    record "$unit"
    say "installed $unit (runs $here/balloon-2395)"
    if [ -e "$config" ]; then
        say "kept $config as it is"
        grep -qs " ${config#"$root"}$" "$manifest" && grep " ${config#"$root"}$" "$manifest" >> "$manifest.new"
    else
        install -m 644 "$here/examples/config.yaml" "$config"
        record "$config"
        say "installed $config (the defaults; edit it, then: systemctl reload balloon-2395)"
    fi
    for extra in "${extras[@]}"; do
        install -D -m 644 "$here/${extra%% *}" "${extra#* }"
        record "${extra#* }"
    done
    say "installed the manual page (man balloon-2395) and the completions of the command balloon-2395"
    mv "$manifest.new" "$manifest"
    if command -v systemd-analyze >/dev/null 2>&1; then
        systemd-analyze verify "$unit" || die "systemd-analyze verify found problems in $unit"
    fi
    if use_systemctl; then
        systemctl daemon-reload
        systemctl enable --now balloon-2395.service
        say "enabled and started balloon-2395.service (journalctl -u balloon-2395)"
    else
        say "systemd is not managing this root: enable it there with systemctl enable --now balloon-2395"
    fi
fi
say "ready: $here/balloon-2395 --help"
