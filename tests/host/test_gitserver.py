"""The node's git server (issue #19): the real lighttpd with the rendered configuration and git's own
http-backend, run unprivileged (as www-data, as the unit does) on a free port; real git clients clone,
fetch and push. The upstream sync against a second repository standing in for the fleet's upstream."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from maculaos.devenv.processes import free_port
from maculaos.host import gitserver
from maculaos.host.gitserver import ensure_repository, render_lighttpd_config, server_files
from maculaos.host.gitsync import STATUS_FILE, UPSTREAM_NAMESPACE, heads, read_report, sync
from maculaos.host.nodeconfig import GitServerConfig, NodeConfig, NodeConfigError
from maculaos.host.systemd import Systemd
from tests.gitserver import ALICE, HAS_LIGHTTPD, PASSWORD, commit, git, htpasswd_line

pytestmark = pytest.mark.skipif(not HAS_LIGHTTPD,
                                reason="lighttpd is not installed (tools/install.sh installs it)")


def test_the_rendered_configuration_passes_lighttpd_own_check(tmp_path: Path) -> None:
    for users, anonymous in ((True, True), (True, False), (False, True)):
        config = tmp_path / "l.conf"
        config.write_text(render_lighttpd_config(23232, str(tmp_path), users, anonymous))
        result = subprocess.run(["lighttpd", "-tt", "-f", str(config)], capture_output=True, text=True,
                                env={**os.environ, "CREDENTIALS_DIRECTORY": str(tmp_path)})
        assert result.returncode == 0, result.stderr


def test_reads_are_open_and_a_push_needs_a_user(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    clone = tmp_path / "clone"
    git("clone", "-q", server.url, str(clone))
    first = commit(clone, "one")
    refused = git("push", "origin", "HEAD:main", cwd=clone, check=False)
    assert refused.returncode != 0 and "could not read Username" in refused.stderr  # 401: credentials asked
    assert heads(server.root / "fleet.git") == {}
    wrong = git("push", server.authed(password="wrong"), "HEAD:main", cwd=clone, check=False)
    assert wrong.returncode != 0 and heads(server.root / "fleet.git") == {}
    git("push", "-q", server.authed(), "HEAD:main", cwd=clone)
    assert heads(server.root / "fleet.git") == {"main": first}
    again = tmp_path / "again"
    git("clone", "-q", server.url, str(again))  # anonymous read of what was pushed
    assert git("rev-parse", "HEAD", cwd=again).stdout.strip() == first


def test_without_users_the_server_is_read_only(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(users=False)
    clone = tmp_path / "clone"
    git("clone", "-q", server.url, str(clone))
    commit(clone, "one")
    assert git("push", server.authed(), "HEAD:main", cwd=clone, check=False).returncode != 0
    assert heads(server.root / "fleet.git") == {}


def test_private_reads_need_a_user(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(anonymous_read=False)
    assert git("ls-remote", server.url, check=False).returncode != 0
    assert git("ls-remote", server.authed(), check=True).returncode == 0


# --- upstream sync -------------------------------------------------------------------------------------


@pytest.fixture
def upstream(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repository standing in for the fleet's upstream, with one commit on main, and a work clone."""
    bare, work = tmp_path / "upstream.git", tmp_path / "upstream-work"
    git("init", "-q", "--bare", str(bare))
    git("clone", "-q", str(bare), str(work))
    commit(work, "fleet 1")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return bare, work


def test_sync_creates_then_fast_forwards(upstream: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = upstream
    local = tmp_path / "site/fleet.git"
    ensure_repository(local)
    report = sync(local, str(bare))
    assert report.ok and report.created == {"main": heads(bare)["main"]}
    second = commit(work, "fleet 2")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    report = sync(local, str(bare))
    assert report.ok and report.fast_forwarded["main"][1] == second
    assert heads(local)["main"] == second and heads(local, UPSTREAM_NAMESPACE)["main"] == second
    assert read_report(local) is not None and read_report(local).fast_forwarded == report.fast_forwarded  # type: ignore[union-attr]


def test_a_diverged_local_push_is_kept_and_reported(upstream: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = upstream
    local = tmp_path / "site/fleet.git"
    ensure_repository(local)
    sync(local, str(bare))
    site = tmp_path / "site-work"  # pushed on the site while offline
    git("clone", "-q", str(local), str(site))
    ours = commit(site, "site change")
    git("push", "-q", "origin", "HEAD:main", cwd=site)
    theirs = commit(work, "fleet change")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    report = sync(local, str(bare))
    assert not report.ok and [(c.branch, c.local, c.upstream) for c in report.conflicts] == [("main", ours, theirs)]
    assert heads(local)["main"] == ours  # untouched
    assert heads(local, UPSTREAM_NAMESPACE)["main"] == theirs
    assert heads(bare)["main"] == theirs  # nothing pushed upstream
    assert (local / STATUS_FILE).exists() and "conflicts" in (local / STATUS_FILE).read_text()


def test_a_local_branch_ahead_is_pushed_only_when_asked(upstream: tuple[Path, Path], tmp_path: Path) -> None:
    bare, _ = upstream
    local = tmp_path / "site/fleet.git"
    ensure_repository(local)
    sync(local, str(bare))
    site = tmp_path / "site-work"
    git("clone", "-q", str(local), str(site))
    ours = commit(site, "site change")
    git("push", "-q", "origin", "HEAD:main", cwd=site)
    report = sync(local, str(bare))
    assert report.ok and report.ahead == ["main"] and heads(bare)["main"] != ours
    report = sync(local, str(bare), push_upstream=True)
    assert report.pushed == ["main"] and heads(bare)["main"] == ours


def test_an_unreachable_upstream_is_an_error_and_local_history_stays(
        upstream: tuple[Path, Path], tmp_path: Path) -> None:
    bare, _ = upstream
    local = tmp_path / "site/fleet.git"
    ensure_repository(local)
    sync(local, str(bare))
    before = heads(local), heads(local, UPSTREAM_NAMESPACE)
    gone = f"http://127.0.0.1:{free_port()}/fleet.git"
    report = sync(local, gone)
    assert report.error is not None and gone in report.error and "untouched" in report.error
    assert (heads(local), heads(local, UPSTREAM_NAMESPACE)) == before
    shutil.rmtree(bare)  # the upstream lost everything: still nothing local goes
    assert sync(local, str(bare)).error is not None
    assert (heads(local), heads(local, UPSTREAM_NAMESPACE)) == before


def test_sync_through_the_real_server_as_upstream(start_server, upstream: tuple[Path, Path],  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    """The upstream is itself a git server over HTTP (another node's, or the fleet's)."""
    server = start_server()
    _, work = upstream
    git("push", "-q", server.authed(), "HEAD:main", cwd=work)
    local = tmp_path / "site/fleet.git"
    ensure_repository(local)
    report = sync(local, server.url)
    assert report.ok and heads(local)["main"] == heads(server.root / "fleet.git")["main"]


# --- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "key", "words"), [
    ({"port": 70000}, "maculaos.git_server.port", "less than or equal to 65535"),
    ({"port": 80}, "maculaos.git_server.port", "1024"),
    ({"port": 6443}, "maculaos.git_server.port", "k3s api"),
    ({"port": "web"}, "maculaos.git_server.port", "integer"),
    ({"root": "git/repos"}, "maculaos.git_server.root", "absolute"),
    ({"root": "/var/lib/maculaos/../../etc"}, "maculaos.git_server.root", "canonical"),
    ({"root": "/srv/git"}, "maculaos.git_server.root", "data partition"),
    ({"htpasswd": "alice:plaintext"}, "maculaos.git_server.htpasswd", "bcrypt"),
    ({"htpasswd": "alice $2y$05$x"}, "maculaos.git_server.htpasswd", "user:hash"),
    ({"htpasswd": "# nobody\n"}, "maculaos.git_server.htpasswd", "no user"),
    ({"anonymous_read": False}, "maculaos.git_server", "nobody could read"),
    ({"htpassword": "x"}, "maculaos.git_server.htpassword", "not a known key"),
    ({"upstream": {"url": "https://bob:pw@git.example/fleet.git"}}, "maculaos.git_server.upstream.url",
     "without user:password"),
    ({"upstream": {"url": "fleet.git"}}, "maculaos.git_server.upstream.url", "absolute path"),
    ({"upstream": {"url": "https://git.example/${HOME}.git"}}, "maculaos.git_server.upstream.url", "$"),
    ({"root": "/var/lib/data/my git"}, "maculaos.git_server.root", "letters, digits"),
    ({"root": '/var/lib/data/x";server.port=1'}, "maculaos.git_server.root", "letters, digits"),
    ({"repositories": ["fleet", "../../etc"]}, "maculaos.git_server.repositories[1]", "pattern"),
    ({"repositories": "fleet"}, "maculaos.git_server.repositories", "list"),
    ({"upstream": {"url": "/srv/x.git", "repository": "../etc"}}, "maculaos.git_server.upstream.repository",
     "pattern"),
    ({"upstream": {"url": "/srv/x.git", "interval_seconds": 5}}, "maculaos.git_server.upstream.interval_seconds",
     "30"),
])
def test_bad_values_name_the_key_and_change_nothing(host_root: Path, raw: dict[str, object], key: str,
                                                    words: str) -> None:
    with pytest.raises(NodeConfigError) as caught:
        NodeConfig.parse({"maculaos": {"git_server": raw}})
    assert caught.value.key == key and words in caught.value.problem and "bob:pw" not in str(caught.value)
    (host_root / "usr/sbin").mkdir(parents=True)
    (host_root / "usr/sbin/lighttpd").touch()
    (host_root / "usr/lib/git-core").mkdir(parents=True)
    (host_root / "usr/lib/git-core/git-http-backend").touch()
    before = sorted(p for p in host_root.rglob("*"))
    config = NodeConfig.tolerant({"maculaos": {"git_server": raw}})
    assert config.problem("maculaos.git_server") is not None
    assert not gitserver.converge_git_server(host_root, config, Systemd(host_root, systemctl="false"))
    assert sorted(p for p in host_root.rglob("*")) == before


def test_converge_writes_the_files_on_a_mounted_root(host_root: Path) -> None:
    (host_root / "usr/sbin").mkdir(parents=True)
    (host_root / "usr/sbin/lighttpd").touch()
    (host_root / "usr/lib/git-core").mkdir(parents=True)
    (host_root / "usr/lib/git-core/git-http-backend").touch()
    section = {"htpasswd": htpasswd_line(ALICE, PASSWORD), "upstream": {"url": "https://git.example/fleet.git"},
               "repositories": ["fleet", "site-a"]}
    config = NodeConfig.parse({"maculaos": {"git_server": section}})
    systemd = Systemd(host_root)
    assert gitserver.converge_git_server(host_root, config, systemd)
    assert (host_root / gitserver.HTPASSWD).stat().st_mode & 0o777 == 0o600
    assert "service=git-receive-pack" in (host_root / gitserver.LIGHTTPD_CONFIG).read_text()
    assert (host_root / "var/lib/maculaos/git/fleet.git/HEAD").exists()
    sync_unit = (host_root / gitserver.UNIT_DIR / gitserver.SYNC_SERVICE).read_text()
    assert "--upstream https://git.example/fleet.git\n" in sync_unit
    assert (host_root / "var/lib/maculaos/git/site-a.git/HEAD").exists()
    if shutil.which("systemctl"):
        assert systemd.is_enabled(gitserver.SERVICE) and systemd.is_enabled(gitserver.SYNC_TIMER)
    assert not gitserver.converge_git_server(host_root, config, systemd)  # idempotent
    if shutil.which("systemctl"):
        stopped = NodeConfig.parse({"maculaos": {"git_server": {**section, "enabled": False}}})
        assert gitserver.converge_git_server(host_root, stopped, systemd)
        assert not systemd.is_enabled(gitserver.SERVICE) and not systemd.is_enabled(gitserver.SYNC_TIMER)
        assert (host_root / "var/lib/maculaos/git/site-a.git/HEAD").exists()  # repositories are kept


def test_a_percent_in_the_upstream_url_is_not_a_systemd_specifier() -> None:
    section = GitServerConfig.model_validate({"upstream": {"url": "https://git.example/a%20b.git"}})
    unit = gitserver.render_sync_units(section)[gitserver.SYNC_SERVICE]
    assert "https://git.example/a%%20b.git" in unit


def test_the_server_files_keep_soft_serve_contract() -> None:
    files = server_files(GitServerConfig())
    assert files.units == (gitserver.SERVICE,)
    unit = files.files[gitserver.UNIT_DIR / gitserver.SERVICE]
    assert "User=www-data" in unit and "ReadWritePaths=/var/lib/maculaos/git" in unit
    assert "server.port = 23232" in files.files[gitserver.LIGHTTPD_CONFIG]


def test_the_repository_root_is_a_default_include_of_backups() -> None:
    from maculaos.api.backup import BackupSpec

    includes = BackupSpec.model_fields["include"].get_default(call_default_factory=True)
    for root in (GitServerConfig().root, "/var/lib/data/git"):
        assert any(root.startswith(folder.rstrip("/") + "/") for folder in includes)


def test_the_cli_syncs_from_config_yaml_and_shows_the_conflict(
        host_root: Path, upstream: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maculaos.cli import main

    bare, work = upstream
    (host_root / "var/lib/maculaos/config.yaml").write_text(
        f"maculaos:\n  git_server:\n    upstream:\n      url: {bare}\n")
    assert main(["gitops", "sync", "--host-root", str(host_root)]) == 0
    local = host_root / "var/lib/maculaos/git/fleet.git"
    assert heads(local)["main"] == heads(bare)["main"]
    site = tmp_path / "site-work"
    git("clone", "-q", str(local), str(site))
    commit(site, "site change")
    git("push", "-q", "origin", "HEAD:main", cwd=site)
    commit(work, "fleet change")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    assert main(["gitops", "sync", "--host-root", str(host_root)]) == 1
    capsys.readouterr()
    assert main(["gitops", "status", "--host-root", str(host_root)]) == 0
    out, err = capsys.readouterr()
    assert f"authority: the upstream {bare}" in out and "CONFLICT: diverged, local kept" in out
    assert "conflict: main" in err


def test_the_cli_names_a_bad_key(host_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maculaos.cli import main

    (host_root / "var/lib/maculaos/config.yaml").write_text("maculaos:\n  git_server:\n    port: 9750\n")
    assert main(["gitops", "status", "--host-root", str(host_root)]) != 0
    assert "maculaos.git_server.port 9750 is the node's agent metrics port" in capsys.readouterr().err


def test_systemd_accepts_the_rendered_units(host_root: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    """systemd's own check (specifiers, LoadCredential=, the programs) on a root with the machine's units."""
    shutil.copytree("/usr/lib/systemd/system", host_root / "usr/lib/systemd/system", symlinks=True,
                    dirs_exist_ok=True)
    section = GitServerConfig.model_validate({"upstream": {"url": "https://git.example/fleet.git"}})
    for path, text in server_files(section).files.items():
        (host_root / path).parent.mkdir(parents=True, exist_ok=True)
        (host_root / path).write_text(text)
    for program in (gitserver.LIGHTTPD, gitserver.MACULAOS, "/usr/bin/install", "/usr/bin/chown"):
        (host_root / program.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (host_root / program.lstrip("/")).touch(mode=0o755)
    units = [gitserver.SERVICE, gitserver.SYNC_SERVICE, gitserver.SYNC_TIMER]
    result = subprocess.run(["systemd-analyze", "verify", f"--root={host_root}", *units],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    (host_root / gitserver.MACULAOS.lstrip("/")).unlink()  # the check is real: it sees what is missing
    result = subprocess.run(["systemd-analyze", "verify", f"--root={host_root}", *units],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and gitserver.MACULAOS in result.stderr


def test_the_firewall_admits_the_configured_port() -> None:
    from maculaos.api.meshrole import Firewall, WireGuard
    from maculaos.host.firewall import check_ruleset, render_ruleset

    moved = NodeConfig.parse({"maculaos": {"git_server": {"port": 24000}}})
    script = render_ruleset([], Firewall(), WireGuard(), git_server_port=gitserver.served_port(moved))
    assert 'tcp dport 24000 accept comment "git server"' in script
    check_ruleset(script)  # the real nft's check
    default = render_ruleset([], Firewall(), WireGuard(), git_server_port=gitserver.served_port(NodeConfig.parse(
        {"maculaos": {"git_server": {}}})))
    assert default.count('comment "git server"') == 1 and "dport 23232" in default  # the list's entry
    stopped = NodeConfig.parse({"maculaos": {"git_server": {"port": 24000, "enabled": False}}})
    assert gitserver.served_port(stopped) is None
    bad = NodeConfig.tolerant({"maculaos": {"git_server": {"port": 22}}})
    assert gitserver.served_port(bad) is None


def test_a_port_the_backup_server_uses_is_refused(host_root: Path) -> None:
    config = NodeConfig.parse({"maculaos": {"git_server": {"port": 8000}, "backup_server": {}}})
    section, error = gitserver.git_section(config)
    assert section is None and error is not None and "maculaos.git_server.port 8000 is the backup server's" in error
    assert gitserver.served_port(config) is None
    assert gitserver.git_section(NodeConfig.parse(
        {"maculaos": {"git_server": {"port": 8000}, "backup_server": {"enabled": False}}}))[0] is not None


def test_the_warnings_name_a_bad_section_and_a_missing_server(host_root: Path) -> None:
    config = host_root / "var/lib/maculaos/config.yaml"
    config.write_text("maculaos:\n  git_server:\n    root: /etc/git\n")
    [warning] = gitserver.git_server_warnings(host_root)
    assert "left as they were" in warning and "maculaos.git_server.root" in warning
    config.write_text("maculaos:\n  git_server: {}\n")
    [warning] = gitserver.git_server_warnings(host_root)
    assert "no git server" in warning and gitserver.LIGHTTPD in warning
    config.write_text("maculaos: {}\n")
    assert gitserver.git_server_warnings(host_root) == []


def test_the_site_story_mirror_push_offline_conflict(start_server, upstream: tuple[Path, Path],  # type: ignore[no-untyped-def]
                                                     tmp_path: Path) -> None:
    """The served repository mirrors the upstream; the site pushes through the server while the upstream
    moves on; the sync keeps the site's branch, still served, and reports the conflict."""
    server = start_server()
    bare, work = upstream
    served = server.root / "fleet.git"
    assert sync(served, str(bare)).ok

    def as_the_units_leave_it() -> None:  # ExecStartPre= of both units hands the root to the server's user
        if os.getuid() == 0:
            subprocess.run(["chown", "-R", "www-data:www-data", str(server.root)], check=True)

    as_the_units_leave_it()
    site = tmp_path / "site"
    git("clone", "-q", server.url, str(site))
    assert git("rev-parse", "HEAD", cwd=site).stdout.strip() == heads(bare)["main"]
    ours = commit(site, "site change while offline")
    git("push", "-q", server.authed(), "HEAD:main", cwd=site)
    theirs = commit(work, "fleet change")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    report = sync(served, str(bare))
    as_the_units_leave_it()
    assert [c.branch for c in report.conflicts] == ["main"] and heads(served)["main"] == ours
    assert git("ls-remote", server.url, "refs/heads/main").stdout.split()[0] == ours
    assert heads(bare)["main"] == theirs
