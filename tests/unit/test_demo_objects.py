"""The demo's own objects are valid: its HealthChecks (the failing one capped, it cannot restart forever) and
its NodeUpgrades, which leave the example's night window to the example."""

from __future__ import annotations

from pathlib import Path

import yaml

from maculaos.api.healthcheck import CheckType, HealthCheckSpec
from maculaos.api.nodeupgrade import NodeUpgradeSpec
from maculaos.cli.options import REPO_ROOT
from maculaos.devenv.demo_disk import filesystem_source
from maculaos.devenv.demo_objects import (
    ABSENT_UNIT,
    DISK_CHECK_PATH,
    DISK_CHECK_THRESHOLD,
    bad_upgrade,
    capped_healthcheck,
    demo_upgrade,
    sandbox_healthcheck,
)


def test_the_sandbox_checks_are_the_kinds_that_hold_without_systemd() -> None:
    spec = HealthCheckSpec.model_validate(sandbox_healthcheck(api_port=6443, operator_port=9751)["spec"])
    assert {c.type for c in spec.checks} == {CheckType.TCP, CheckType.HTTP, CheckType.PROCESS, CheckType.DISK}
    assert not any(c.restart_on_failure for c in spec.checks)
    assert spec.checks[0].tcp is not None and spec.checks[0].tcp.port == 6443
    assert spec.checks[1].http is not None and spec.checks[1].http.url == "http://127.0.0.1:9751/healthz"
    # The figures `dev up` warns by (devenv/demo_disk.py) are the check's.
    assert spec.checks[3].disk is not None
    assert (spec.checks[3].disk.path, spec.checks[3].disk.threshold) == (DISK_CHECK_PATH, f"{DISK_CHECK_THRESHOLD}%")


def test_the_filesystem_is_named_as_the_mount_table_has_it(tmp_path: Path) -> None:
    """The last mount on a path is the one seen; the table escapes spaces (\\040)."""
    mountinfo = tmp_path / "mounts"
    mountinfo.write_text(
        "/dev/vda / ext4 rw,relatime 0 0\n"
        "/dev/sdb1 /home/dev/my\\040disk xfs rw 0 0\n"
        "tmpfs /home/dev/my\\040disk tmpfs rw,size=1024k 0 0\n"
        "/dev/sdc1 /home/josé btrfs rw 0 0\n")
    assert filesystem_source(Path("/home/josé"), mountinfo) == "/dev/sdc1 btrfs"
    assert filesystem_source(Path("/"), mountinfo) == "/dev/vda ext4"
    assert filesystem_source(Path("/home/dev/my disk"), mountinfo) == "tmpfs tmpfs"
    assert filesystem_source(Path("/srv"), mountinfo) == ""
    assert filesystem_source(Path("/"), tmp_path / "absent") == ""


def test_the_failing_check_restarts_a_unit_no_machine_has_and_is_capped() -> None:
    (check,) = HealthCheckSpec.model_validate(capped_healthcheck()["spec"]).checks
    assert check.restart_on_failure and check.restart_unit == ABSENT_UNIT
    assert 1 <= check.max_restarts <= 3


def test_the_example_keeps_its_night_window_and_the_demo_rolls_without_one() -> None:
    """examples/nodeupgrade.yaml stays what a real site writes (a night window, 2 minutes between nodes, a
    release index on the internet); the demo's own is the same rollout with none of that, from its index."""
    example = yaml.safe_load((REPO_ROOT / "examples" / "nodeupgrade.yaml").read_text())
    spec = NodeUpgradeSpec.model_validate(example["spec"])
    assert spec.maintenance_windows and spec.strategy.delay_between_nodes == "2m"
    assert spec.source.release_index and spec.source.release_index.startswith("https://")
    index = "http://127.0.0.1:8080/index.json"
    demo = NodeUpgradeSpec.model_validate(demo_upgrade(index)["spec"])
    assert not demo.maintenance_windows and demo.source.release_index == index
    assert (demo.version, demo.channel, demo.strategy.type, demo.strategy.max_unavailable) == (
        spec.version, spec.channel, spec.strategy.type, spec.strategy.max_unavailable)
    assert demo.failure_policy == spec.failure_policy, "it stops at the first failure too"
    bad = NodeUpgradeSpec.model_validate(bad_upgrade(index)["spec"])
    assert (bad.version, bad.channel, bad.maintenance_windows) == ("0.3.0", "beta", [])
