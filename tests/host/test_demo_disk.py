"""`maculaos dev up` on a nearly full disk: a real small filesystem (a tmpfs) filled to the brim holds the
demo's work directory. The warning comes before anything starts, names the filesystem, says the figure
the nodes' own disk check will find and what it stalls; with room, nothing is said."""

from __future__ import annotations

from pathlib import Path

import pytest

from maculaos.api.healthcheck import DiskProbe
from maculaos.devenv.demo import Demo
from maculaos.devenv.demo_disk import MIB, disk_warning
from maculaos.devenv.demo_objects import DISK_CHECK_PATH, DISK_CHECK_THRESHOLD
from maculaos.host.healthcheck import probe_disk
from tests.diskfull import fill, small_tmpfs

REPO = Path(__file__).resolve().parents[2]
SIZE = 8 * MIB


def test_dev_up_on_a_full_disk_says_so_before_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The control plane's tools are made absent, so `up` stops where it would start the control plane:
    what it said by then is what a person sees first."""
    monkeypatch.setenv("MACULAOS_BIN_DIR", str(tmp_path / "no-tools"))
    with small_tmpfs(tmp_path / "fs", SIZE) as fs:
        fill(fs, leave=SIZE // 50)  # 98 % full
        (fs / "node" / DISK_CHECK_PATH.strip("/")).mkdir(parents=True)
        ok, nodes_see = probe_disk(DiskProbe(path=DISK_CHECK_PATH, threshold=f"{DISK_CHECK_THRESHOLD}%"), fs / "node")
        assert not ok
        with pytest.raises(FileNotFoundError, match="kine is missing"):
            Demo(fs / "demo", REPO).up()
    said = capsys.readouterr().err
    figure = nodes_see.split(" is ")[1].split(" (")[0]  # "98.0% full": the nodes' check's own figure
    assert f"on the filesystem mounted at {fs} (tmpfs tmpfs), which is {figure}, and the demo writes" in said, said
    assert f"in {fs / 'demo'}" in said
    assert "NodeUpgrade demo-to-0-2-0 will not get past its first node" in said
    assert "HealthCheck demo-sandbox, which judges it, fails its disk check at 95% and more" in said
    assert "a node keeps 64 MiB free for itself and refuses to download a bundle into less" in said
    assert "works while its own files fit" in said and "maculaos dev up --workdir DIR" in said


def test_room_to_spare_says_nothing(tmp_path: Path) -> None:
    """An empty tmpfs larger than the demo (its pages cost nothing until written)."""
    with small_tmpfs(tmp_path / "fs", 4096 * MIB) as fs:
        assert disk_warning(fs / "demo") is None
        assert disk_warning(fs / "not" / "yet" / "made") is None


def test_the_demos_own_files_count(tmp_path: Path) -> None:
    """90 % full now, but the demo's files would take it over the threshold: said, with both figures. (A
    node's bundle reserve made small: the real one needs a filesystem over a GiB for this case.)"""
    with small_tmpfs(tmp_path / "fs", 64 * MIB) as fs:
        fill(fs, leave=64 * MIB // 10)
        assert disk_warning(fs / "demo", footprint=MIB, spare=MIB) is None
        said = disk_warning(fs / "demo", footprint=4 * MIB, spare=MIB)
    assert said is not None
    assert (f"mounted at {fs} (tmpfs tmpfs), which is 90.0% full, and the demo writes about 4 MiB there: "
            "96.3%, 2 MiB free.") in said, said
    assert "fails its disk check at 95% and more" in said and "download a bundle" not in said
    assert said.endswith("The rest of the demo works. To see the rollout, free some space on "
                         f"{fs}, or put the demo on another filesystem: maculaos dev up --workdir DIR (and the "
                         "same --workdir for dev down).")


def test_too_little_room_for_a_bundle_is_said_below_the_threshold(tmp_path: Path) -> None:
    """A small filesystem far from 95 % with less free than a node keeps when it downloads a bundle: the
    rollout would fail at its first install."""
    with small_tmpfs(tmp_path / "fs", 64 * MIB) as fs:
        fill(fs, leave=40 * MIB)
        said = disk_warning(fs / "demo", footprint=0)
    assert said is not None and "which is 37.5% full.\n" in said, said
    assert "a node keeps 64 MiB free for itself and refuses to download a bundle into less" in said
    assert "fails its disk check" not in said
