"""`maculaos image build`: the definition -> a Debian 13 root (mmdebstrap) -> squashfs + kernel + initrd.

Downloads are cached under ~/.cache/maculaos/image (apt's .debs through mmdebstrap's sync-in/sync-out
hooks, the Python wheels through pip), so a re-run on the same machine downloads only what changed."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from maculaos import __version__
from maculaos.errors import MaculaosError
from maculaos.host.bundles import BundleError
from maculaos.host.firewall import DEFAULT_RULESET_PATH, render_default_ruleset
from maculaos.image import airgap, debcache, disk, emulation, firmware, grub, iso, noderuntime, osrelease
from maculaos.image.bundle import build_bundle, compatible
from maculaos.image.definition import ImageDefinition
from maculaos.image.signing import SigningError, SigningIdentity, sign_file

# Build-machine tools, and the Debian package that brings each (named in a missing-tool error).
TOOLS = {"mmdebstrap": "mmdebstrap", "mksquashfs": "squashfs-tools", "rauc": "rauc", "openssl": "openssl",
         "zstd": "zstd", "modinfo": "kmod", **disk.TOOLS}
# The image's python3 (Debian 13): the platform the wheels are chosen for.
IMAGE_PYTHON = "3.13"
WHEEL_PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "any"]
# The same for every architecture the definition allows (Debian name -> wheel platform tags).
WHEEL_PLATFORMS_BY_ARCH = {"amd64": WHEEL_PLATFORMS,
                           "arm64": ["manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_28_aarch64",
                                     "any"]}
# Outputs with a boot loader: GRUB for BIOS and UEFI on x86 only so far (grub.py, disk.py, iso.py). Other
# architectures get the root, its boot files, the rootfs tar and the RAUC bundle (image-build/README.md).
BOOTABLE_ARCHES = ("amd64",)
# Documentation and translations are not needed on a node; copyright files stay (licences).
DPKG_OPTIONS = ["path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
                "path-exclude=/usr/share/info/*",
                # GRUB's prebuilt EFI images (5 MB compressed): `maculaos install` and the build make their own with
                # grub-mkimage from the module folders.
                "path-exclude=/usr/lib/grub/*-efi/monolithic/*",
                # git's other server and mail helpers, 2.3 MB each (a statically linked libgit apiece):
                # daemon, shell, http-push, imap-send, scalar. http-backend stays: the node's git server
                # (host/gitserver.py). Clone, fetch, pull and push over ssh and https stay.
                *(f"path-exclude=/usr/{d}/{tool}" for d in ("bin", "lib/git-core") for tool in (
                    "git-daemon", "git-shell", "git-http-push", "git-imap-send", "scalar")),
                # The node-runtime profile's CNI plugins: the four its pod network uses (kubernetes.py, and
                # `loopback` for every pod's lo); containerd's v1 shims, which nothing uses since 1.5.
                "path-exclude=/usr/lib/cni/*",
                *(f"path-include=/usr/lib/cni/{p}" for p in ("bridge", "host-local", "loopback", "portmap")),
                "path-exclude=/usr/bin/containerd-shim", "path-exclude=/usr/bin/containerd-shim-runc-v1",
                # vim's help, translations, tutor and spell files (27 MB unpacked), as man pages above.
                *(f"path-exclude=/usr/share/vim/vim*/{d}/*" for d in ("doc", "lang", "tutor", "spell")),
                # Kernel modules for hardware an edge node does not have (docs/benchmarks.md, "Image size"):
                # sound cards (the sound core stays: thinkpad_acpi needs it), InfiniBand/RDMA and what only
                # runs over it, ISDN, staging drivers, TV tuners, capture cards, radios. Not rc-core (i915 and
                # amdgpu need it); tests/image/test_contents.py checks every module kept has its dependencies.
                *(f"path-exclude=/usr/lib/modules/*/kernel/{d}" for d in (
                    "sound/soc/*", "sound/pci/*", "sound/usb/*", "sound/firewire/*", "drivers/soundwire/*",
                    "drivers/infiniband/*", "net/rds/*", "net/smc/*", "net/sunrpc/xprtrdma/*", "net/9p/9pnet_rdma.*",
                    "drivers/nvme/host/nvme-rdma.*", "drivers/nvme/target/nvmet-rdma.*", "drivers/isdn/*",
                    "drivers/staging/*", "drivers/media/dvb-frontends/*", "drivers/media/tuners/*",
                    "drivers/media/pci/*", "drivers/media/radio/*", "drivers/media/usb/dvb-usb*",
                    "drivers/media/*/b2c2/*", "drivers/base/regmap/regmap-sdw*", "drivers/mfd/cs42l43-sdw.*"))]
# zstd level of the root: 15 (mksquashfs's default) packs the shipped root 9.2 MB (3.4 %) smaller than 9 for
# ~1 min more of build; zstd decompresses as fast either way (docs/benchmarks.md). 19 took 7 min.
SQUASHFS_ZSTD_LEVEL = 15
# Block size: 256 KiB compresses 4 MB better than the default 128 KiB; 1 MiB 4 MB more but doubles the
# decompression a cold Python start pays (small files share fragment blocks): docs/benchmarks.md.
SQUASHFS_BLOCK = 256 * 1024
K3S_MISSING = "not included (built without --k3s-binary; this machine cannot reach the upstream release)"


class BuildError(MaculaosError):
    """The build cannot go on; the message says what to do."""


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maculaos" / "image"


@dataclass(frozen=True)
class BuildInputs:
    """Everything a build reads besides the network: its digest keys caches of finished builds."""

    definition: ImageDefinition
    repo_root: Path
    signing: SigningIdentity
    """Signs the bundle and SHA256SUMS; its keyring goes into the image (/etc/rauc/keyring.pem)."""
    k3s_binary: Path | None = None
    # A built operator archive (`--operator-image`); None: built from this checkout and cached.
    operator_image: Path | None = None
    # The kubelet and kube-proxy for the node-runtime profile (`--node-binaries`; tools/install.sh's).
    node_binaries: Path | None = None

    @property
    def node_runtime(self) -> bool:
        return noderuntime.PROFILE in self.definition.profiles

    @property
    def image_build(self) -> Path:
        return self.repo_root / "image-build"

    def digest(self) -> str:
        """sha256 over the definition, every file copied into the image, and the build code itself."""
        located = {"overlays": [self._name(p) for p in self.definition.overlays],
                   "extensions": [self._name(p) for p in self.definition.extensions]}
        h = hashlib.sha256(self.definition.model_copy(update=located).model_dump_json(by_alias=True).encode())
        # pyproject.toml and README.md: the operator archive's wheel is built from them.
        files = [self.image_build / "customize.sh", self.repo_root / "tools" / "constraints.txt",
                 self.repo_root / "pyproject.toml", self.repo_root / "README.md"]
        trees = [*self.definition.overlays, self.repo_root / "operator" / "maculaos",
                 self.image_build / "operator-image", self.repo_root / "charts"]
        for tree in trees:
            files += sorted(p for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        if self.k3s_binary:
            files.append(self.k3s_binary)
        if self.node_runtime:
            files += noderuntime.node_binaries(self.node_binaries or self.repo_root / ".tools" / "bin")
        files.append(self.signing.keyring)
        if self.operator_image:
            files.append(self.operator_image)
        for f in files:
            h.update(str(self._name(f)).encode() + b"\0" + f.read_bytes() + b"\0")
        return h.hexdigest()[:16]

    def _name(self, path: Path) -> Path:
        """A path as the digest names it: relative to the checkout (two checkouts of one commit are the same
        inputs), else its file name (an input from elsewhere counts by its content)."""
        return path.relative_to(self.repo_root) if path.is_relative_to(self.repo_root) else Path(path.name)


@dataclass(frozen=True)
class BuildResult:
    squashfs: Path
    kernel: Path
    initrd: Path
    seconds: float
    k3s: str
    outputs: tuple[Path, ...] = ()
    """Every file in the output folder SHA256SUMS covers."""
    signing: str = ""
    firmware: str = ""
    """What the firmware selection kept and removed (maculaos.image.firmware)."""


def source_date_epoch(repo_root: Path) -> int:
    """$SOURCE_DATE_EPOCH, else the last commit's time (same inputs, same timestamps), else now."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    git = subprocess.run(["git", "-C", str(repo_root), "log", "-1", "--format=%ct"],
                         capture_output=True, text=True, check=False)
    return int(git.stdout.strip()) if git.returncode == 0 and git.stdout.strip() else int(time.time())


def _pins(constraints: Path, names: list[str]) -> list[str]:
    """name==version for each Python distribution, from tools/constraints.txt (the tested pins)."""
    def norm(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")
    pins = {}
    for line in constraints.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[norm(name.strip())] = version.strip()
    missing = [n for n in names if norm(n) not in pins]
    if missing:
        raise BuildError(f"python: {missing[0]} has no pin in {constraints}")
    return [f"{n}=={pins[norm(n)]}" for n in names]


def choose_wheels(folder: Path, pins: list[str], platforms: list[str]) -> list[Path]:
    """The wheel of each pin for the image's Python in `folder`, which holds the wheels of every
    architecture built on this machine: one for these platform tags, or a pure-Python one."""
    chosen = []
    for pin in pins:
        name, version = pin.split("==")
        prefix = f"{name.lower().replace('-', '_')}-{version}-"
        found = [w for w in folder.glob("*.whl") if w.name.lower().startswith(prefix)
                 and ("cp313" in w.name or "none-any" in w.name or "abi3" in w.name)
                 and any(tag in platforms for tag in w.name[:-len(".whl")].split("-")[-1].split("."))]
        if not found:
            raise BuildError(f"no wheel for {pin}, Python {IMAGE_PYTHON} and {platforms[0]} in {folder}")
        chosen.append(sorted(found)[0])
    return chosen


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    print(f"[image] {what}", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise BuildError(f"{what} failed (exit {result.returncode}): {shlex.join(cmd[:6])} ...")


def _pip_target_args(platforms: list[str]) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--implementation", "cp"]
    for p in platforms:
        args += ["--platform", p]
    return args


class ImageBuilder:
    """One build: payload (overlays, files, Python), the root by mmdebstrap, then the artefacts."""

    def __init__(self, inputs: BuildInputs, out: Path, cache: Path | None = None) -> None:
        self.inputs = inputs
        self.definition = inputs.definition
        self.out = out
        self.cache = cache or default_cache()
        self.epoch = source_date_epoch(inputs.repo_root)
        self.operator_reference = "not staged"

    def check_tools(self) -> None:
        missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
        if missing:
            raise BuildError(f"missing build tools: {', '.join(missing)}; tools/install.sh installs them")
        if os.geteuid() != 0:
            raise BuildError("the image build runs mmdebstrap in root mode (files owned by root in the "
                             "image): run it as root")
        try:
            how = emulation.check(self.definition.arch)
        except emulation.EmulationError as exc:
            raise BuildError(str(exc)) from exc
        print(f"[image] {self.definition.arch} on this {emulation.host_arch()} machine: {how}", file=sys.stderr,
              flush=True)

    @property
    def wheel_platforms(self) -> list[str]:
        return WHEEL_PLATFORMS_BY_ARCH[self.definition.arch]

    def fetch_wheels(self) -> list[Path]:
        """The pinned wheels for the image's python, downloaded once into the cache."""
        wheels = self.cache / "wheels"
        pins = _pins(self.inputs.repo_root / "tools" / "constraints.txt", self.definition.python)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
              *_pip_target_args(self.wheel_platforms), *pins],
             f"Python wheels for {IMAGE_PYTHON} on {self.definition.arch}: {' '.join(pins)}")
        return choose_wheels(wheels, pins, self.wheel_platforms)

    def check_operator_archive(self, archive: Path) -> None:
        """The pre-loaded operator image must be built for the image's architecture."""
        try:
            archive_arch = airgap.archive_architecture(archive)
        except airgap.AirgapError as exc:
            raise BuildError(str(exc)) from exc
        if archive_arch != self.definition.arch:
            raise BuildError(f"--operator-image {archive} is built for {archive_arch}, this image for "
                             f"{self.definition.arch}: its pods could not start on the node")

    def build_info(self) -> str:
        d = self.definition
        k3s = K3S_MISSING
        if self.inputs.k3s_binary:
            digest = hashlib.sha256(self.inputs.k3s_binary.read_bytes()).hexdigest()
            k3s = f"included: /usr/local/bin/k3s sha256 {digest}"
        lines = {
            "MACULAOS_VERSION": d.version,
            "MACULAOS_ARCH": d.arch,
            "DEBIAN_SUITE": d.suite,
            "BUILD_EPOCH": str(self.epoch),
            "BUILD_DATE": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.epoch)),
            "BUILD_INPUTS": self.inputs.digest(),
            "BUILD_TOOL": f"maculaos {__version__}",
            "PROFILES": ",".join(d.profiles),
            "EXTENSIONS": ",".join(p.name for p in d.extensions) or "none",
            "K3S": k3s,
            "SIGNING": self.inputs.signing.describe(),
            "LOGIN_USER": d.user,
            "OPERATOR_IMAGE": self.operator_reference,
        }
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in lines.items())

    def stage_payload(self, payload: Path, wheels: list[Path], operator_archive: Path) -> None:
        """Everything the build adds on top of Debian's packages, as a tree copied over the root."""
        d = self.definition
        # First, so that overlays and extension files may replace the k3s config.
        reference = airgap.stage(payload, operator_archive, self.inputs.repo_root, d.version, self.epoch)
        digest = hashlib.sha256(operator_archive.read_bytes()).hexdigest()
        archive_path = f"/{airgap.SHARE.as_posix()}/images/{operator_archive.name}"
        self.operator_reference = f"{reference} {archive_path} sha256 {digest}"
        for overlay in d.overlays:
            shutil.copytree(overlay, payload, symlinks=True, dirs_exist_ok=True)
        for path, content in d.files.items():
            target = payload / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        firstboot = payload / "usr/lib/maculaos/firstboot.sh"
        firstboot.parent.mkdir(parents=True, exist_ok=True)
        firstboot.write_text("# First-boot commands from the image definition and its extensions.\n"
                             + "".join(f"{c}\n" for c in d.firstboot))
        # The firewall of a node without config.yaml (maculaos-firewall.service), from the one port list.
        (payload / DEFAULT_RULESET_PATH).write_text(render_default_ruleset())
        info = payload / "etc/maculaos/build-info"
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(self.build_info())
        (payload / osrelease.OS_RELEASE).parent.mkdir(parents=True, exist_ok=True)
        (payload / osrelease.OS_RELEASE).write_text(osrelease.os_release(d.version, d.suite))
        self._rauc_compatible(payload / "etc/rauc/system.conf")
        keyring = payload / "etc/rauc/keyring.pem"
        keyring.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.inputs.signing.keyring, keyring)
        site = payload / "usr/lib/python3/dist-packages"
        # By name from the wheel folder, not by file path: a path would be recorded in direct_url.json
        # (the cache's location inside the image).
        pins = [f"{w.name.split('-')[0]}=={w.name.split('-')[1]}" for w in wheels]
        if wheels:
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-compile",
                  "--find-links", str(wheels[0].parent), "--target", str(site),
                  *_pip_target_args(self.wheel_platforms), *pins], "Python packages into the image")
        shutil.copytree(self.inputs.repo_root / "operator" / "maculaos", site / "maculaos",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
        entry = payload / "usr/bin/maculaos"
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text("#!/usr/bin/python3\nimport sys\nfrom maculaos.cli import main\nsys.exit(main())\n")
        entry.chmod(0o755)
        if self.inputs.node_runtime:
            noderuntime.stage(payload, self.inputs.node_binaries or self.inputs.repo_root / ".tools" / "bin",
                              self.inputs.repo_root, self.cache, self.epoch, d.arch)
        if self.inputs.k3s_binary:
            k3s = payload / "usr/local/bin/k3s"
            k3s.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.inputs.k3s_binary, k3s)
            k3s.chmod(0o755)
        # The payload's own times (a checkout's, pip's) say nothing about the image: all are the epoch,
        # .py files included (their .pyc files are hash-based: customize.sh).
        for top, dirs, files in os.walk(payload):
            for name in [*dirs, *files]:
                os.utime(os.path.join(top, name), (self.epoch, self.epoch), follow_symlinks=False)
        os.utime(payload, (self.epoch, self.epoch))

    def _rauc_compatible(self, conf: Path) -> None:
        """RAUC's compatible in the image is the one its bundles carry (maculaos-<arch>): the overlay's
        system.conf names amd64's; a build for another architecture rewrites that one line."""
        if not conf.exists():
            return
        lines = conf.read_text().splitlines(keepends=True)
        found = [i for i, line in enumerate(lines) if line.startswith("compatible=")]
        if len(found) != 1:
            raise BuildError(f"{conf}: expected one compatible= line, found {len(found)}")
        wanted = f"compatible={compatible(self.definition.arch)}\n"
        if lines[found[0]] != wanted:
            lines[found[0]] = wanted
            conf.write_text("".join(lines))

    def mmdebstrap_command(self, root: Path, payload: Path, debs_in: Path, debs_out: Path,
                           firmware_files: tuple[Path, Path] | None = None) -> list[str]:
        """debs_in: this build's snapshot of the .deb cache; debs_out: where its .debs go (see debcache);
        firmware_files: the firmware policy (JSON) the selection step reads and the summary it writes."""
        d = self.definition
        firmware_hooks: list[str] = []
        if firmware_files:
            policy, report = firmware_files
            # Before the overlays (their firmware is never removed) and customize.sh (the initramfs and its
            # early microcode are built from the kept files). This Python and this checkout's package.
            package_root = Path(__file__).resolve().parents[2]
            firmware_hooks = [f"--customize-hook=PYTHONPATH={shlex.quote(str(package_root))} "
                              f"{shlex.quote(sys.executable)} -m maculaos.image.firmware {step} \"$1\" "
                              f"{shlex.quote(str(policy))} {shlex.quote(str(report))}"
                              for step in ("select", "initramfs-only")]
        customize = self.inputs.image_build / "customize.sh"
        sources = []
        for mirror in d.mirrors:
            uri, _, suite = mirror.partition(" ")
            sources.append(f"deb {uri} {suite or d.suite} {' '.join(d.components)}")
        return [
            "mmdebstrap", "--mode=root", "--variant=minbase", f"--architectures={d.arch}",
            f"--include={','.join(d.debian_packages())}",
            *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
            "--aptopt=Acquire::Retries \"3\"",
            # mmdebstrap's documented cache pattern: .debs in before, new ones out after installing.
            "--skip=essential/unlink",
            "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
            f"--setup-hook=sync-in {debs_in} /var/cache/apt/archives/",
            f"--customize-hook=sync-out /var/cache/apt/archives {debs_out}",
            *firmware_hooks[:1],
            f"--customize-hook=sync-in {payload} /",
            f"--customize-hook=copy-in {customize} /tmp",
            f"--customize-hook=chroot \"$1\" sh /tmp/customize.sh {d.user}",
            *firmware_hooks[1:],
            "--customize-hook=rm -f \"$1\"/tmp/customize.sh",
            d.suite, str(root), *sources,
        ]

    def build(self) -> BuildResult:
        self.check_tools()
        if self.inputs.operator_image:      # before any download
            self.check_operator_archive(self.inputs.operator_image)
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        work = self.cache / "work"
        work.mkdir(parents=True, exist_ok=True)
        wheels = self.fetch_wheels()
        operator_archive = self.inputs.operator_image or airgap.operator_archive(
            self.inputs.repo_root, self.cache, self.epoch, self.definition.arch)
        self.check_operator_archive(operator_archive)
        env = os.environ | {"SOURCE_DATE_EPOCH": str(self.epoch)}
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            payload, root = Path(tmp) / "payload", Path(tmp) / "root"
            debs_in, debs_out = Path(tmp) / "debs-in", Path(tmp) / "debs-out"
            payload.mkdir()
            debs_out.mkdir()
            self.stage_payload(payload, wheels, operator_archive)
            debcache.snapshot(self.cache / "debs", debs_in)
            policy, report = Path(tmp) / "firmware-policy.json", Path(tmp) / "firmware-report.json"
            policy.write_text(self.definition.firmware.model_dump_json())
            _run(self.mmdebstrap_command(root, payload, debs_in, debs_out, (policy, report)),
                 f"Debian {self.definition.suite} root by mmdebstrap "
                 f"({len(self.definition.debian_packages())} packages)", env)
            firmware_summary = firmware.Selection(**json.loads(report.read_text())).describe()
            debcache.publish(debs_out, self.cache / "debs")
            clamp_mtimes(root, self.epoch)
            kernel, initrd = self._boot_files(root)
            d = self.definition
            result = BuildResult(self.out / d.artifact("squashfs"), self.out / d.artifact("kernel"),
                                 self.out / d.artifact("initrd"), 0.0,
                                 K3S_MISSING if not self.inputs.k3s_binary else "included",
                                 firmware=firmware_summary)
            shutil.copyfile(kernel, result.kernel)
            shutil.copyfile(initrd, result.initrd)
            drop_boot_files(root, kernel, initrd)
            result.squashfs.unlink(missing_ok=True)
            _run(["mksquashfs", str(root), str(result.squashfs), "-comp", "zstd", "-Xcompression-level",
                  str(SQUASHFS_ZSTD_LEVEL), "-b", str(SQUASHFS_BLOCK), "-noappend", "-quiet",
                  "-no-progress"], "squashfs (zstd) of the root", env)
            rootfs_tar(root, self.out / d.artifact("rootfs.tar.zst"), self.epoch)
        (self.out / d.artifact("build-info")).write_text(self.build_info())
        outputs = self.write_outputs()
        return BuildResult(result.squashfs, result.kernel, result.initrd, time.monotonic() - started, result.k3s,
                           outputs, self.inputs.signing.describe(), result.firmware)

    def write_outputs(self) -> tuple[Path, ...]:
        """From the squashfs, kernel and initrd in the output folder: the raw disk image, qcow2, the hybrid
        live/installer ISO, the signed RAUC bundle, SHA256SUMS over everything and its detached signature."""
        d = self.definition
        art = {fmt: self.out / d.artifact(fmt) for fmt in ("squashfs", "kernel", "initrd", "build-info",
                                                            "rootfs.tar.zst", "img", "qcow2", "iso", "raucb",
                                                            "cert.pem")}
        if d.arch not in BOOTABLE_ARCHES:
            return self._outputs_without_boot_media(art)
        print("[image] raw disk image (GPT, GRUB BIOS+UEFI)", file=sys.stderr, flush=True)
        try:
            disk.build_disk(disk.DiskInputs(
                squashfs=art["squashfs"], boot=disk.BootFiles(art["kernel"], art["initrd"]), version=d.version,
                cmdline=d.kernel_cmdline, esp_mib=d.disk.esp_mib, slot_mib=d.disk.slot_mib,
                data_mib=d.disk.data_mib, seed=self.inputs.digest(), epoch=self.epoch), art["img"])
            print("[image] qcow2", file=sys.stderr, flush=True)
            disk.qcow2(art["img"], art["qcow2"])
            print("[image] hybrid ISO (BIOS+UEFI, CD or USB stick; live, install, recovery)", file=sys.stderr,
                  flush=True)
            iso.build_iso(iso.inputs_for(d, self.out, self.epoch), art["iso"])
            print("[image] RAUC bundle (verity, signed)", file=sys.stderr, flush=True)
            build_bundle(art["squashfs"], art["kernel"], art["initrd"], art["raucb"], d.version, d.arch,
                         self.inputs.digest(), self.inputs.signing)
            shutil.copyfile(self.inputs.signing.cert, art["cert.pem"])
            outputs = tuple(p for p in art.values() if p.exists())
            sums = self._checksums(list(outputs))
            sign_file(self.inputs.signing, sums)
        except (disk.DiskError, grub.GrubError, iso.IsoError, BundleError, SigningError) as exc:
            raise BuildError(str(exc)) from exc
        return outputs

    def _outputs_without_boot_media(self, art: dict[str, Path]) -> tuple[Path, ...]:
        """An architecture without a boot loader here yet (arm64: GRUB's arm64-efi modules are not
        installable on an amd64 build machine): the signed bundle and SHA256SUMS over what there is."""
        d = self.definition
        print(f"[image] no disk image, qcow2 or ISO for {d.arch} yet; RAUC bundle (verity, signed)",
              file=sys.stderr, flush=True)
        try:
            build_bundle(art["squashfs"], art["kernel"], art["initrd"], art["raucb"], d.version, d.arch,
                         self.inputs.digest(), self.inputs.signing)
            shutil.copyfile(self.inputs.signing.cert, art["cert.pem"])
            outputs = tuple(p for fmt, p in art.items() if p.exists() and fmt not in ("img", "qcow2", "iso"))
            sign_file(self.inputs.signing, self._checksums(list(outputs)))
        except (BundleError, SigningError) as exc:
            raise BuildError(str(exc)) from exc
        return outputs

    @staticmethod
    def _boot_files(root: Path) -> tuple[Path, Path]:
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise BuildError(f"expected one kernel and one initrd in /boot, found {kernels} {initrds}")
        return kernels[0], initrds[0]

    def _checksums(self, files: list[Path]) -> Path:
        lines = [f"{_sha256(f)}  {f.name}\n" for f in sorted(files)]
        sums = self.out / "SHA256SUMS"
        sums.write_text("".join(lines))
        return sums


def drop_boot_files(root: Path, kernel: Path, initrd: Path) -> None:
    """Take the kernel and initramfs out of the root, and the links to them (Debian's /vmlinuz and
    /initrd.img). Nothing on a node reads them there: GRUB reads each slot's copy on the ESP, put there by
    the disk image, `maculaos install` (from the ISO's /live) and the update bundle, which carry them
    beside the squashfs. In the squashfs as well, they were in the ISO twice: 25-30 MB."""
    for link in (*root.glob("vmlinuz*"), *root.glob("initrd.img*"), *(root / "boot").glob("vmlinuz*"),
                 *(root / "boot").glob("initrd.img*")):
        if link.is_symlink():
            link.unlink()
    kernel.unlink()
    initrd.unlink()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def rootfs_tar(root: Path, target: Path, epoch: int) -> None:
    """The root as a tar (containers, chroots, other installers), the same bytes from the same tree:
    sorted, numeric owners, times clamped to the epoch, zstd. `--xattrs` makes it a POSIX (pax) tar, whose
    extended headers would carry each file's atime and ctime (the times of this build) and a folder name
    with tar's process id: both are left out."""
    _run(["tar", "--create", "--file", str(target), "--directory", str(root), "--sort=name",
          "--numeric-owner", "--xattrs", f"--mtime=@{epoch}", "--clamp-mtime",
          "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
          "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./run/*",
          "--use-compress-program=zstd -T0 -q", "."], "rootfs tar (zstd)",
         os.environ | {"SOURCE_DATE_EPOCH": str(epoch)})


def clamp_mtimes(root: Path, epoch: int) -> int:
    """Reproducible times: whatever the build itself wrote or removed (payload, maintainer scripts,
    customize.sh, mmdebstrap's clean-up) gets the epoch; files from .debs keep their older times. .py
    files are left alone: Debian's .pyc files record their source's time and would go stale. Returns
    how many entries were changed."""
    changed = 0
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files, ""]:
            path = os.path.join(top, name) if name else top
            if name.endswith(".py"):
                continue
            if os.lstat(path).st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
                changed += 1
    return changed


def summary(result: BuildResult) -> str:
    files = result.outputs or (result.squashfs, result.kernel, result.initrd)
    sizes = {p.name: p.stat().st_size for p in files}
    return json.dumps({"files": sizes, "seconds": round(result.seconds, 1), "k3s": result.k3s,
                       "signing": result.signing, "firmware": result.firmware}, indent=2)
