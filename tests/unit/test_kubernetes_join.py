"""config.yaml's maculaos.kubernetes: what the boot apply writes for the kubelet, kube-proxy and k3s, and
that a bad section leaves the node unjoined with the key named, never half-joined."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from maculaos.host.config import config_file
from maculaos.host.kubernetes import (
    BOOTSTRAP_KUBECONFIG,
    CA_CERT,
    CNI_CONFLIST,
    JOIN_FILES,
    K3S_ENV,
    KUBE_PROXY_CONFIG,
    KUBELET_CONFIG,
    KUBELET_ENV,
    apply_join,
    write_pod_network,
)
from maculaos.host.nodeconfig import NodeConfig, NodeConfigError, read_node_config

TOKEN = "abcdef.0123456789abcdef"


@pytest.fixture(scope="module")
def ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _section(ca_pem: str, **changes: Any) -> dict[str, Any]:
    return {"server": "https://10.0.2.2:6443", "ca_cert": ca_pem, "token": TOKEN, **changes}


def _write_config(root: Path, section: dict[str, Any] | None) -> None:
    config_file(root).parent.mkdir(parents=True, exist_ok=True)
    config_file(root).write_text(yaml.safe_dump({"maculaos": {"kubernetes": section} if section else {}}))


def test_a_section_writes_the_kubelets_kube_proxys_and_k3ss_files(tmp_path: Path, ca_pem: str) -> None:
    _write_config(tmp_path, _section(ca_pem, node_ip="10.0.2.15"))
    changes = apply_join(tmp_path, read_node_config(tmp_path))
    assert changes.joined and changes.problem is None and set(changes.changed) == set(JOIN_FILES)
    for path in JOIN_FILES:
        assert (tmp_path / path).stat().st_mode & 0o777 == 0o600, path      # the token is a secret
    assert (tmp_path / CA_CERT).read_text() == ca_pem
    bootstrap = yaml.safe_load((tmp_path / BOOTSTRAP_KUBECONFIG).read_text())
    assert bootstrap["clusters"][0]["cluster"] == {"server": "https://10.0.2.2:6443",
                                                   "certificate-authority": f"/{CA_CERT}"}
    assert bootstrap["users"][0]["user"] == {"token": TOKEN}
    kubelet = yaml.safe_load((tmp_path / KUBELET_CONFIG).read_text())
    assert kubelet["cgroupDriver"] == "systemd" and kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["authorization"]["mode"] == "Webhook" and kubelet["rotateCertificates"] is True
    assert (tmp_path / KUBELET_ENV).read_text() == \
        "KUBELET_NODE_ARGS=--node-labels=os.macula.io/maculaos=true --node-ip=10.0.2.15\n"
    proxy = yaml.safe_load((tmp_path / KUBE_PROXY_CONFIG).read_text())
    assert proxy["mode"] == "nftables" and proxy["clientConnection"]["kubeconfig"] == "/var/lib/kubelet/kubeconfig"
    k3s = dict(line.split("=", 1) for line in (tmp_path / K3S_ENV).read_text().splitlines())
    assert k3s["K3S_ROLE"] == "agent" and k3s["K3S_URL"] == "https://10.0.2.2:6443"
    assert k3s["K3S_TOKEN"].startswith("K10") and k3s["K3S_TOKEN"].endswith(f"::{TOKEN}")
    assert apply_join(tmp_path, read_node_config(tmp_path)).changed == []          # a second apply: no change


def test_removing_the_section_removes_every_file(tmp_path: Path, ca_pem: str) -> None:
    _write_config(tmp_path, _section(ca_pem))
    apply_join(tmp_path, read_node_config(tmp_path))
    _write_config(tmp_path, None)
    changes = apply_join(tmp_path, read_node_config(tmp_path))
    assert not changes.joined and "no cluster to join" in changes.summary()
    assert not any((tmp_path / p).exists() for p in JOIN_FILES)


@pytest.mark.parametrize(("key", "value", "said"), [
    ("token", "not-a-token", "maculaos.kubernetes.token"),
    ("token", "ABCDEF.0123456789ABCDEF", "maculaos.kubernetes.token"),
    ("server", "http://10.0.2.2:6443", "maculaos.kubernetes.server"),
    ("server", "https://host/with/path", "maculaos.kubernetes.server"),
    ("ca_cert", "not a certificate", "maculaos.kubernetes.ca_cert must be one PEM certificate"),
    ("node_ip", "10.0.2.300", "maculaos.kubernetes.node_ip must be an IPv4 address"),
    ("node_ip", "fd00::1", "maculaos.kubernetes.node_ip must be an IPv4 address"),
])
def test_a_bad_value_names_its_key_and_the_node_stays_unjoined(tmp_path: Path, ca_pem: str, key: str,
                                                               value: str, said: str) -> None:
    raw = {"maculaos": {"kubernetes": _section(ca_pem, **{key: value})}}
    with pytest.raises(NodeConfigError) as caught:
        NodeConfig.parse(raw)
    assert said in str(caught.value)
    # A node that was joined and gets a bad section is not left half-joined with the old files.
    _write_config(tmp_path, _section(ca_pem))
    apply_join(tmp_path, read_node_config(tmp_path))
    config_file(tmp_path).write_text(yaml.safe_dump(raw))
    changes = apply_join(tmp_path, read_node_config(tmp_path))
    assert changes.problem is not None and said in changes.problem
    assert changes.summary().startswith("not joining a cluster: ")
    assert not any((tmp_path / p).exists() for p in JOIN_FILES)


@pytest.mark.parametrize("missing", ["server", "ca_cert", "token"])
def test_a_missing_key_is_named(ca_pem: str, missing: str) -> None:
    section = _section(ca_pem)
    del section[missing]
    with pytest.raises(NodeConfigError, match=f"maculaos.kubernetes.{missing}"):
        NodeConfig.parse({"maculaos": {"kubernetes": section}})


def test_the_pod_network_is_a_bridge_on_the_nodes_pod_cidr(tmp_path: Path) -> None:
    assert write_pod_network(tmp_path, "10.42.3.0/24")
    conflist = json.loads((tmp_path / CNI_CONFLIST).read_text())
    bridge, portmap = conflist["plugins"]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is True
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.42.3.0/24"}]]
    assert portmap["type"] == "portmap"
    assert not write_pod_network(tmp_path, "10.42.3.0/24")
