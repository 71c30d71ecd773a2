"""MeshRole: which Macula mesh roles a set of nodes plays, and the firewall that goes with them.

Seed 4.4 (roles, realm, bootstrap peers, TLS mode), 4.9.4 (firewall, WireGuard), 9.4 (open ports).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from maculaos.api.addresses import Network
from maculaos.api.common import (
    DNS_SUBDOMAIN_PATTERN,
    LABEL_KEYS_RULE,
    VERSION_LABEL,
    ApiModel,
    LabelValue,
    ObjectStatus,
    PrinterColumn,
    ResourceInfo,
    SecretKeyRef,
    SelectorSpec,
    age_column,
    field_differences,
    outcome_column,
    ready_column,
    reason_column,
    show_value,
)


class MeshRoleName(StrEnum):
    """Roles a node can add on top of peer, which every node always plays."""

    BOOTSTRAP = "bootstrap"
    GATEWAY = "gateway"


class TlsMode(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class FirewallPolicy(StrEnum):
    DROP = "drop"
    ACCEPT = "accept"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


PEER_URL_PATTERN = r"^(https|quic)://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/.*)?$"


class ExtraPort(ApiModel):
    """A port opened in addition to those the roles need."""

    port: int = Field(ge=1, le=65535)
    """Port number."""
    protocol: Protocol = Protocol.TCP
    """tcp or udp."""
    sources: list[Network] = Field(default_factory=list, max_length=32)
    """Source networks (CIDR) allowed to reach it; empty allows any."""


class Firewall(ApiModel):
    """The node's nftables ruleset (table inet maculaos). Seed 4.9.4 and 9.4."""

    enabled: bool = True
    """Manage the firewall at all. When false the maculaos table is removed."""
    default_policy: FirewallPolicy = FirewallPolicy.DROP
    """Policy for inbound traffic that no rule accepts: drop or accept."""
    allow_ssh: bool = Field(default=True, alias="allowSSH")
    """Accept SSH (22/tcp)."""
    allow_mesh: bool = True
    """Accept mesh traffic: the role ports and WireGuard."""
    allow_kubernetes: bool = True
    """Accept k3s's own traffic: API 6443/tcp, kubelet 10250/tcp, etcd 2379-2380/tcp, flannel 8472 and
    51820-51821/udp, and everything from pods (the CNI interfaces). Turning it off can cut a node off
    its cluster."""
    allow_mdns: bool = True
    """Accept mDNS (5353/udp) for node discovery."""
    extra_ports: list[ExtraPort] = Field(default_factory=list, max_length=64)
    """Further ports to open."""


#: The mesh's WireGuard port: k3s's flannel takes 51820 (IPv4) and 51821 (IPv6) for its own WireGuard backend.
WIREGUARD_PORT = 51822


class WireGuard(ApiModel):
    """The WireGuard port of the mesh. Today the node only opens the port in its firewall: no interface,
    keys or peers are set up (the mesh VPN is not built yet)."""

    enabled: bool = True
    """Open listenPort (UDP) in the node firewall for the mesh's WireGuard. It does not create an interface,
    keys or peers: that is not built yet."""
    interface: str = Field(default="wg-mesh", pattern=r"^[a-zA-Z0-9_-]{1,15}$", max_length=15)
    """Name reserved for the mesh's WireGuard interface (at most 15 characters, a Linux limit). Recorded
    only: nothing creates the interface yet."""
    listen_port: int = Field(default=WIREGUARD_PORT, ge=1, le=65535)
    """UDP port opened for the mesh's WireGuard. The default, 51822, stays clear of flannel's WireGuard
    (51820 IPv4, 51821 IPv6) and VXLAN (8472) ports."""


class Gateway(ApiModel):
    """Settings for nodes with the gateway role."""

    bandwidth_limit_mbps: int | None = Field(default=None, ge=1, le=100000)
    """Intended cap on relayed traffic in Mbit/s. Not enforced yet: the value is accepted and recorded, and
    no rate limit is applied on the node."""


class MeshRoleStatus(ObjectStatus):
    effective_roles: str = ""
    """Roles the selected nodes play, peer included, comma-separated."""
    applied_nodes: int = 0
    """Nodes whose agent applied the current generation."""


class MeshRoleSpec(SelectorSpec):
    """The desired mesh roles of the selected nodes. A node's roles are peer plus the union of the
    roles of every MeshRole that selects it; selected MeshRoles must agree on realm and tlsMode."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.roles.exists(r, r == 'bootstrap') || size(self.bootstrapPeers) > 0",
         "message": "bootstrapPeers must name at least one peer unless the nodes are bootstrap nodes themselves",
         "fieldPath": ".bootstrapPeers"},
        {"rule": "!(self.tlsMode == 'production' && self.roles.exists(r, r == 'bootstrap'))"
                 " || has(self.publicHostname)",
         "message": "publicHostname is required for bootstrap nodes in production tlsMode (their certificate names it)",
         "fieldPath": ".publicHostname"},
        {"rule": "!(self.tlsMode == 'production' && size(self.roles) > 0) || has(self.certificateSecretRef)",
         "message": "certificateSecretRef is required for bootstrap and gateway roles in production tlsMode",
         "fieldPath": ".certificateSecretRef"},
    ]})

    resource = ResourceInfo(
        kind="MeshRole", plural="meshroles", singular="meshrole", short_names=["mr"],
        description="Mesh roles (peer, bootstrap, gateway) of a set of MaculaOS nodes, with their services, "
                    "firewall and labels.",
        columns=[
            PrinterColumn(name="Roles", type="string", json_path=".status.effectiveRoles",
                          description="Roles these nodes play (peer is implicit)"),
            PrinterColumn(name="Realm", type="string", json_path=".spec.realm"),
            PrinterColumn(name="Nodes", type="integer", json_path=".status.matchedNodes",
                          description="Nodes selected"),
            PrinterColumn(name="Applied", type="integer", json_path=".status.appliedNodes",
                          description="Nodes that applied the current generation", priority=1),
            ready_column(), outcome_column(), reason_column(), age_column(),
        ],
    )
    status_model = MeshRoleStatus

    roles: list[MeshRoleName] = Field(
        default_factory=list, max_length=2,
        json_schema_extra={"x-kubernetes-list-type": "set"})
    """Roles on top of peer: bootstrap (DHT entry point) and/or gateway (NAT relay, API ingress)."""
    realm: str = Field(default="io.macula", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """Realm identifier in reverse domain notation, e.g. io.macula."""
    bootstrap_peers: list[Annotated[str, Field(pattern=PEER_URL_PATTERN, max_length=2048)]] = Field(
        default_factory=lambda: ["https://boot.macula.io:443"], max_length=16)
    """Bootstrap peers to join through (https:// or quic:// URLs)."""
    tls_mode: TlsMode = TlsMode.DEVELOPMENT
    """development (self-signed certificates) or production (verified certificates)."""
    certificate_secret_ref: SecretKeyRef | None = None
    """TLS certificate and key (a kubernetes.io/tls Secret; key names the certificate entry) for production."""
    public_hostname: str | None = Field(default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    """Public DNS name bootstrap and gateway nodes are reached by."""
    gateway: Gateway = Field(default_factory=Gateway)
    """Settings used when the gateway role is on."""
    firewall: Firewall = Field(default_factory=Firewall)
    """The node firewall rendered from the roles. The node's git server (23232/tcp, smart HTTP) is always admitted, the
    agent's metrics (9750/tcp) only from pods."""
    wireguard: WireGuard = Field(default_factory=WireGuard)
    """The WireGuard port of the mesh (opened in the firewall; no interface is brought up yet)."""
    node_labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32,
        json_schema_extra={"x-kubernetes-validations": [
            LABEL_KEYS_RULE,
            {"rule": "self.all(k, !k.startsWith('macula.io/role-'))",
             "message": "macula.io/role-* labels are set from roles; list the role in roles instead"},
            {"rule": f"!('{VERSION_LABEL}' in self)",
             "message": f"{VERSION_LABEL} is set by each node's agent: the version the node runs"},
        ]})
    """Extra Node labels the operator sets on the selected nodes (macula.io/role-<role> labels are set from
    roles, os.macula.io/version by the node)."""


#: What every MeshRole selecting one node must agree on (the rest merges: roles, peers, labels).
AGREED_FIELDS = ("realm", "tls_mode", "firewall", "wireguard")


def disagreements(here: MeshRoleSpec, there: MeshRoleSpec) -> list[tuple[str, Any, Any]]:
    """(field path, value here, value there) for each agreed field on which two MeshRoles differ."""
    found: list[tuple[str, Any, Any]] = []
    for attr in AGREED_FIELDS:
        path = "spec." + to_camel(attr)
        a, b = getattr(here, attr), getattr(there, attr)
        if isinstance(a, BaseModel) and isinstance(b, BaseModel):
            found += field_differences(a, b, path)
        elif a != b:
            found.append((path, getattr(a, "value", a), getattr(b, "value", b)))
    return found


def describe_disagreements(found: list[tuple[str, Any, Any]], here: str, there: str) -> str:
    """'spec.firewall.defaultPolicy is drop in a, accept in b; ...' for a message."""
    return "; ".join(f"{path} is {show_value(a)} in {here}, {show_value(b)} in {there}" for path, a, b in found)
