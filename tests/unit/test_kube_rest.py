"""The agent's small REST client: where credentials come from (kubeconfig, a pod's service account), and
the paths it builds. Requests against a real API server are in tests/integration (the agent's tests)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.cli import main
from maculaos.kube.rest import ConfigError, Credentials, KubeClient, resource_path


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "here",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443",
                                                          "certificate-authority": "pki/ca.crt"}}],
        "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u"}},
                     {"name": "other", "context": {"cluster": "missing", "user": "u"}}],
        "users": [{"name": "u", "user": user}]}))
    return path


def test_files_in_a_kubeconfig_are_relative_to_it(tmp_path: Path) -> None:
    creds = Credentials.from_kubeconfig(kubeconfig(tmp_path, {"client-certificate": "pki/a.crt",
                                                              "client-key": "/abs/a.key"}))
    assert creds.server == "https://10.0.0.1:6443"
    assert creds.ca_file == str(tmp_path / "pki/ca.crt")
    assert (creds.cert_file, creds.key_file) == (str(tmp_path / "pki/a.crt"), "/abs/a.key")
    assert creds.token is None and not creds.insecure


def test_inline_certificates_go_to_private_files(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    creds = Credentials.from_kubeconfig(kubeconfig(
        tmp_path, {"token": "t0k3n"},
        {"server": "https://[fd00::1]:6443", "certificate-authority-data": base64.b64encode(pem).decode()}))
    assert creds.ca_file is not None and Path(creds.ca_file).read_bytes() == pem
    assert Path(creds.ca_file).stat().st_mode & 0o777 == 0o600
    assert creds.token == "t0k3n"


@pytest.mark.parametrize(("user", "context", "named"), [
    ({"exec": {"command": "aws"}}, None, "exec plugin"),
    ({"auth-provider": {"name": "oidc"}}, None, "exec plugin or auth provider"),
    ({"token": "x"}, "nowhere", "no context named 'nowhere'"),
    ({"token": "x"}, "other", "no cluster named 'missing'"),
])
def test_unusable_kubeconfigs_say_why(tmp_path: Path, user: dict[str, Any], context: str | None, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Credentials.from_kubeconfig(kubeconfig(tmp_path, user), context)


def test_an_unreadable_kubeconfig_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "absent")):
        Credentials.from_kubeconfig(tmp_path / "absent")


def test_a_pods_service_account_is_found_only_in_a_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("first\n")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert Credentials.in_cluster(tmp_path) is None
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    creds = Credentials.in_cluster(tmp_path)
    assert creds == Credentials(server="https://[fd00::1]:443", ca_file=str(tmp_path / "ca.crt"),
                                token_file=str(tmp_path / "token"))
    assert Credentials.in_cluster(tmp_path / "elsewhere") is None


def test_a_rotated_token_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet rotates a bound token in place; the client must not hold the old one forever."""
    token = tmp_path / "token"
    token.write_text("first\n")
    kube = KubeClient(Credentials(server="https://127.0.0.1:1", token_file=str(token)))
    assert kube._auth() == {"Authorization": "Bearer first"}
    token.write_text("second\n")
    assert kube._auth() == {"Authorization": "Bearer first"}  # within the refresh period
    monkeypatch.setattr("maculaos.kube.rest.TOKEN_REFRESH_SECONDS", 0.0)
    assert kube._auth() == {"Authorization": "Bearer second"}


def test_a_server_that_is_not_http_is_refused() -> None:
    with pytest.raises(ConfigError, match="'10.0.0.1:6443' is not http"):
        KubeClient(Credentials(server="10.0.0.1:6443"))


def test_paths() -> None:
    assert resource_path("v1", "nodes") == "/api/v1/nodes"
    assert resource_path("v1", "nodes", "n1", subresource="status") == "/api/v1/nodes/n1/status"
    assert resource_path("v1", "secrets", "s", namespace="ns") == "/api/v1/namespaces/ns/secrets/s"
    assert resource_path("os.macula.io/v1alpha1", "meshroles", "m") == "/apis/os.macula.io/v1alpha1/meshroles/m"


def test_the_agent_without_credentials_says_so_and_exits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert main(["agent", "run", "--node-name=n1", f"--host-root={tmp_path}"]) == 2
    assert f"cannot reach the Kubernetes API: cannot read kubeconfig {tmp_path / 'absent'}" in capsys.readouterr().err
