"""The operator image as k3s would import it: built by image-build/operator-image/build.py (no Docker),
its archive read back as containerd reads it, its root filesystem checked for what must and must not be
in it, and its entry point run in a chroot as the operator's non-root user."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from maculaos import __version__

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "image-build" / "operator-image" / "build.py"
SITE = "usr/local/lib/python3.13/dist-packages"
MAX_COMPRESSED_MIB = 150
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"

pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]


def build(output: Path) -> Path:
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (mmdebstrap, chroot); CI runs as root")
    subprocess.run([sys.executable, str(BUILDER), f"--output={output}"], check=True, timeout=1100)
    return next(output.glob("maculaos-operator-*.tar"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def layout(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layout")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="tar")
    return out


def blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, f"blob {digest} does not match its digest"
    return data


@pytest.fixture(scope="module")
def image(layout: Path) -> dict[str, dict[str, object]]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(layout, index["manifests"][0]["digest"]))
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    return {"index": index, "manifest": manifest, "config": config}


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def decompress_layer(media_type: str, data: bytes) -> bytes:
    """As containerd does: by the media type, which must say what the bytes are."""
    assert media_type == "application/vnd.oci.image.layer.v1.tar+zstd", media_type
    assert data.startswith(ZSTD_MAGIC), "the layer says zstd but is not a zstd frame"
    return subprocess.run(["zstd", "-d", "-q", "-c"], input=data, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def rootfs(layout: Path, image: dict[str, dict[str, object]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    layer = image["manifest"]["layers"][0]  # type: ignore[index]
    data = blob(layout, layer["digest"])
    assert layer["size"] == len(data)
    uncompressed = decompress_layer(layer["mediaType"], data)
    config = image["config"]
    assert ["sha256:" + hashlib.sha256(uncompressed).hexdigest()] == config["rootfs"]["diff_ids"]  # type: ignore[index]
    root = tmp_path_factory.mktemp("rootfs")
    root.chmod(0o755)  # as a container runtime makes it: the layer has no entry for / itself
    layer_tar = root.parent / "layer.tar"
    layer_tar.write_bytes(uncompressed)
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(layer_tar)], check=True)
    return root


def test_the_archive_is_small_and_named_for_containerd(archive: Path, layout: Path,
                                                       image: dict[str, dict[str, object]]) -> None:
    size_mib = archive.stat().st_size / 2**20
    assert size_mib <= MAX_COMPRESSED_MIB, f"{size_mib:.0f} MiB compressed"
    reference = f"ghcr.io/macula-io/maculaos-operator:{__version__}"
    entry = image["index"]["manifests"][0]  # type: ignore[index]
    assert entry["annotations"]["io.containerd.image.name"] == reference
    assert json.loads((layout / "manifest.json").read_text())[0]["RepoTags"] == [reference]
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_the_config_runs_maculaos_as_a_non_root_user(image: dict[str, dict[str, object]]) -> None:
    config = image["config"]["config"]
    assert config["User"] == "65532:65532"  # type: ignore[index]
    assert config["Entrypoint"] == ["/usr/local/bin/maculaos"]  # type: ignore[index]
    assert image["config"]["architecture"] == "amd64" and image["config"]["os"] == "linux"


def test_no_compilers_package_managers_or_caches(rootfs: Path) -> None:
    for tool in ("gcc", "cc", "c++", "cpp", "ld", "as", "make", "apt", "apt-get", "pip", "pip3"):
        for directory in ("usr/bin", "usr/local/bin", "bin", "usr/sbin"):
            assert not (rootfs / directory / tool).exists(), f"/{directory}/{tool} is in the image"
    assert not list(rootfs.glob(f"{SITE}/pip")) and not list(rootfs.glob("usr/lib/python3*/*/pip"))
    assert not (rootfs / "root" / ".cache").exists(), "a pip cache was left behind"
    assert not list((rootfs / "var/lib/apt/lists").glob("*_Packages*")) if (rootfs / "var/lib/apt/lists").exists() \
        else True
    assert not list((rootfs / "var/cache").glob("**/*.deb"))
    assert not list(rootfs.glob("usr/share/doc/*/changelog*")) and not list(rootfs.glob("usr/share/man/man1/*"))


def test_python_files_are_compiled_for_the_images_interpreter(rootfs: Path) -> None:
    site = rootfs / SITE
    wrong = [p for p in site.rglob("*.pyc") if ".cpython-313." not in p.name]
    assert not wrong, f"bytecode of another Python: {wrong[:3]}"
    assert not (site / "kubernetes").exists(), "the generated client: the operator and agent use maculaos.kube.rest"
    for module in ("maculaos/cli/__init__.py", "maculaos/cli/node.py", "maculaos/agent/runner.py", "kopf/__init__.py",
                   "aiohttp/__init__.py"):
        source = site / module
        compiled = source.parent / "__pycache__" / f"{source.stem}.cpython-313.pyc"
        assert compiled.exists(), f"{module} is not compiled: the first start would compile it (slowly)"
    assert not (site / "bin").exists(), "console scripts with the build host's interpreter path"


def chroot(rootfs: Path, *args: str, user: str = "65532:65532") -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROOT, f"--userspec={user}", str(rootfs), *args], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})


def test_the_entry_point_runs_as_the_operator_user(rootfs: Path) -> None:
    result = chroot(rootfs, "/usr/local/bin/maculaos", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"maculaos {__version__}"
    imports = chroot(rootfs, "python3", "-I", "-c",
                     "import maculaos.controller.run, maculaos.agent.runner, zoneinfo; "
                     "zoneinfo.ZoneInfo('Europe/Amsterdam'); print('imports ok')")
    assert imports.stdout.strip() == "imports ok", imports.stderr
    assert "65532" in (rootfs / "etc" / "passwd").read_text()


def test_the_agents_host_tool_wrappers_enter_the_hosts_namespaces(rootfs: Path) -> None:
    """The agent (privileged, hostPID) runs the host's nft, systemctl and rauc through these wrappers."""
    for tool in ("nft", "systemctl", "rauc"):
        wrapper = rootfs / "usr/local/sbin" / f"host-{tool}"
        assert os.access(wrapper, os.X_OK)
        assert f"nsenter --target 1 --mount --uts --ipc --net --pid -- {tool}" in wrapper.read_text()
    assert (rootfs / "usr/bin/nsenter").exists()


def test_the_build_is_reproducible(archive: Path, tmp_path: Path) -> None:
    again = build(tmp_path)
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(archive.read_bytes()).hexdigest(), \
        "two builds of the same commit differ"
