"""config.yaml sections and systemd units on a sandbox host root, with the real systemctl --root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from maculaos.host.config import HostConfigError, config_file, read_config, write_keys, write_maculaos_section
from maculaos.host.systemd import Systemd, SystemdError


def test_section_written_atomically_and_others_untouched(host_root: Path) -> None:
    assert write_maculaos_section(host_root, "mesh", {"realm": "io.macula"})
    config = read_config(host_root)
    assert config["maculaos"]["mesh"] == {"realm": "io.macula"}
    assert config["maculaos"]["hostname"] == "macula-nuc-01" and config["k3s"] == {"airgap": True}
    assert oct(config_file(host_root).stat().st_mode & 0o777) == "0o600"
    assert not list(config_file(host_root).parent.glob(".config.yaml.*")), "temporary file left behind"


def test_unchanged_section_is_not_rewritten(host_root: Path) -> None:
    write_maculaos_section(host_root, "mesh", {"realm": "io.macula"})
    before = config_file(host_root).stat().st_mtime_ns
    assert not write_maculaos_section(host_root, "mesh", {"realm": "io.macula"})
    assert config_file(host_root).stat().st_mtime_ns == before


def test_removing_a_section(host_root: Path) -> None:
    write_maculaos_section(host_root, "mesh", {"realm": "io.macula"})
    assert write_maculaos_section(host_root, "mesh", None)
    assert "mesh" not in read_config(host_root)["maculaos"]
    assert not write_maculaos_section(host_root, "mesh", None)


def test_removing_a_key_written_as_null(host_root: Path) -> None:
    """write_keys and write_maculaos_section are one writer: both drop a key that stands as null."""
    config_file(host_root).write_text("maculaos:\n  mesh: null\n  timezone: null\n")
    assert write_keys(host_root, {"maculaos.timezone": None})
    assert write_maculaos_section(host_root, "mesh", None)
    assert read_config(host_root) == {"maculaos": {}}


@pytest.mark.parametrize(("content", "message"), [
    ("maculaos: [unclosed\n", "not valid YAML"),
    ("- a list\n", "must hold a mapping"),
    ("maculaos: 3\n", "maculaos must be a mapping"),
])
def test_a_broken_config_is_reported_and_left_as_it_is(host_root: Path, content: str, message: str) -> None:
    config_file(host_root).write_text(content)
    with pytest.raises(HostConfigError, match=message):
        write_maculaos_section(host_root, "mesh", {"realm": "io.macula"})
    assert config_file(host_root).read_text() == content


def test_missing_config_starts_empty(tmp_path: Path) -> None:
    assert read_config(tmp_path) == {}
    assert write_maculaos_section(tmp_path, "mesh", {"realm": "io.macula"})
    assert yaml.safe_load(config_file(tmp_path).read_text()) == {"maculaos": {"mesh": {"realm": "io.macula"}}}


def test_units_enabled_and_disabled_offline(host_root: Path) -> None:
    systemd = Systemd(host_root)
    link = host_root / "etc/systemd/system/multi-user.target.wants/macula-gateway.service"
    assert systemd.set_all_enabled({"macula-gateway.service": True}) == ("macula-gateway.service",)
    assert link.is_symlink() and systemd.is_enabled("macula-gateway.service")
    assert systemd.set_all_enabled({"macula-gateway.service": True}) == ()
    assert systemd.set_all_enabled({"macula-gateway.service": False}) == ("macula-gateway.service",)
    assert not os.path.lexists(link)


def test_a_missing_unit_is_left_out(host_root: Path) -> None:
    systemd = Systemd(host_root)
    assert "macula-nope.service" not in systemd.unit_file_states(["macula-nope.service", "macula-mesh.service"])
    assert systemd.set_all_enabled({"macula-nope.service": True}) == ()


def test_several_units_take_one_systemctl_run_per_verb(host_root: Path, tmp_path: Path) -> None:
    """At boot every systemctl is a large program started under a slow CPU: the apply asks once."""
    log = tmp_path / "calls"
    wrapper = tmp_path / "systemctl"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec systemctl "$@"\n')
    wrapper.chmod(0o755)
    systemd = Systemd(host_root, systemctl=str(wrapper))
    systemd.set_all_enabled({"macula-gateway.service": True})
    log.unlink()
    units = {"macula-mesh.service": True, "macula-bootstrap.service": True, "macula-gateway.service": False,
             "macula-nope.service": False}
    assert systemd.set_all_enabled(units) == ("macula-mesh.service", "macula-bootstrap.service",
                                              "macula-gateway.service")
    verbs = [line.split()[1] for line in log.read_text().splitlines()]
    assert verbs == ["list-unit-files", "enable", "disable"]
    assert systemd.is_enabled("macula-bootstrap.service") and not systemd.is_enabled("macula-gateway.service")
    log.unlink()
    assert systemd.set_all_enabled(units) == ()                 # converged: only the one question asked
    assert [line.split()[1] for line in log.read_text().splitlines()] == ["list-unit-files"]


def test_a_missing_systemctl_is_a_refusal_that_says_so(tmp_path: Path) -> None:
    """A machine without systemctl (a sandbox, a container) must not crash the health checks that ask it."""
    systemd = Systemd(tmp_path, live=True, systemctl=str(tmp_path / "no-such-systemctl"))
    assert not systemd.start_limit_hit("k3s.service")
    with pytest.raises(SystemdError, match="cannot run .*no-such-systemctl"):
        systemd.restart("k3s.service")
