"""`maculaos backup list | run | restore` on a node from its own recorded config, with the real restic and a
real rest-server, and no Kubernetes at all (the node may have lost its cluster)."""

from __future__ import annotations

import datetime as dt
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from maculaos.api.backup import Retention
from maculaos.cli import main
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.devenv.processes import free_port
from maculaos.host.backup import BackupJob, run_job, save_local_job
from maculaos.host.config import read_config
from maculaos.host.restic import local_repository, rest_repository
from tests.restserver import RestServer, start_rest_server

RESTIC = str(default_bin_dir() / "restic")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RestServer]:
    started = start_rest_server(tmp_path / "rest", tmp_path / "logs")
    yield started
    started.stop()


@pytest.fixture
def node(tmp_path: Path, server: RestServer) -> Path:
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("macula-pi-03\n")
    (root / "var/lib/data").mkdir(parents=True)
    (root / "var/lib/data/till.db").write_text("sales: 12\n")
    (root / "var/lib/maculaos").mkdir(parents=True)
    (root / "var/lib/maculaos/config.yaml").write_text("maculaos:\n  hostname: macula-pi-03\n")
    for name, target, repo in (("onsite", "local", local_repository(root / "var/backups/r", "pw1")),
                               ("peers", "mesh", rest_repository(f"{server.url}/macula-pi-03", "pw2"))):
        save_local_job(BackupJob(name=name, node="macula-pi-03", host_root=root, include=["/var/lib/data"],
                                 exclude=[], retention=Retention(), repositories=[repo], target_type=target,
                                 restic=RESTIC))
    return root


def cli(node: Path, *args: str) -> int:
    return main(["backup", args[0], "--host-root", str(node), "--restic", RESTIC, *args[1:]])


def test_recorded_config_keeps_credentials_out_of_config_yaml(node: Path) -> None:
    section = read_config(node)["maculaos"]["backup"]
    assert set(section) == {"onsite", "peers"} and section["peers"]["target"] == "mesh"
    assert "pw1" not in (node / "var/lib/maculaos/config.yaml").read_text()
    creds = node / "var/lib/maculaos/backup/onsite.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600 and "pw1" in creds.read_text()


def test_run_list_and_restore_latest(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(node, "run") == 0
    out = capsys.readouterr().out
    assert "onsite: ok: snapshot" in out and "peers: ok: snapshot" in out
    assert cli(node, "list", "--from", "mesh") == 0
    listing = capsys.readouterr().out
    assert "peers (mesh)" in listing and "onsite" not in listing and len(listing.splitlines()) == 2

    (node / "var/lib/data/till.db").write_text("corrupted\n")
    assert cli(node, "restore", "--from", "mesh", "--latest") == 0
    assert "restored /var/lib/data from snapshot" in capsys.readouterr().out
    assert (node / "var/lib/data/till.db").read_text() == "sales: 12\n"


def test_restore_by_date_and_the_errors(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(node, "run", "--from", "onsite") == 0
    (node / "var/lib/data/till.db").write_text("sales: 13\n")
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    capsys.readouterr()
    assert cli(node, "restore", "--from", "local", "--date", yesterday) == 1
    err = capsys.readouterr().err
    assert f"the newest snapshot before {dt.date.today().isoformat()}T00:00:00+00:00 does not exist" in err
    assert "nothing restored" in err
    assert (node / "var/lib/data/till.db").read_text() == "sales: 13\n"
    assert cli(node, "restore", "--from", "s3", "--latest") == 1
    assert "no backup matches --from s3; backups: onsite (local), peers (mesh)" in capsys.readouterr().err
    today = dt.date.today().isoformat()
    assert cli(node, "restore", "--from", "onsite", "--date", today, "--target-dir", "/var/tmp/old") == 0
    assert (node / "var/tmp/old/var/lib/data/till.db").read_text() == "sales: 12\n"
    assert (node / "var/lib/data/till.db").read_text() == "sales: 13\n"


def test_run_reports_a_failing_target_and_exits_non_zero(node: Path, server: RestServer,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    server.stop()
    assert cli(node, "run") == 1
    out = capsys.readouterr().out
    assert "onsite: ok" in out and "peers: FAILED: cannot reach the backup target" in out


def test_the_same_job_runs_from_the_agent_and_the_cli(node: Path) -> None:
    """run_job is the one code path: the agent records what it runs, the CLI replays it."""
    job = BackupJob(name="x", node="macula-pi-03", host_root=node, include=["/var/lib/data", "/nope"], exclude=[],
                    retention=Retention(), repositories=[local_repository(node / "var/backups/x", "pw")],
                    target_type="local", restic=RESTIC)
    report = run_job(job)
    assert report.ok and "include path(s) missing on this node, left out: /nope" in report.message


def test_with_one_of_two_mesh_peers_down_the_node_still_lists_and_restores(
        node: Path, server: RestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mesh job recorded with two peers, the second one gone: `run` fails naming it but writes the live
    copy, `list` shows the live peer's snapshots and says which one does not answer (exit 1), `restore`
    comes from the live peer."""
    dead = f"http://127.0.0.1:{free_port()}"
    save_local_job(BackupJob(name="pair", node="macula-pi-03", host_root=node, include=["/var/lib/data"],
                             exclude=[], retention=Retention(), target_type="mesh", restic=RESTIC,
                             repositories=[rest_repository(f"{u}/macula-pi-03", "pw3") for u in (server.url, dead)]))
    assert cli(node, "run", "--from", "pair") == 1
    out = capsys.readouterr().out
    assert "pair: FAILED: 1 of 2 target(s) written" in out and dead in out, out
    assert cli(node, "list", "--from", "pair") == 1
    listing = capsys.readouterr().out.splitlines()
    assert len([line for line in listing if line.startswith("  ") and " run " in line]) == 1, listing
    assert any("not answering" in line and dead in line for line in listing), listing

    (node / "var/lib/data/till.db").write_text("corrupted\n")
    assert cli(node, "restore", "--from", "pair", "--latest") == 0
    assert server.url in capsys.readouterr().out
    assert (node / "var/lib/data/till.db").read_text() == "sales: 12\n"
