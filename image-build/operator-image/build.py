#!/usr/bin/env python3
"""Build the operator/agent OCI image without Docker: a pinned Debian base made by mmdebstrap (cached by its
inputs), the maculaos wheel and its pinned dependencies compiled by the image's own Python, written as one
OCI archive with one zstd layer (also loadable as a docker-archive) that k3s imports from
/var/lib/rancher/k3s/agent/images/.

Reproducible: every timestamp is SOURCE_DATE_EPOCH (default: the last commit's time), files are written in
sorted order with numeric owners, and the .pyc files are hash-checked, not timestamped.

Usage (as root: mmdebstrap, chroot):
  image-build/operator-image/build.py [--output DIR] [--refresh-base] [--arch arm64]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from oci import ImageConfig, write_archive  # noqa: E402  (a sibling module, not a package)

# The base: Debian 13 with Python, nothing else. `essential` has no apt: the image never installs anything.
SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES = ["python3", "tzdata", "util-linux"]
PYTHON = "3.13"
ARCH = "amd64"                  # the default; --arch arm64 builds under qemu-user-static (binfmt_misc)
# Debian architecture -> the wheel platform tags pip may choose for it.
WHEEL_PLATFORMS = {machine_arch: [f"manylinux_2_17_{m}", f"manylinux2014_{m}", f"manylinux_2_28_{m}",
                                  f"manylinux_2_34_{m}", "any"]
                   for machine_arch, m in (("amd64", "x86_64"), ("arm64", "aarch64"))}
# Documentation, manual pages and translations are of no use in a container; copyrights stay.
DPKG_OPTIONS = ["path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
                "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
                "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/lintian/*"]
# Caches and logs of the build, and the links dpkg's path-exclude left pointing at excluded files.
CUSTOMIZE_HOOKS = ['rm -rf "$1"/var/cache/* "$1"/var/lib/apt/lists/* "$1"/var/log/*',
                   'find "$1"/usr/share/doc "$1"/usr/share/man -xtype l -delete']
SITE = f"/usr/local/lib/python{PYTHON}/dist-packages"
USER_ID = 65532
IMAGE_NAME = "ghcr.io/macula-io/maculaos-operator"


def log(message: str) -> None:
    print(f"[operator-image] {message}", file=sys.stderr, flush=True)


def run(*args: str | Path, **kwargs: object) -> None:
    subprocess.run([str(a) for a in args], check=True, **kwargs)  # type: ignore[call-overload]


def source_date_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


def project_version() -> str:
    text = (REPO / "operator" / "maculaos" / "__init__.py").read_text()
    return text.split("__version__", 1)[1].split('"')[1]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(os.environ.get("MACULAOS_IMAGE_CACHE", f"{base}/maculaos/operator-image"))


def base_key(epoch: int, arch: str) -> str:
    """Everything the base tarball is made from; a change of any of them makes a new base."""
    inputs = [SUITE, MIRROR, arch, *PACKAGES, *DPKG_OPTIONS, *CUSTOMIZE_HOOKS, str(epoch // 86400 // 30)]
    return hashlib.sha256("\n".join(inputs).encode()).hexdigest()[:16]


def build_base(epoch: int, refresh: bool, arch: str) -> Path:
    """The Debian base as a tarball, cached by its inputs (and the month, so security fixes arrive)."""
    target = cache_dir() / f"base-{SUITE}-{base_key(epoch, arch)}.tar"
    if target.exists() and not refresh:
        log(f"base: cached {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.tar")
    started = time.monotonic()
    run("mmdebstrap", "--variant=essential", f"--architectures={arch}", f"--include={','.join(PACKAGES)}",
        f"--keyring={KEYRING}", *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
        *(f"--customize-hook={hook}" for hook in CUSTOMIZE_HOOKS),
        SUITE, partial, MIRROR, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    partial.rename(target)
    log(f"base: built {target} in {time.monotonic() - started:.0f}s")
    return target


def fetch_wheels(work: Path, arch: str) -> Path:
    """The project's wheel and every dependency as a wheel for the image's Python, pinned by
    tools/constraints.txt; downloads are cached per constraints file."""
    constraints = REPO / "tools" / "constraints.txt"
    digest = hashlib.sha256(constraints.read_bytes() + PYTHON.encode()).hexdigest()[:16]
    wheels = cache_dir() / f"wheels-{digest}"
    wheels.mkdir(parents=True, exist_ok=True)
    project = work / "project"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", project, REPO,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch())})  # zip entry times
    project_wheel = next(project.glob("maculaos-*.whl"))
    platform_args = [f"--platform={p}" for p in WHEEL_PLATFORMS[arch]]
    run(sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", f"--python-version={PYTHON}", "--implementation=cp", *platform_args,
        "-c", constraints, "-d", wheels, project_wheel)
    shutil.copy2(project_wheel, wheels / project_wheel.name)
    return wheels / project_wheel.name


def install_python_packages(root: Path, project_wheel: Path, arch: str) -> None:
    """Install with the host's pip into the image's site directory (no pip in the image), then compile
    with the image's own interpreter so the .pyc files match it."""
    platform_args = [f"--platform={p}" for p in WHEEL_PLATFORMS[arch]]
    run(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir",
        "--no-index", f"--find-links={project_wheel.parent}", "--only-binary=:all:",
        f"--python-version={PYTHON}", "--implementation=cp", *platform_args, "--no-compile",
        f"--target={root}{SITE}", project_wheel)
    site = root / SITE.lstrip("/")
    shutil.rmtree(site / "bin", ignore_errors=True)  # scripts with the host's shebang
    for info in site.glob("*.dist-info"):  # where the wheel came from: a path of the build machine
        (info / "direct_url.json").unlink(missing_ok=True)
        record = info / "RECORD"
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(line for line in lines if not line.startswith(f"{info.name}/direct_url.json,")))
    for cache in root.glob(f"{SITE.lstrip('/')}/**/__pycache__"):
        shutil.rmtree(cache)
    run("chroot", root, "python3", "-m", "compileall", "-q", "-j0", "--invalidation-mode=checked-hash", SITE)


def add_files(root: Path) -> None:
    """The entry point, the non-root user of the operator, and the agent's doors into the host."""
    entry = root / "usr/local/bin/maculaos"
    entry.write_text("#!/usr/bin/python3 -I\nimport sys\nfrom maculaos.cli import main\nsys.exit(main())\n")
    entry.chmod(0o755)
    sbin = root / "usr/local/sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    for tool in ("nft", "systemctl", "rauc", "grub-editenv"):  # the host's own tools, in PID 1's namespaces
        script = sbin / f"host-{tool}"
        script.write_text(f"#!/bin/sh\n# The agent runs the host's {tool}, not one of the image's.\n"
                          f"exec nsenter --target 1 --mount --uts --ipc --net --pid -- {tool} \"$@\"\n")
        script.chmod(0o755)
    with (root / "etc/passwd").open("a") as passwd:
        passwd.write(f"maculaos:x:{USER_ID}:{USER_ID}:MaculaOS operator:/nonexistent:/usr/sbin/nologin\n")
    with (root / "etc/group").open("a") as group:
        group.write(f"maculaos:x:{USER_ID}:\n")


def set_mtimes(trees: list[Path], epoch: int) -> None:
    """What this builder wrote gets the epoch as its time, whatever the checkout's file times were (the
    Debian files keep theirs, clamped later: their .pyc files are checked against them)."""
    for tree in trees:
        for path in [tree, *tree.rglob("*")]:
            os.utime(path, (epoch, epoch), follow_symlinks=False)


def image_config(version: str, epoch: int, arch: str = ARCH) -> ImageConfig:
    return ImageConfig(
        name=IMAGE_NAME, tag=version, architecture=arch, created_epoch=epoch,
        user=f"{USER_ID}:{USER_ID}", entrypoint=["/usr/local/bin/maculaos"], cmd=["--help"],
        env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
        labels={"org.opencontainers.image.title": "maculaos-operator",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": "MaculaOS operator and node agent",
                "org.opencontainers.image.licenses": "Apache-2.0",
                "io.macula.os.base": f"debian:{SUITE} ({MIRROR})"})


def build(output: Path, refresh_base: bool, arch: str = ARCH) -> Path:
    epoch = source_date_epoch()
    version = project_version()
    started = time.monotonic()
    base = build_base(epoch, refresh_base, arch)
    with tempfile.TemporaryDirectory(prefix="operator-image-") as tmp:
        work = Path(tmp)
        root = work / "rootfs"
        root.mkdir()
        run("tar", "-C", root, "--numeric-owner", "-xpf", base)
        install_python_packages(root, fetch_wheels(work, arch), arch)
        add_files(root)
        set_mtimes([root / SITE.lstrip("/"), root / "usr/local/bin", root / "usr/local/sbin", root / "etc"], epoch)
        output.mkdir(parents=True, exist_ok=True)
        archive = output / f"maculaos-operator-{version}-{arch}.tar"
        write_archive(root, image_config(version, epoch, arch), archive)
    log(f"wrote {archive} ({archive.stat().st_size / 2**20:.1f} MiB) in {time.monotonic() - started:.0f}s")
    return archive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "build" / "operator-image")
    parser.add_argument("--refresh-base", action="store_true", help="rebuild the cached Debian base")
    parser.add_argument("--arch", choices=sorted(WHEEL_PLATFORMS), default=ARCH,
                        help="the image's architecture (a foreign one runs under qemu-user-static)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("build.py needs root (mmdebstrap and chroot)", file=sys.stderr)
        return 1
    build(args.output, args.refresh_base, args.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
