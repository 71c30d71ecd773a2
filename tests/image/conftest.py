"""The image tests' build: once per session, and not at all when a finished build of exactly these inputs
(definition, extension, overlays, build code, pins) is in the cache (~/.cache/maculaos/image/builds)."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from maculaos.image.build import BuildInputs, ImageBuilder, default_cache
from maculaos.image.cacheuse import COMPLETE, evict_unused, mark_used
from maculaos.image.definition import load_definition
from maculaos.image.signing import development_identity
from maculaos.image.vm import Vm

REPO = Path(__file__).resolve().parents[2]
EXTENSION = Path(__file__).parent / "probe-extension.yaml"
# The boot tests leave out the firmware (large, and QEMU needs none) and add the node runtime (the VM nodes
# join the tests' control plane); everything else is the shipped image.
PROFILES = ["boot", "base", "tools", "node-runtime"]


@dataclass(frozen=True)
class BuiltImage:
    squashfs: Path
    kernel: Path
    initrd: Path
    build_info: str
    out: Path
    """The build's output folder: the disk image, qcow2, bundle, SHA256SUMS and the rest."""

    def artifact(self, fmt: str) -> Path:
        return self.out / self.squashfs.name.replace(".squashfs", f".{fmt}")


def build_for(arch: str) -> BuiltImage:
    """The tests' image for one architecture, built once and kept in the cache by its inputs' digest. The
    build holds a lock: `make test`'s two lanes both ask for it, and the second waits for the first's."""
    default_cache().mkdir(parents=True, exist_ok=True)
    with (default_cache() / f"tests-build-{arch}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        definition = load_definition(REPO / "image-build" / "maculaos.yaml", [EXTENSION]).select(PROFILES)
        definition = definition.for_arch(arch)
        inputs = BuildInputs(definition, REPO, development_identity(default_cache()))
        out = default_cache() / "builds" / inputs.digest()
        names = [definition.artifact(f) for f in ("squashfs", "kernel", "initrd", "build-info")]
        if not (out / COMPLETE).exists():
            shutil.rmtree(out, ignore_errors=True)
            ImageBuilder(inputs, out).build()
        mark_used(out)
        evict_unused(out.parent)
    return BuiltImage(*(out / n for n in names[:3]), build_info=(out / names[3]).read_text(), out=out)


@pytest.fixture(scope="session")
def built_image() -> BuiltImage:
    return build_for("amd64")


@pytest.fixture(scope="session")
def built_arm64_image() -> BuiltImage:
    """The same image for arm64, built under qemu-user-static (tens of minutes: tests marked `arm64`)."""
    return build_for("arm64")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The arm64 tests run only when asked (`-m arm64`): building under qemu-user-static takes longer than
    CI's time limit leaves room for."""
    if "arm64" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="arm64 image: built under emulation, slow; run with -m arm64")
    for item in items:
        if item.get_closest_marker("arm64"):
            item.add_marker(skip)


#: The story that left each module's shared node in doubt, by module: a reboot that failed.
_node_lost: dict[str, str] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.failed and item.get_closest_marker("reboots"):
        _node_lost.setdefault(item.nodeid.split("::")[0], item.name)
    return report


def pytest_runtest_setup(item: pytest.Item) -> None:
    """After a story that reboots the shared node failed, the node may not be up: the later stories on it
    skip rather than each wait out its timeouts (minutes of CI apiece)."""
    if "node" in getattr(item, "fixturenames", ()) and (failed := _node_lost.get(item.nodeid.split("::")[0])):
        pytest.skip(f"the node may not have come back from {failed}, which failed")


#: benchmarks/image.py's median from QEMU start to MACULAOS-READY (docs/benchmarks.md, "Current figures").
#: The benchmark holds the target; a boot test fails only past READY_LIMIT times this figure: a gross
#: regression, not a busy machine. `make test` boots beside the other lane's VM (202 s seen on 2026-12-08
#: against 2 x 99), so the limit is three times.
READY_BENCHMARK_SECONDS = 99.0
READY_LIMIT = 3


_ready_times: list[str] = []


def check_ready_time(vm: Vm, what: str) -> None:
    """Note how long the boot took to MACULAOS-READY (listed at the end of the run), and fail on a gross
    regression."""
    seconds = vm.elapsed()
    _ready_times.append(f"{what}: {seconds:.1f} s after QEMU started ({vm.accel}; benchmark "
                        f"{READY_BENCHMARK_SECONDS:.0f} s, limit {READY_LIMIT * READY_BENCHMARK_SECONDS:.0f} s)")
    assert seconds <= READY_LIMIT * READY_BENCHMARK_SECONDS, (
        f"{what}: MACULAOS-READY took {seconds:.0f} s, over {READY_LIMIT} times the benchmark's "
        f"{READY_BENCHMARK_SECONDS:.0f} s")


_figures: list[str] = []


def note_figure(line: str) -> None:
    """A figure measured on the way (listed at the end of the run, for docs/benchmarks.md): not a check."""
    _figures.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ready_times:
        terminalreporter.section("boot to MACULAOS-READY")
        for line in _ready_times:
            terminalreporter.write_line(line)
    if _figures:
        terminalreporter.section("figures measured by the image tests")
        for line in _figures:
            terminalreporter.write_line(line)


def boot_timeout() -> float:
    """Seconds to wait for a boot marker: generous, TCG on a shared 2-core machine is slow."""
    return float(os.environ.get("MACULAOS_BOOT_TIMEOUT", "420"))


def forwarded_http_answers(port: int, path: str = "/", timeout: float = 8.0) -> bool:
    """Whether an HTTP server in the guest answers through a port QEMU forwards from the host's loopback.
    QEMU's user network accepts the host's connection before it tries the guest's port, so a connect always
    succeeds: a port the guest's firewall drops sends nothing back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            return conn.recv(64).startswith(b"HTTP/")
    except OSError:
        return False
