"""A real restic rest-server, and a real S3 endpoint (versitygw), on loopback: the backup targets of the
tests (on a MaculaOS node rest-server is the service that holds peers' mesh backups). Moved here from
maculaos.devenv: only tests use them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maculaos.devenv.controlplane import default_bin_dir
from maculaos.devenv.processes import ProcessRecord, free_port, spawn, stop, wait_for_port


@dataclass(frozen=True)
class RestServer:
    record: ProcessRecord
    url: str
    data: Path

    def stop(self) -> None:
        stop(self.record)


def start_rest_server(data: Path, log_dir: Path, name: str = "rest-server", port: int | None = None,
                      bin_dir: Path | None = None, htpasswd: Path | None = None) -> RestServer:
    """rest-server on 127.0.0.1 (only loopback reaches it), repositories under data; it asks for the users
    of the htpasswd file when one is given, else nobody authenticates (--no-auth)."""
    port = port or free_port()
    data.mkdir(parents=True, exist_ok=True)
    binary = (bin_dir or default_bin_dir()) / "rest-server"
    auth = ["--htpasswd-file", str(htpasswd)] if htpasswd is not None else ["--no-auth"]
    proc, record = spawn(name, [str(binary), "--path", str(data), "--listen", f"127.0.0.1:{port}", *auth], log_dir)
    wait_for_port(port, 15, proc)
    return RestServer(record, f"http://127.0.0.1:{port}", data)


@dataclass(frozen=True)
class S3Server:
    record: ProcessRecord
    endpoint: str
    access_key: str
    secret_key: str
    data: Path

    def stop(self) -> None:
        stop(self.record)


def start_s3_server(data: Path, log_dir: Path, name: str = "s3-server", access_key: str = "AKIAMACULATEST",
                    secret_key: str = "maculaos-test-secret", bin_dir: Path | None = None) -> S3Server:
    """versitygw (Apache-2.0) with its posix backend on 127.0.0.1: a real S3 protocol endpoint whose
    buckets are folders under data."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    binary = (bin_dir or default_bin_dir()) / "versitygw"
    proc, record = spawn(name, [str(binary), "--access", access_key, "--secret", secret_key,
                                "--port", f"127.0.0.1:{port}", "posix", str(data)], log_dir)
    wait_for_port(port, 15, proc)
    return S3Server(record, f"127.0.0.1:{port}", access_key, secret_key, data)
