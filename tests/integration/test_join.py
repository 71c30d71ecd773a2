"""Joining the test control plane as a real kubelet does (issue #15): a bootstrap token from join_data,
traded for a node client certificate through a CSR that kube-controller-manager approves and signs; the
Node authorizer and NodeRestriction confine the node to its own Node; kube-proxy's reads are allowed; the
`kubernetes` Service leads to the address nodes use; kube-scheduler binds pods."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client

from maculaos.devenv.controlplane import BOOTSTRAP_GROUP, CLUSTER_CIDR, JoinData
from maculaos.devenv.nodes import SimulatedNode, register_node
from maculaos.devenv.pki import KUBELET_CLIENT_GROUP
from maculaos.kube.rest import ApiError, Credentials, KubeClient, resource_path

from .conftest import Cluster

NODE = "join-kubelet-01"
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
CSRS = resource_path("certificates.k8s.io/v1", "certificatesigningrequests")


@pytest.fixture(scope="module")
def join(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JoinData, Path]]:
    """Join data for the shared control plane, and its CA written where a node would keep it."""
    data = cluster.plane.join_data("test_join")
    ca = tmp_path_factory.mktemp("join") / "ca.crt"
    ca.write_text(data.ca_cert_pem)
    try:
        yield data, ca
    finally:
        cluster.kubectl("delete", "node", NODE, "--ignore-not-found")
        cluster.kubectl("delete", "csr", "-l", "test=join", "--ignore-not-found")


def as_token(cluster: Cluster, ca: Path, token: str) -> KubeClient:
    """A client as a kubelet starts: the join data's CA and token (on loopback: 10.0.2.2 is a VM's view)."""
    return KubeClient(Credentials(server=cluster.plane.server, ca_file=str(ca), token=token))


def kubelet_csr(key: ec.EllipticCurvePrivateKey, node: str) -> dict[str, Any]:
    """The CSR a kubelet's TLS bootstrap creates (ECDSA P-256, CN system:node:<name>, O system:nodes)."""
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}")]))
               .sign(key, hashes.SHA256()))
    pem = request.public_bytes(serialization.Encoding.PEM)
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "node-csr-", "labels": {"test": "join"}},
            "spec": {"request": base64.b64encode(pem).decode(), "signerName": KUBELET_SIGNER,
                     "usages": ["digital signature", "client auth"]}}


def issued(kube: KubeClient, name: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        csr = kube.get(resource_path("certificates.k8s.io/v1", "certificatesigningrequests", name))
        if csr.get("status", {}).get("certificate"):
            return csr
        if time.monotonic() > deadline:
            raise AssertionError(f"CSR {name} not issued after {timeout:.0f}s: {csr.get('status')}")
        time.sleep(0.2)


def test_join_data_is_the_config_section_a_node_reads(cluster: Cluster, join: tuple[JoinData, Path]) -> None:
    data, _ = join
    assert data.server == f"https://10.0.2.2:{cluster.plane.api_port}"
    text = data.config_yaml()
    assert "ca_cert: |\n      -----BEGIN CERTIFICATE-----" in text, text
    assert yaml.safe_load(text) == {"maculaos": {"kubernetes": data.config_section()}}
    token_id = data.token.split(".")[0]
    got = yaml.safe_load(cluster.kubectl("get", "secret", f"bootstrap-token-{token_id}", "-n", "kube-system",
                                         "-o", "yaml").stdout)
    assert got["type"] == "bootstrap.kubernetes.io/token"
    values = {k: base64.b64decode(v).decode() for k, v in got["data"].items()}
    assert values["usage-bootstrap-authentication"] == "true" and values["auth-extra-groups"] == BOOTSTRAP_GROUP
    assert values["expiration"].endswith("Z")
    cluster.plane.join_data("again")  # the bindings are made once; a second token does not fail on them


def test_the_serving_certificate_verifies_at_the_advertise_address(cluster: Cluster,
                                                                   join: tuple[JoinData, Path]) -> None:
    """What a node's TLS client checks: the join CA, and the address in its server URL among the names."""
    _, ca = join
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", cluster.plane.api_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=cluster.plane.advertise_address) as tls:
        names = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"").extensions \
            .get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.0.2.2") in names


def test_a_wrong_token_is_unauthorized(cluster: Cluster, join: tuple[JoinData, Path]) -> None:
    _, ca = join
    with pytest.raises(ApiError) as refused:
        as_token(cluster, ca, "abcdef.0123456789abcdef").items(CSRS)
    assert refused.value.status == HTTPStatus.UNAUTHORIZED


def test_a_kubelet_bootstraps_and_is_confined_to_its_node(cluster: Cluster, join: tuple[JoinData, Path],
                                                           tmp_path: Path) -> None:
    data, ca = join
    bootstrap = as_token(cluster, ca, data.token)
    key = ec.generate_private_key(ec.SECP256R1())
    name = bootstrap.create(CSRS, kubelet_csr(key, NODE))["metadata"]["name"]
    csr = issued(bootstrap, name)
    approved = next(c for c in csr["status"]["conditions"] if c["type"] == "Approved")
    assert approved["status"] == "True" and approved["reason"] == "AutoApproved"
    cert = x509.load_pem_x509_certificate(base64.b64decode(csr["status"]["certificate"]))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{NODE}"

    (tmp_path / "node.crt").write_bytes(base64.b64decode(csr["status"]["certificate"]))
    (tmp_path / "node.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    node = KubeClient(Credentials(server=cluster.plane.server, ca_file=str(ca), cert_file=str(tmp_path / "node.crt"),
                                  key_file=str(tmp_path / "node.key")))
    node.create(resource_path("v1", "nodes"), {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": NODE, "labels": {"kubernetes.io/hostname": NODE}}})
    node.patch(resource_path("v1", "nodes", NODE), {"metadata": {"labels": {"joined": "true"}}})
    with pytest.raises(ApiError) as refused:
        node.patch(resource_path("v1", "nodes", "macula-nuc-02"), {"metadata": {"labels": {"taken": "over"}}})
    assert refused.value.status == HTTPStatus.FORBIDDEN, refused.value
    with pytest.raises(ApiError) as refused:
        node.items(resource_path("v1", "secrets", namespace="kube-system"))
    assert refused.value.status == HTTPStatus.FORBIDDEN
    assert any(s["metadata"]["name"] == "kubernetes" for s in node.items(resource_path("v1", "services")))
    assert node.items(resource_path("discovery.k8s.io/v1", "endpointslices"))
    cluster.wait_for(lambda: bool(cluster.get("node", NODE)["spec"].get("podCIDR")), 30, f"{NODE}'s podCIDR")
    pod_cidr = ipaddress.ip_network(cluster.get("node", NODE)["spec"]["podCIDR"])
    assert pod_cidr.subnet_of(ipaddress.ip_network(CLUSTER_CIDR)) and pod_cidr.prefixlen == 24


def test_the_kubernetes_service_leads_to_the_advertise_address(cluster: Cluster) -> None:
    slice_ = cluster.get("endpointslice", "kubernetes")  # the default namespace: the kubectl context's
    assert [a for e in slice_["endpoints"] for a in e["addresses"]] == [cluster.plane.advertise_address]
    assert [p["port"] for p in slice_["ports"]] == [cluster.plane.api_port]


def test_the_api_server_may_reach_kubelets_as_kubelet_api_admin(cluster: Cluster) -> None:
    """Its kubelet client certificate's group may proxy to nodes (logs, exec), as kubeadm sets it up."""
    review = cluster.kubectl("create", "-o", "yaml", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "kube-apiserver-kubelet-client", "groups": [KUBELET_CLIENT_GROUP],
                 "resourceAttributes": {"verb": "get", "resource": "nodes", "subresource": "proxy"}}}))
    assert yaml.safe_load(review.stdout)["status"]["allowed"] is True


def test_the_scheduler_binds_a_pod(cluster: Cluster) -> None:
    """A Node of this test's own (so no other test's drain meets the pod) and a Pod without nodeName. The API
    server taints every new Node not-ready (NoSchedule); with the node lifecycle controller off, nothing lifts
    it when the node is Ready, so the test does what that controller would."""
    sched = SimulatedNode(name="join-sched-01", site="join-test")
    register_node(client.CoreV1Api(cluster.api), sched)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "join-scheduled", "namespace": "default"},
           "spec": {"nodeSelector": {"kubernetes.io/hostname": sched.name}, "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "registry.invalid/pause:1"}]}}
    try:
        assert {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"} in \
            cluster.get("node", sched.name)["spec"]["taints"]
        cluster.kubectl("taint", "node", sched.name, "node.kubernetes.io/not-ready:NoSchedule-")
        cluster.apply(pod)
        cluster.wait_for(lambda: cluster.get("pod", "join-scheduled")["spec"].get("nodeName") == sched.name, 30,
                         "the scheduler to bind the pod")
    finally:  # no kubelet confirms the deletion of a bound pod: delete it at once
        cluster.kubectl("delete", "pod", "join-scheduled", "--grace-period=0", "--force", "--ignore-not-found")
        cluster.kubectl("delete", "node", sched.name, "--ignore-not-found")
