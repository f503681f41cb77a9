#!/usr/bin/env bash
# Set up balloon-2395 where this script lives: a .venv with its dependencies.
#   ./install.sh         runtime dependencies (sh, filelock, PyYAML)
#   ./install.sh --dev   also the test dependencies (pytest, hypothesis)
#   ./install.sh --bench also the benchmark's plotting (matplotlib); both may be given
# Idempotent: run it again after an update.
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
dev=0
bench=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        --bench) bench=1 ;;
        -h|--help) sed -n '2,6s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

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
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}" ||
    die "pip could not install the dependencies (see above)"

chmod +x "$here/balloon-2395"
say "ready: $here/balloon-2395 --help"
