#!/usr/bin/python3
"""The workload agent of the Debian e2e guest, started by b2395-agent.service.

It serves the virtio-serial port org.balloon2395.ctl with the busybox guest's wire format
(tests/e2e/guest-init.sh), so that balloon2395_testkit's Guest drives both guests: the host writes
`SEQ COMMAND ARGS`, the agent answers `@@BEGIN SEQ@@`, the output lines, `@@END SEQ RC@@`.

The busybox guest's commands: ping, meminfo, vmstat, uptime, oom, hog NAME MIB,
ramp NAME STEP_MIB MAX_MIB [INTERVAL_MS], free NAME, status NAME, hogs, sh CODE (bash), poweroff.
And the Debian guest's:
  swap            the swap devices (`swap DEV SIZE_KIB USED_KIB`), pswpin, pswpout, SwapTotal, SwapFree
  cache MIB       read MIB MiB of the image's files (CACHE_DIR) into the page cache
  uncache         drop those files from the page cache
  tmpfs MIB       write MIB MiB more into a tmpfs; tmpfs_free removes all of it
  redis MIB       load Redis until it holds MIB MiB of data (DEBUG POPULATE); redis_flush empties it
  redis_info      Redis's used_memory and used_memory_rss, in KiB
  state           systemd's state and its failed units
Only python3-minimal's modules are used (the image has no full standard library). Memory held for the
host goes in processes of its own (memhog, the tmpfs, Redis) with the normal OOM score: the agent is
exempt (OOMScoreAdjust in its unit), what it starts is not.
"""

import inspect
import os
import re
import subprocess
import sys
import time

CHANNEL = "org.balloon2395.ctl"
MIB = 1024 * 1024
NAME = re.compile(r"[A-Za-z0-9_.-]+")
# a value whose allocation (with its header) fills one of jemalloc's 4 KiB size classes
REDIS_VALUE_BYTES = 4000
# a first guess of what a key costs Redis in all, high on purpose: the first load falls short, and the
# top-ups use the cost it measured
REDIS_KEY_GUESS = 2 * REDIS_VALUE_BYTES


class Usage(Exception):
    """A command's arguments are wrong: exit status 2, the message as output."""


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def counters(path):
    """`NAME VALUE` lines (/proc/vmstat) or `NAME: VALUE kB` ones (/proc/meminfo) as ints."""
    out = {}
    for line in read_lines(path):
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def mib_arg(text):
    if not text.isdigit():
        raise Usage(f"not a number of MiB: {text!r}")
    return int(text)


def run(argv, **kw):
    """(exit status, output lines) of a command, stderr with stdout."""
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, **kw)
    return res.returncode, res.stdout.splitlines()


def normal_oom_score():
    """In a child: leave the agent's OOM exemption behind, the memory it holds may be killed for."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")


class Hogs:
    """memhog processes by name: a pid file and a status file (MiB held) each in `directory`."""

    def __init__(self, directory, memhog, proc="/proc"):
        self.dir, self.memhog, self.proc = directory, memhog, proc

    def pid(self, name):
        try:
            return int(read_lines(os.path.join(self.dir, name + ".pid"))[0])
        except (OSError, ValueError, IndexError):
            return None

    def alive(self, pid):
        try:
            stat = read_lines(f"{self.proc}/{pid}/stat")[0]
        except (OSError, IndexError):
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def start(self, name, mib, *options):
        if not NAME.fullmatch(name):
            raise Usage(f"bad hog name: {name!r}")
        if self.alive(self.pid(name)):
            return 1, [f"hog {name} already running"]
        os.makedirs(self.dir, exist_ok=True)
        files = [os.path.join(self.dir, name + ext) for ext in (".pid", ".status")]
        for path in files:
            if os.path.exists(path):
                os.remove(path)
        argv = [self.memhog, "-d", "-p", files[0], "-s", files[1], *options, str(mib)]
        return run(argv, preexec_fn=normal_oom_score)

    def free(self, name):
        pid = self.pid(name)
        if pid is None:
            return 1, [f"no hog {name}"]
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while self.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for ext in (".pid", ".status"):
            path = os.path.join(self.dir, name + ext)
            if os.path.exists(path):
                os.remove(path)
        return 0, [f"freed {name}"]

    def status(self, name):
        try:
            mib = read_lines(os.path.join(self.dir, name + ".status"))[0].strip()
        except (OSError, IndexError):
            mib = "0"
        state = "alive" if self.alive(self.pid(name)) else "dead"
        return f"{name} {state} {mib or 0}"

    def names(self):
        try:
            files = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        return [f[:-4] for f in files if f.endswith(".pid")]


class PageCache:
    """The image's files read into (and dropped from) the guest's page cache."""

    def __init__(self, directory):
        self.dir = directory

    def files(self):
        return [os.path.join(self.dir, f) for f in sorted(os.listdir(self.dir))]

    def fill(self, mib):
        t0, left = time.monotonic(), mib * MIB
        buf = bytearray(MIB)
        for path in self.files():
            with open(path, "rb", buffering=0) as f:
                while left > 0:
                    n = f.readinto(memoryview(buf)[:min(MIB, left)])
                    if not n:
                        break
                    left -= n
            if left <= 0:
                break
        read = (mib * MIB - left) // MIB
        line = f"read {read} MiB in {time.monotonic() - t0:.1f} s"
        return (0, [line]) if left <= 0 else (1, [line, f"the image has only {read} MiB of files"])

    def drop(self):
        for path in self.files():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return 0, ["dropped"]


class Tmpfs:
    """Files of touched pages in a tmpfs of the agent's (mounted on first use)."""

    def __init__(self, directory, mounts="/proc/mounts"):
        self.dir, self.mounts = directory, mounts

    def mounted(self):
        return any(line.split()[1:2] == [self.dir] for line in read_lines(self.mounts))

    def total_mib(self):
        return sum(os.path.getsize(os.path.join(self.dir, f)) for f in os.listdir(self.dir)) // MIB

    def fill(self, mib):
        if not self.mounted():
            os.makedirs(self.dir, exist_ok=True)
            # far above any guest's memory: what limits the fill is the guest, as for a real tmpfs user
            rc, out = run(["mount", "-t", "tmpfs", "-o", "size=64g,mode=0700", "b2395-tmpfs", self.dir])
            if rc:
                return rc, out
        chunk = bytes([0x5A]) * MIB
        path = os.path.join(self.dir, f"fill-{time.monotonic_ns()}")
        with open(path, "wb", buffering=0) as f:
            for _ in range(mib):
                f.write(chunk)
        return 0, [f"tmpfs {self.total_mib()} MiB"]

    def free(self):
        if os.path.isdir(self.dir):
            for f in os.listdir(self.dir):
                os.remove(os.path.join(self.dir, f))
        return 0, ["tmpfs 0 MiB"]


class Redis:
    """The guest's Redis through redis-cli: loaded with DEBUG POPULATE, emptied, measured."""

    def __init__(self, cli="redis-cli"):
        self.cli = cli

    def call(self, *args):
        rc, out = run([self.cli, *args])
        if rc or any(line.startswith("ERR") for line in out):
            raise RuntimeError(f"redis-cli {' '.join(args)}: {' '.join(out)}")
        return out

    def memory(self):
        """INFO memory's used_memory and used_memory_rss, in bytes."""
        fields = dict(line.strip().split(":", 1) for line in self.call("INFO", "memory") if ":" in line)
        return int(fields["used_memory"]), int(fields["used_memory_rss"])

    def info(self):
        used, rss = self.memory()
        return 0, [f"used_memory_kib {used // 1024}", f"used_memory_rss_kib {rss // 1024}"]

    def load(self, mib):
        """Populate until used_memory is within a MiB of `mib` MiB."""
        cost = REDIS_KEY_GUESS
        used, _ = self.memory()
        for _ in range(8):
            missing = mib * MIB - used
            if missing <= MIB:
                break
            keys = -(-missing // cost)
            self.call("DEBUG", "POPULATE", str(keys), f"b2395-{time.monotonic_ns()}", str(REDIS_VALUE_BYTES))
            before, (used, _) = used, self.memory()
            cost = max(1, (used - before) // keys)
        return self.info()

    def flush(self):
        self.call("FLUSHALL", "SYNC")
        self.call("MEMORY", "PURGE")
        return self.info()


class Agent:
    """The commands, each answering (exit status, output lines)."""

    def __init__(self, proc="/proc", cache_dir="/srv/b2395/cache", run_dir="/run/b2395",
                 memhog="/usr/local/bin/memhog", redis_cli="redis-cli"):
        self.proc = proc
        self.hogs = Hogs(os.path.join(run_dir, "hogs"), memhog, proc)
        self.cache = PageCache(cache_dir)
        self.tmpfs = Tmpfs(os.path.join(run_dir, "tmpfs"), os.path.join(proc, "mounts"))
        self.redis = Redis(redis_cli)

    def answer(self, line):
        """The framed reply to one command line (b"" for a line without a sequence number)."""
        seq, _, rest = line.rstrip("\r").partition(" ")
        if not seq:
            return b""
        rc, lines = self.run(rest)
        return "".join(f"{x}\n" for x in [f"@@BEGIN {seq}@@", *lines, f"@@END {seq} {rc}@@"]).encode()

    def run(self, rest):
        words = rest.split()
        if not words:
            return 0, []
        handler = getattr(self, "cmd_" + words[0], None)
        if handler is None:
            return 127, [f"unknown command: {words[0]}"]
        args = [rest.partition(" ")[2]] if words[0] == "sh" else words[1:]
        try:
            inspect.signature(handler).bind(*args)
        except TypeError:
            return 2, [f"usage: {words[0]} {' '.join(inspect.signature(handler).parameters).upper()}"]
        try:
            return handler(*args)
        except Usage as exc:
            return 2, [f"usage: {exc}"]
        except Exception as exc:  # noqa: BLE001 - the agent outlives any command
            return 1, [f"{type(exc).__name__}: {exc}"]

    def proc_file(self, name):
        return os.path.join(self.proc, name)

    # ------------------------------------------------------------ the busybox guest's commands
    def cmd_ping(self):
        return 0, ["pong"]

    def cmd_meminfo(self):
        return 0, read_lines(self.proc_file("meminfo"))

    def cmd_vmstat(self):
        return 0, read_lines(self.proc_file("vmstat"))

    def cmd_uptime(self):
        return 0, read_lines(self.proc_file("uptime"))

    def cmd_oom(self):
        _, kernel_log = run(["dmesg"])
        killed = sum("Out of memory: Killed process" in line for line in kernel_log)
        return 0, [f"oom_kill {counters(self.proc_file('vmstat')).get('oom_kill', 0)}", f"dmesg_killed {killed}"]

    def cmd_hog(self, name, mib):
        return self.hogs.start(name, mib_arg(mib))

    def cmd_ramp(self, name, step, most, interval="1000"):
        step_mib = mib_arg(step)
        return self.hogs.start(name, step_mib, "-r", str(step_mib), "-m", str(mib_arg(most)),
                               "-i", str(mib_arg(interval)))

    def cmd_free(self, name):
        return self.hogs.free(name)

    def cmd_status(self, name):
        return 0, [self.hogs.status(name)]

    def cmd_hogs(self):
        return 0, [self.hogs.status(name) for name in self.hogs.names()]

    def cmd_sh(self, code):
        return run(["bash", "-c", code])

    def cmd_poweroff(self):
        return run(["systemctl", "poweroff", "--no-block"])

    # ------------------------------------------------------------ the Debian guest's
    def cmd_swap(self):
        rows = [line.split() for line in read_lines(self.proc_file("swaps"))[1:]]
        vm, mem = counters(self.proc_file("vmstat")), counters(self.proc_file("meminfo"))
        return 0, ([f"swap {r[0]} {r[2]} {r[3]}" for r in rows if len(r) >= 4]
                   + [f"{k} {vm.get(k, 0)}" for k in ("pswpin", "pswpout")]
                   + [f"{k} {mem.get(k, 0)}" for k in ("SwapTotal", "SwapFree")])

    def cmd_cache(self, mib):
        return self.cache.fill(mib_arg(mib))

    def cmd_uncache(self):
        return self.cache.drop()

    def cmd_tmpfs(self, mib):
        return self.tmpfs.fill(mib_arg(mib))

    def cmd_tmpfs_free(self):
        return self.tmpfs.free()

    def cmd_redis(self, mib):
        return self.redis.load(mib_arg(mib))

    def cmd_redis_flush(self):
        return self.redis.flush()

    def cmd_redis_info(self):
        return self.redis.info()

    def cmd_state(self):
        _, state = run(["systemctl", "is-system-running"])
        _, failed = run(["systemctl", "--failed", "--plain", "--no-legend"])
        return 0, [f"state {' '.join(state)}"] + [f"failed {line.split()[0]}" for line in failed if line.strip()]


def serve(agent, fd, serving=lambda: True):
    """Answer the command lines read from `fd`, one at a time, while `serving()`. A read of nothing
    means no host is connected to the channel's socket: wait for one."""
    buf = b""
    while serving():
        chunk = os.read(fd, 65536)
        if not chunk:
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            reply = agent.answer(raw.decode("utf-8", "replace"))
            try:
                os.write(fd, reply)
            except OSError as exc:  # the host went away mid-reply: it asks again
                print(f"b2395-agent: reply lost: {exc}", flush=True)


def find_port(sys_dir="/sys/class/virtio-ports", timeout=60.0):
    """The device of the virtio-serial port named CHANNEL (udev's symlink may not be there yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for port in sorted(os.listdir(sys_dir)) if os.path.isdir(sys_dir) else []:
            try:
                if read_lines(os.path.join(sys_dir, port, "name"))[0] == CHANNEL:
                    return "/dev/" + port
            except (OSError, IndexError):
                continue
        time.sleep(0.2)
    return None


def main():
    port = find_port()
    if port is None:
        print(f"b2395-agent: no virtio-serial port {CHANNEL}", flush=True)
        return 1
    fd = os.open(port, os.O_RDWR)
    with open("/proc/uptime") as f:
        uptime = f.read().split()[0]
    print(f"B2395E2E: agent READY port={port} uptime {uptime}", flush=True)
    serve(Agent(), fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
