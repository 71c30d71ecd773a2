"""The s3 target against a real S3 protocol server on loopback (versitygw, Apache-2.0, posix backend):
init on first use, backup, retention, restore with swap, and refused credentials named clearly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maculaos.agent.backup_targets import repositories
from maculaos.api.backup import BackupSpec, Retention
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.host.backup import BackupJob, run_job
from maculaos.host.restic import Restic, ResticError, ResticFailure
from maculaos.host.restore import SnapshotChoice, choose_snapshot, restore_snapshot
from tests.restserver import S3Server, start_s3_server

NODE = "macula-pi-03"
RESTIC = str(default_bin_dir() / "restic")


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path / "s3", tmp_path / "logs")
    yield server
    server.stop()


def s3_spec(server: S3Server) -> BackupSpec:
    return BackupSpec.model_validate({
        "repositoryPasswordSecretRef": {"name": "repo", "key": "password"},
        "target": {"s3": {"endpoint": server.endpoint, "bucket": "macula-backups", "prefix": "fleet/${NODE_NAME}/",
                          "insecureHTTP": True, "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
                          "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}}}})


def test_backup_and_restore_over_s3(s3: S3Server, tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "var/lib/data").mkdir(parents=True)
    (host / "var/lib/data/till.db").write_text("sales: 12\n")
    secrets = {"password": "pw", "id": s3.access_key, "secret": s3.secret_key}
    repos = repositories(s3_spec(s3), NODE, host, lambda ref: secrets[ref.key], {})
    job = BackupJob(name="cloud", node=NODE, host_root=host, include=["/var/lib/data"], exclude=[],
                    retention=Retention(keep_last=1), repositories=repos, target_type="s3", restic=RESTIC)
    first, second = run_job(job), run_job(job)
    assert first.ok and second.ok, (first.message, second.message)
    assert (s3.data / "macula-backups/fleet" / NODE / "config").exists()
    assert second.removed_snapshots == 1

    restic = job.restic_for(repos[0])
    (host / "var/lib/data/till.db").write_text("broken\n")
    snapshot = choose_snapshot(restic.snapshots(NODE, "cloud"), SnapshotChoice(latest=True), "s3")
    assert snapshot.id == second.snapshot_id
    restore_snapshot(restic, snapshot, host)
    assert (host / "var/lib/data/till.db").read_text() == "sales: 12\n"


def test_refused_s3_credentials_are_named(s3: S3Server, tmp_path: Path) -> None:
    secrets = {"password": "pw", "id": s3.access_key, "secret": "not-the-secret"}
    (repo,) = repositories(s3_spec(s3), NODE, tmp_path, lambda ref: secrets[ref.key], {})
    with pytest.raises(ResticError) as err:
        Restic(repo, RESTIC).ensure_initialized()
    assert err.value.failure is ResticFailure.ACCESS_DENIED
    assert "secretAccessKeySecretRef" in str(err.value) and "not-the-secret" not in str(err.value)
    assert not (s3.data / "macula-backups").exists()


