"""A real git server on loopback, as the node runs it: lighttpd with the rendered configuration and git's
own http-backend, unprivileged (as www-data, as the unit does) on a free port. Shared by the host tests of
the server and the GitOps tests, where Flux reads from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from maculaos.devenv.processes import ProcessRecord, free_port, spawn, stop, wait_for_port
from maculaos.host.gitserver import ensure_repository, render_lighttpd_config

HAS_LIGHTTPD = shutil.which("lighttpd") is not None or Path("/usr/sbin/lighttpd").exists()

ALICE = "alice"
PASSWORD = "s3cret-push"


def htpasswd_line(user: str, password: str) -> str:
    return subprocess.run(["htpasswd", "-nbB", user, password], check=True, capture_output=True,
                          text=True).stdout.strip()


@dataclass(frozen=True)
class Server:
    url: str
    root: Path

    def authed(self, user: str = ALICE, password: str = PASSWORD) -> str:
        return self.url.replace("http://", f"http://{user}:{password}@")


def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    result = subprocess.run(["git", "-c", "safe.directory=*", "-c", "init.defaultBranch=main", *args], cwd=cwd,
                            capture_output=True, text=True, env=env, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {result.stderr}")
    return result


def commit(clone: Path, message: str) -> str:
    (clone / "file.txt").write_text(message)
    git("add", "file.txt", cwd=clone)
    git("commit", "-q", "-m", message, cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone).stdout.strip()


StartServer = Callable[..., "Server"]


@dataclass(frozen=True)
class RunningServer:
    """A started server: its URL and repositories, and what stops it."""

    server: Server
    process: subprocess.Popen[bytes]
    record: ProcessRecord
    base: Path

    def stop(self) -> None:
        stop(self.record)
        assert self.process.wait(timeout=10) is not None
        shutil.rmtree(self.base, ignore_errors=True)


def start_git_server(log_dir: Path, anonymous_read: bool = True, users: bool = True) -> RunningServer:
    """The server with one repository, fleet.git, and one user who may push (ALICE)."""
    # Outside pytest's 0700 tmp folders, so the unprivileged server can reach it.
    base = Path(tempfile.mkdtemp(prefix="maculaos-git-"))
    base.chmod(0o755)
    root, credentials = base / "repos", base / "credentials"
    root.mkdir()
    credentials.mkdir()
    ensure_repository(root / "fleet.git")
    (credentials / "htpasswd").write_text(htpasswd_line(ALICE, PASSWORD) + "\n")
    port = free_port()
    config = base / "lighttpd.conf"
    config.write_text(render_lighttpd_config(port, str(root), users, anonymous_read, bind="127.0.0.1"))
    argv = ["lighttpd", "-D", "-f", str(config)]
    if os.getuid() == 0:  # as the unit: never root
        shutil.chown(root, "www-data", "www-data")
        subprocess.run(["chown", "-R", "www-data:www-data", str(base)], check=True)
        argv = ["setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups", *argv]
    proc, record = spawn(f"lighttpd-{port}", argv, log_dir,
                         env={**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)})
    running = RunningServer(Server(f"http://127.0.0.1:{port}/fleet.git", root), proc, record, base)
    try:
        wait_for_port(port, 10, proc)
    except BaseException:
        running.stop()
        raise
    return running


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    started: list[RunningServer] = []

    def start(anonymous_read: bool = True, users: bool = True) -> Server:
        started.append(start_git_server(tmp_path / "logs", anonymous_read, users))
        return started[-1].server

    yield start
    for running in started:
        running.stop()
