"""The Debian 12 guest image of the e2e tests and of the real-guest benchmark: built from Debian's
packages by mmdebstrap into a folder, packed into an ext4 image by `mkfs.ext4 -d` (no loop mount),
booted directly (the kernel and a small initrd beside the image, no bootloader) and cached under the
hash of its recipe (tests/e2e/debian/, tests/e2e/memhog.c and FORMAT)::

    .ci/debian-image                 # build it, or reuse the cached one (as root; exit 77: cannot here)
    image = find_image()             # the current recipe's image, or ImageNotReady with the reason
    image.rootfs, image.kernel, image.initrd, image.manifest()["release"]

The cache is .cache/debian-guest/ in the checkout (git ignores it) or BALLOON_DEBIAN_CACHE; it keeps
the current recipe's image only. Debian's archive is the one apt on this host is configured with.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from .waiting import HarnessError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "tests" / "e2e" / "debian"
MEMHOG_C = ROOT / "tests" / "e2e" / "memhog.c"
SUITE = "bookworm"
# Bump when the way the image is put together changes and the recipe files do not show it.
FORMAT = 1
CACHE_MIB = 512  # files for the page cache, under /srv/b2395/cache
FREE_MIB = 384  # room left in the file system: the guest writes little (its journal is in RAM)
# the modules the initrd loads to reach the root disk (ext4 is built into the cloud kernel)
INITRD_MODULES = ("virtio_pci", "virtio_blk")
BUSYBOX = Path("/bin/busybox")  # busybox-static's, as tests/e2e/prepare.sh installs it
TOOLS = ("mmdebstrap", "mkfs.ext4", "gcc", "cpio", "dpkg-query", "apt-get")
# apt's words for a network that is not there (mmdebstrap's log): the build is impossible, not broken
NETWORK_ERRORS = ("Temporary failure resolving", "Could not resolve", "Could not connect", "Unable to connect",
                  "Network is unreachable", "Connection timed out", "Failed to fetch")


class ImageNotReady(HarnessError):
    """No image of the current recipe in the cache; the message says why and what to run."""


class CannotBuild(HarnessError):
    """This machine cannot build the image (not root, a tool missing, no network): exit 77."""


# --------------------------------------------------------------------- the cache
def cache_root() -> Path:
    env = os.environ.get("BALLOON_DEBIAN_CACHE")
    return Path(env) if env else ROOT / ".cache" / "debian-guest"


def recipe_files(recipe: Path = RECIPE) -> List[Path]:
    return sorted(p for p in recipe.rglob("*") if p.is_file() and "__pycache__" not in p.parts) + [MEMHOG_C]


def recipe_hash(files: Optional[Sequence[Path]] = None, fmt: int = FORMAT) -> str:
    """What the image is made from, as 16 hex digits: the format, each recipe file's name and bytes."""
    h = sha256(f"format {fmt} suite {SUITE} cache {CACHE_MIB} free {FREE_MIB}\n".encode())
    for path in files if files is not None else recipe_files():
        h.update(f"{path.name} {path.stat().st_size}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DebianImage:
    """A built image: the root file system, the kernel and initrd to boot it with, its manifest."""

    directory: Path

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs.ext4"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def manifest(self) -> Dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def complete(self) -> bool:
        """The manifest is written last: an interrupted build never passes for an image."""
        return all(p.is_file() for p in (self.rootfs, self.kernel, self.initrd, self.manifest_path))


def find_image(root: Optional[Path] = None) -> DebianImage:
    """The cached image of the current recipe; ImageNotReady (with the reason) when there is none."""
    root = root or cache_root()
    image = DebianImage(root / recipe_hash())
    if image.complete():
        return image
    others = [p.name for p in root.glob("*") if not p.name.startswith(".") and DebianImage(p).complete()]
    why = (f"the image in {root} ({', '.join(others)}) is of an older recipe" if others
           else f"no Debian guest image in {root}")
    raise ImageNotReady(f"{why}; run `sudo .ci/debian-image`")


def image_not_ready() -> Optional[str]:
    """None when the current recipe's image is built, else why not (a skip reason)."""
    try:
        find_image()
    except ImageNotReady as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------- Debian's archive
def debian_sources(indextargets: str) -> List[str]:
    """sources.list lines for SUITE (main, -updates, -security) on the archive and security URIs
    apt on this host uses: from `apt-get indextargets` lines `URI SUITE`."""
    archive = security = None
    for line in indextargets.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        uri, suite = parts
        if suite.endswith("-security"):
            security = security or uri
        elif "-" not in suite:
            archive = archive or uri
    if archive is None:
        raise CannotBuild("apt on this host has no Debian archive configured (apt-get indextargets)")
    lines = [f"deb {archive} {SUITE} main", f"deb {archive} {SUITE}-updates main"]
    if security:
        lines.append(f"deb {security} {SUITE}-security main")
    return lines


def host_sources() -> List[str]:
    def targets() -> str:
        return subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)",
                               "Identifier: Packages"], capture_output=True, text=True, timeout=60).stdout
    out = targets()
    if not out.strip():  # apt lists only the targets it has fetched: a host whose lists were cleaned has none
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        out = targets()
    return debian_sources(out)


def packages(recipe: Path = RECIPE) -> List[str]:
    lines = (recipe / "packages").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def mmdebstrap_argv(tree: Path, sources: Path, recipe: Path = RECIPE) -> List[str]:
    hooks = Path("/usr/share/mmdebstrap/hooks")
    # merged-usr: usr-is-merged instead of usrmerge and its Perl; eatmydata: dpkg without fsync
    hook_args = [f"--hook-dir={hooks / h}" for h in ("merged-usr", "eatmydata") if (hooks / h).is_dir()]
    return ["mmdebstrap", "--variant=essential", *hook_args, "--include=" + ",".join(packages(recipe)),
            f"--dpkgopt={recipe / 'dpkg.cfg'}", SUITE, str(tree), str(sources)]


def network_failure(log: str) -> Optional[str]:
    """The line of mmdebstrap's log saying the archive could not be reached, if any."""
    return next((line.strip() for line in log.splitlines() if any(e in line for e in NETWORK_ERRORS)), None)


# --------------------------------------------------------------------- the initrd
def load_order(modules_dep: str, wanted: Iterable[str]) -> List[str]:
    """The files (paths in modules.dep) to insmod for `wanted`, dependencies first: depmod lists
    each module's whole dependency closure, to be loaded from the last one."""
    deps: Dict[str, List[str]] = {}
    by_name: Dict[str, str] = {}
    for line in modules_dep.splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[os.path.basename(path).split(".ko")[0]] = path
    order: List[str] = []
    for name in wanted:
        if name not in by_name:
            raise HarnessError(f"module {name} is not in modules.dep")
        for path in [*reversed(deps[by_name[name]]), by_name[name]]:
            if path not in order:
                order.append(path)
    return order


def pack_initrd(tree: Path, release: str, out: Path) -> None:
    """A gzipped newc cpio: busybox, initrd-init.sh as /init, the root disk's modules, /dev/console."""
    moddir = tree / "lib" / "modules" / release
    order = load_order((moddir / "modules.dep").read_text(), INITRD_MODULES)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        stage = Path(tmp)
        for d in ("bin", "dev", "etc", "proc", "sys", "newroot"):
            (stage / d).mkdir()
        shutil.copy2(BUSYBOX, stage / "bin" / "busybox")
        shutil.copy2(RECIPE / "initrd-init.sh", stage / "init")
        for rel in order:
            (stage / "lib" / "modules" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(moddir / rel, stage / "lib" / "modules" / rel)
        (stage / "etc" / "modules.order").write_text("".join(f"{rel}\n" for rel in order))
        os.mknod(stage / "dev" / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
        names = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
        archive = subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=stage,
                                 input="\0".join([".", *names]).encode() + b"\0", capture_output=True, check=True)
    out.write_bytes(gzip.compress(archive.stdout, mtime=0))


# --------------------------------------------------------------------- the build
def tree_kib(tree: Path) -> int:
    return int(subprocess.run(["du", "-sk", "--apparent-size", str(tree)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def mkfs_argv(tree: Path, image: Path, size_mib: int) -> List[str]:
    # inode tables and journal written now: the guest's kernel would otherwise zero them after the
    # boot, writing under emulation while the test measures
    return ["mkfs.ext4", "-q", "-F", "-L", "b2395root", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0",
            "-d", str(tree), str(image), f"{size_mib}M"]


def image_size_mib(kib: int) -> int:
    """The file system's size for a tree of `kib`: its data, an eighth for ext4's own, FREE_MIB."""
    return -(-(kib + kib // 8) // 1024) + FREE_MIB


def checked(argv: Sequence[str], log: Path, **kw: Any) -> None:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        res = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    if res.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise HarnessError(f"{argv[0]} exited {res.returncode}; the end of {log}:\n{tail}")


def bootstrap(work: Path, tree: Path, log: Path) -> None:
    sources = work / "sources.list"
    sources.write_text("".join(f"{line}\n" for line in host_sources()))
    # the kernel's packaging makes no initramfs-tools initrd: the image boots with pack_initrd's
    env = dict(os.environ, INITRD="No")
    try:
        checked(mmdebstrap_argv(tree, sources), log, env=env)
    except HarnessError:
        down = network_failure(log.read_text(errors="replace"))
        if down:
            raise CannotBuild(f"Debian's archive cannot be reached: {down}") from None
        raise


def assemble(work: Path, log: Path, say: Callable[[str], None]) -> Dict[str, Any]:
    """Build everything of an image in `work`; returns the manifest's figures."""
    tree = work / "tree"
    t0 = time.monotonic()
    bootstrap(work, tree, log)
    say(f"mmdebstrap done in {time.monotonic() - t0:.0f} s")
    memhog = work / "memhog"
    checked(["gcc", "-static", "-O2", "-Wall", "-o", str(memhog), str(MEMHOG_C)], log)
    checked(["bash", str(RECIPE / "customize.sh"), str(tree), str(memhog), str(CACHE_MIB)], log)
    memhog.unlink()  # in the image now
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise HarnessError(f"expected one kernel in {tree / 'boot'}, found {[k.name for k in kernels]}")
    release = kernels[0].name[len("vmlinuz-"):]
    shutil.copy2(kernels[0], work / "vmlinuz")
    pack_initrd(tree, release, work / "initrd.img")
    kib = tree_kib(tree)
    checked(mkfs_argv(tree, work / "rootfs.ext4", image_size_mib(kib)), log)
    versions = subprocess.run(["chroot", str(tree), "dpkg-query", "-W", "-f", "${Package} ${Version}\n"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    return {"release": release, "tree_kib": kib, "packages": len(versions),
            "kernel_package": next((v for v in versions if v.startswith("linux-image-")), "")}


def file_sizes(image: DebianImage) -> Dict[str, int]:
    """Apparent and allocated bytes of the image's files (the root file system is sparse)."""
    out: Dict[str, int] = {}
    for path in (image.rootfs, image.kernel, image.initrd):
        st = path.stat()
        out[path.name] = st.st_size
        out[path.name + ":allocated"] = st.st_blocks * 512
    return out


def prune(root: Path) -> None:
    """Remove the images of other recipes and any leftover build (the lock is held: none is running)."""
    for p in root.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def build(root: Optional[Path] = None, force: bool = False,
          say: Callable[[str], None] = print) -> DebianImage:
    """The current recipe's image: reused when cached (unless `force`), else built; CannotBuild when
    this machine cannot build it."""
    refuse_unfit_host()
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        image = DebianImage(root / recipe_hash())
        if image.complete() and not force:
            say(f"reusing {image.directory}")
            return image
        prune(root)
        work = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
        t0 = time.monotonic()
        try:
            figures = assemble(work, work / "build.log", say)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # what went wrong is in the error, with the log's end
            raise
        shutil.rmtree(work / "tree")
        work.rename(image.directory)
        figures.update(recipe=image.directory.name, built_at=int(time.time()),
                       build_seconds=round(time.monotonic() - t0, 1), sizes=file_sizes(image))
        image.manifest_path.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
        return image


def refuse_unfit_host() -> None:
    if os.uname().sysname != "Linux" or os.uname().machine != "x86_64":
        raise CannotBuild("the Debian guest image is built on an x86_64 Linux host")
    if os.geteuid() != 0:
        raise CannotBuild("building the Debian guest image needs root (mmdebstrap, device nodes)")
    missing = [t for t in TOOLS if shutil.which(t) is None] + ([str(BUSYBOX)] if not BUSYBOX.is_file() else [])
    if missing:
        raise CannotBuild(f"missing {', '.join(missing)}: .ci/debian-image installs them")


def describe(image: DebianImage) -> str:
    m = image.manifest()
    sizes = m["sizes"]
    return (f"{image.directory}: Debian {SUITE}, kernel {m['release']}, {m['packages']} packages, "
            f"root file system {sizes['rootfs.ext4'] >> 20} MiB ({sizes['rootfs.ext4:allocated'] >> 20} MiB "
            f"allocated), kernel {sizes['vmlinuz'] >> 20} MiB, initrd {sizes['initrd.img'] >> 10} KiB, "
            f"built in {m['build_seconds']:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=".ci/debian-image", description=__doc__.split("::")[0])
    parser.add_argument("--force", action="store_true", help="build again even when cached")
    parser.add_argument("--print-dir", action="store_true", help="print the image's folder (or fail)")
    args = parser.parse_args(argv)
    if args.print_dir:
        try:
            print(find_image().directory)
        except ImageNotReady as exc:
            print(f"debian-image: {exc}", file=sys.stderr)
            return 1
        return 0
    t0 = time.monotonic()
    try:
        image = build(force=args.force, say=lambda text: print(f"debian-image: {text}", flush=True))
    except CannotBuild as exc:
        print(f"debian-image: SKIP: {exc}", file=sys.stderr)
        return 77
    except HarnessError as exc:
        print(f"debian-image: ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"debian-image: {describe(image)}; ready in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
