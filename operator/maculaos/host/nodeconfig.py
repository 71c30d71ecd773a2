"""NodeConfig: every key of /var/lib/maculaos/config.yaml the node reads, in one typed model.

The single source of what a key means, its default and its check (docs/config.md is generated from it,
as crds/ from api/). Defaults and constraints shared with a MeshRole come from api/ (`shared`), so the
same setting has one default whether a cluster or the file asks for it.

Keys it does not know are kept (extra="allow"): an agent rolled back to an older version must not drop
what a newer one wrote. `maculaos.backup_server` is the exception: it refuses unknown keys, because a
misspelt `htpasswd` would otherwise open the node's backups to anyone.

Lives in host/ (not api/): it is the node's own file, its checks are host concerns (logins, hostname,
htpasswd) and host/ may import api/ for the shared defaults; api/ holds only the cluster's kinds.
The two boot entry points (hostname, node-info) read the raw file with the same check functions instead:
importing pydantic there costs minutes under emulation (docs/architecture.md).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from maculaos.api.backup import DEFAULT_INCLUDE
from maculaos.api.common import BACKUP_SERVER_PATTERN
from maculaos.api.meshrole import (
    PEER_URL_PATTERN,
    ExtraPort,
    Firewall,
    FirewallPolicy,
    MeshRoleName,
    MeshRoleSpec,
    TlsMode,
    WireGuard,
)
from maculaos.host.config import HostConfigError, config_file, key_message, read_config, write_maculaos_sections
from maculaos.host.hostname import check_hostname
from maculaos.host.localisation import check_keymap, check_locale, check_timezone
from maculaos.host.logins import check_password_hash, check_ssh_key
from maculaos.host.ports import ADMITTED_PORTS

DEFAULT_BACKUP_SERVER_PORT = 8000


def shared(model: type[BaseModel], name: str) -> Any:
    """The api model's field (default, constraints, description) under config.yaml's snake_case key: the
    config and the MeshRole cannot drift apart."""
    info: FieldInfo = copy.copy(model.model_fields[name])
    info.alias = info.validation_alias = info.serialization_alias = None
    info.alias_priority = None
    return info


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


def _none_is_empty_list(value: object) -> object:
    return [] if value is None else value


def _none_is_empty_dict(value: object) -> object:
    return {} if value is None else value


def _hostname(value: object) -> object:
    return None if value in (None, "") else check_hostname(value)


def _optional(check: Callable[[object], str]) -> Callable[[object], object]:
    """A key's check that lets an absent (None or empty) value through as None."""
    def checked(value: object) -> object:
        return None if value in (None, "") else check(value)
    return checked


def _password_hash(value: object) -> object:
    return None if value is None else check_password_hash(value)


def _ipv4_address(value: str, key: str, example: str) -> str:
    """value, refused unless a plain IPv4 address: node_ip, a gateway and each name server share the check
    and its message (key is the message's placeholder, "{key}" or "{key}[0]", filled in where it is read)."""
    try:
        ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise ValueError(f"{key} must be an IPv4 address such as {example}, not {value!r}") from exc
    return value


class ConfigSection(BaseModel):
    """A mapping of config.yaml: its docstrings document the keys; unknown keys are kept as they were."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)


class MeshConfig(ConfigSection):
    """The node's mesh roles when no MeshRole assigns them; the agent rewrites it from the MeshRoles that
    select the node, so it always says what the node plays."""

    roles: dict[str, bool] = Field(default_factory=dict)
    """Roles on top of peer (which every node plays), each true or false: bootstrap, gateway."""
    bootstrap_peers: list[Annotated[str, Field(pattern=PEER_URL_PATTERN, max_length=2048)]] = shared(
        MeshRoleSpec, "bootstrap_peers")
    realm: str = shared(MeshRoleSpec, "realm")
    tls_mode: TlsMode = shared(MeshRoleSpec, "tls_mode")
    public_hostname: Annotated[str | None, BeforeValidator(_empty_is_none)] = shared(MeshRoleSpec, "public_hostname")

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: object) -> object:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("{key} must be a mapping of role: true or false (bootstrap, gateway)")
        known = {r.value for r in MeshRoleName}
        for role, on in value.items():
            if not isinstance(on, bool):
                raise ValueError(f"{{key}}.{role} must be true or false")
            if on and role not in known:
                raise ValueError(f"{{key}}.{role}: not a role; the roles are {', '.join(sorted(known))} "
                                 "(peer is always on)")
        return value

    def roles_on(self) -> frozenset[MeshRoleName]:
        return frozenset(MeshRoleName(r) for r, on in self.roles.items() if on)


class FirewallConfig(ConfigSection):
    """The node's nftables ruleset (the MeshRole's firewall: every one of its keys, so the file can say
    everything a MeshRole can). The node's git server (23232/tcp, smart HTTP) is always admitted, the agent's metrics
    (9750/tcp) only from pods."""

    enabled: bool = shared(Firewall, "enabled")
    default_policy: FirewallPolicy = shared(Firewall, "default_policy")
    allow_mesh: bool = shared(Firewall, "allow_mesh")
    allow_ssh: bool = shared(Firewall, "allow_ssh")
    allow_kubernetes: bool = shared(Firewall, "allow_kubernetes")
    allow_mdns: bool = shared(Firewall, "allow_mdns")
    extra_ports: Annotated[list[ExtraPort], BeforeValidator(_none_is_empty_list)] = shared(Firewall, "extra_ports")

    def to_api(self) -> Firewall:
        return Firewall(enabled=self.enabled, default_policy=self.default_policy, allow_mesh=self.allow_mesh,
                        allow_ssh=self.allow_ssh, allow_kubernetes=self.allow_kubernetes,
                        allow_mdns=self.allow_mdns, extra_ports=list(self.extra_ports))

    @classmethod
    def from_api(cls, firewall: Firewall) -> FirewallConfig:
        return cls(enabled=firewall.enabled, default_policy=firewall.default_policy,
                   allow_mesh=firewall.allow_mesh, allow_ssh=firewall.allow_ssh,
                   allow_kubernetes=firewall.allow_kubernetes, allow_mdns=firewall.allow_mdns,
                   extra_ports=list(firewall.extra_ports))


class WireGuardConfig(ConfigSection):
    """The mesh's WireGuard port (the MeshRole's wireguard): opened in the firewall; no interface is set up yet."""

    enabled: bool = shared(WireGuard, "enabled")
    mesh_interface: str = shared(WireGuard, "interface")
    port: int = shared(WireGuard, "listen_port")

    def to_api(self) -> WireGuard:
        return WireGuard(enabled=self.enabled, interface=self.mesh_interface, listen_port=self.port)

    @classmethod
    def from_api(cls, wireguard: WireGuard) -> WireGuardConfig:
        return cls(enabled=wireguard.enabled, mesh_interface=wireguard.interface, port=wireguard.listen_port)


class SecurityConfig(ConfigSection):
    """Firewall and VPN when no MeshRole sets them."""

    firewall: FirewallConfig | None = None
    """The firewall; absent: the defaults below."""
    wireguard: WireGuardConfig | None = None
    """The WireGuard interface; absent: the defaults below."""


class MeshRoleSecurityConfig(ConfigSection):
    """The firewall and WireGuard settings of the MeshRoles that select this node, as the agent last
    applied them (written in the same pass that loads the ruleset). The boot's `maculaos agent apply
    --once` rebuilds the ruleset from it, so the node is firewalled as its MeshRoles say from the first
    packet, before the agent runs again. Written by the agent: not for editing; removed when no MeshRole
    selects the node (then `security` applies)."""

    firewall: FirewallConfig = Field(default_factory=FirewallConfig)
    """The MeshRoles' firewall (every key of `security.firewall`)."""
    wireguard: WireGuardConfig = Field(default_factory=WireGuardConfig)
    """The MeshRoles' WireGuard interface (the keys of `security.wireguard`)."""


#: Users as rest-server accepts them (it silently ignores others; ASCII only here) and the hashes it can
#: check: bcrypt only (`htpasswd -B`); it also takes unsalted {SHA}, which is refused here as too weak.
HTPASSWD_USER = re.compile(r"[A-Za-z0-9@._-]+")
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
HTPASSWD_HINT = "make lines with `htpasswd -nB <user>` (apache2-utils)"


def check_htpasswd(text: str) -> str:
    """The htpasswd value when every line is `user:bcrypt-hash` (blank and # lines skipped), at least one
    user and no user twice; ValueError naming the line otherwise. rest-server itself would skip a bad line
    (or refuse the whole file) and every peer would get 401 without a word why."""
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not colon or any(c.isspace() for c in line):
            raise ValueError(f"line {number}: expected user:hash with no spaces; {HTPASSWD_HINT}")
        if not HTPASSWD_USER.fullmatch(user):
            raise ValueError(f"line {number}: user {user!r} may only have letters, digits and @ . _ -")
        if not BCRYPT_HASH.fullmatch(hashed):
            raise ValueError(f"line {number}: the password of {user} is not a bcrypt hash ($2y$...): "
                             f"{HTPASSWD_HINT}")
        if user in seen:
            raise ValueError(f"line {number}: user {user} is already on line {seen[user]}")
        seen[user] = number
    if not seen:
        raise ValueError(f"has no user line; {HTPASSWD_HINT}, or remove the key to serve without "
                         "authentication")
    return text


class BackupServerConfig(BaseModel):
    """This node serves a restic rest-server for its peers' mesh Backups (maculaos-backup-server.service);
    the agent advertises it to the cluster only while it answers. Unknown keys are refused here: a
    misspelt key (htpasswd above all) would silently serve something else."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Advertise the server (false keeps the section but withdraws the node)."""
    url: str | None = Field(default=None, pattern=BACKUP_SERVER_PATTERN, max_length=2048)
    """How peers reach the server; default http://<the Node's InternalIP>:<port>."""
    port: int = Field(default=DEFAULT_BACKUP_SERVER_PORT, ge=1, le=65535)
    """The port the node's rest-server listens on; peers use it too unless url says otherwise."""
    sources: list[str] = Field(default_factory=list, max_length=32)
    """Networks (CIDR) the firewall lets reach the port, e.g. the shop's LAN; empty lets in anyone who can
    route to the node."""
    htpasswd: str | None = Field(default=None, max_length=65536)
    """Who may use the server: htpasswd lines, user:bcrypt-hash (from `htpasswd -nB <user>`); Backups
    give user:password by target.mesh.credentialsSecretRef. Unset: anyone who reaches the port may read,
    delete or fill the repositories (served with --no-auth, with a warning)."""

    @field_validator("sources")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for number, network in enumerate(value):
            try:
                ipaddress.ip_network(network, strict=True)
            except ValueError as exc:
                raise ValueError(f"entry {number} ({network!r}) is not a network in CIDR form, such as "
                                 f"192.168.10.0/24: {exc}") from exc
        return value

    @field_validator("htpasswd")
    @classmethod
    def _htpasswd_lines(cls, value: str | None) -> str | None:
        return None if value is None else check_htpasswd(value)


#: soft-serve's HTTP port: the server keeps soft-serve's contract (http://<node>:23232/<name>.git), so
#: soft-serve could replace it. maculaos.host.ports admits it.
DEFAULT_GIT_SERVER_PORT = 23232
DEFAULT_GIT_ROOT = "/var/lib/maculaos/git"
#: Folders on the data partition that every Backup includes by default (api/backup.py): a repository root
#: must lie inside one, so the node's Backups cover it without a word in any Backup.
GIT_ROOT_PARENTS = tuple(f"{folder}/" for folder in DEFAULT_INCLUDE)
GIT_ROOT_CHARACTERS = re.compile(r"[A-Za-z0-9._/-]+")
GIT_REPOSITORY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
GIT_UPSTREAM_URL = re.compile(r"^((https?|ssh|git)://[^\s@/\"'\\$]+/[^\s\"'\\$]*|/[^\s\"'\\$]+)$")


def _reserved_ports() -> dict[int, str]:
    return {port: p.comment for p in ADMITTED_PORTS if p.comment != "git server" for port in p.ports}


class GitUpstreamConfig(BaseModel):
    """The fleet's repository this node's server mirrors (maculaos-git-sync.timer). Fetched into
    refs/upstream/*; a local branch moves only by fast-forward, a branch pushed here that diverged is kept
    and reported, and a failed fetch deletes nothing."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    url: str = Field(max_length=2048)
    """The upstream repository: https://, http://, ssh:// or git:// URL with no user:password in it, or an
    absolute path."""
    repository: str = Field(default="fleet", pattern=GIT_REPOSITORY_NAME.pattern)
    """The local repository it mirrors into: <root>/<repository>.git."""
    interval_seconds: int = Field(default=300, ge=30, le=86400)
    """Seconds between two syncs."""
    push_upstream: bool = False
    """Push local branches that are ahead of the upstream's (fast-forward only). Off: nothing is ever
    pushed upstream."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not GIT_UPSTREAM_URL.fullmatch(value):
            raise ValueError("{key} must be an https://, http://, ssh:// or git:// URL without user:password "
                             "(or an absolute path), with no spaces, quotes, backslashes or $; give "
                             "credentials some other way")
        return value


class GitServerConfig(BaseModel):
    """This node serves git repositories over smart HTTP (maculaos-git-server.service: git http-backend
    behind lighttpd) at http://<node>:<port>/<name>.git: Flux on the site reads from it, people push to
    it. Unknown keys are refused: a misspelt htpasswd would silently serve something else."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Serve (false keeps the section but stops the server)."""
    port: int = Field(default=DEFAULT_GIT_SERVER_PORT, ge=1024, le=65535)
    """The HTTP port (1024-65535: the server runs unprivileged); not one of the node's other ports. The
    firewall admits it."""
    root: str = Field(default=DEFAULT_GIT_ROOT, max_length=1024)
    """The folder of the bare repositories, on the data partition under /var/lib/maculaos/ or
    /var/lib/data/ (which every Backup includes by default)."""
    htpasswd: str | None = Field(default=None, max_length=65536)
    """Who may push: htpasswd lines, user:bcrypt-hash (from `htpasswd -nB <user>`). Unset: nobody may push
    (the server is read-only)."""
    anonymous_read: bool = True
    """Anyone who reaches the port may clone and fetch; false: reads need a user of htpasswd too."""
    repositories: list[Annotated[str, Field(pattern=GIT_REPOSITORY_NAME.pattern)]] = Field(
        default_factory=lambda: ["fleet"], max_length=64)
    """The bare repositories the server keeps, by name (<root>/<name>.git): made empty when missing (git
    cannot create one by a push), never deleted when left out."""
    upstream: GitUpstreamConfig | None = None
    """The fleet repository to mirror; absent: this server is the site's authority."""

    @field_validator("port")
    @classmethod
    def _free_port(cls, value: int) -> int:
        taken = _reserved_ports().get(value)
        if taken is not None:
            raise ValueError(f"{{key}} {value} is the node's {taken} port: choose another, such as "
                             f"{DEFAULT_GIT_SERVER_PORT}")
        return value

    @field_validator("root")
    @classmethod
    def _data_folder(cls, value: str) -> str:
        if not GIT_ROOT_CHARACTERS.fullmatch(value):
            raise ValueError("{key} may only have letters, digits and / . _ - (it goes into the server's "
                             "configuration and its unit)")
        canonical = "/" + "/".join(p for p in value.split("/") if p)
        if not value.startswith("/") or canonical != value.rstrip("/") or \
                any(p in (".", "..") for p in value.split("/")):
            raise ValueError(f"{{key}} must be an absolute path in canonical form (no . or .. segments), "
                             f"not {value!r}")
        if not any(canonical.startswith(parent) for parent in GIT_ROOT_PARENTS):
            raise ValueError(f"{{key}} {value!r} is not on the data partition: use a folder under "
                             f"{' or '.join(GIT_ROOT_PARENTS)}, such as {DEFAULT_GIT_ROOT}")
        return canonical

    @field_validator("htpasswd")
    @classmethod
    def _htpasswd_lines(cls, value: str | None) -> str | None:
        return None if value is None else check_htpasswd(value)

    @model_validator(mode="after")
    def _readers_need_users(self) -> GitServerConfig:
        if not self.anonymous_read and self.htpasswd is None:
            raise ValueError("{key}: anonymous_read is false but there is no htpasswd: nobody could read; "
                             "add users or allow anonymous reads")
        return self


class LocalBackupJob(ConfigSection):
    """A Backup this node runs, recorded by the agent so the node can list, run and restore with the
    cluster away (`maculaos backup`). Written by the agent: not for editing."""

    target: str = ""
    """The Backup's target type: local, rest, mesh or s3."""
    repositories: list[str] = Field(default_factory=list)
    """The restic repositories, as shown (no credentials)."""
    include: list[str] = Field(default_factory=list)
    """Paths backed up."""
    exclude: list[str] = Field(default_factory=list)
    """Paths left out."""
    retention: dict[str, Any] = Field(default_factory=dict)
    """The Backup's retention as the API writes it (checked by the Backup model when used: the boot's
    apply does not load the Backup models)."""
    include_k3s_datastore: bool = True
    """Whether a snapshot of k3s's datastore is included."""
    credentials_file: str = ""
    """The root-only file with the repositories' credentials."""


#: A Kubernetes bootstrap token: <6 characters>.<16 characters>, lowercase letters and digits.
BOOTSTRAP_TOKEN_PATTERN = r"^[a-z0-9]{6}\.[a-z0-9]{16}$"
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?")


class KubernetesConfig(ConfigSection):
    """The cluster this node joins as a worker: the kubelet of the node-runtime profile, or k3s's agent
    in an image built with k3s. Written when the node is provisioned; absent, the node joins no cluster
    (an image with k3s then runs its own server)."""

    server: str = Field(pattern=r"^https://[A-Za-z0-9.:\[\]-]+(:[0-9]{1,5})?/?$", max_length=512)
    """The API server's URL as this node reaches it, e.g. https://192.168.10.2:6443."""
    ca_cert: str = Field(max_length=16384)
    """The cluster's CA certificate (PEM): the node trusts the server only with it."""
    token: str = Field(pattern=BOOTSTRAP_TOKEN_PATTERN, repr=False)
    """A bootstrap token (abcdef.0123456789abcdef: `kubeadm token create`, `k3s token create`, `maculaos dev
    join-token`): used once to get the node's own client certificate, which the kubelet then renews."""
    node_ip: Annotated[str | None, BeforeValidator(_empty_is_none)] = None
    """The IPv4 address the node registers with (the kubelet's --node-ip); absent: the address of its
    default route."""

    @field_validator("ca_cert")
    @classmethod
    def _pem(cls, value: str) -> str:
        if not PEM_CERTIFICATE.fullmatch(value.strip() + "\n"):
            raise ValueError("{key} must be one PEM certificate (-----BEGIN CERTIFICATE----- ...)")
        return value.strip() + "\n"

    @field_validator("node_ip")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        return None if value is None else _ipv4_address(value, "{key}", "192.168.10.21")


#: A device path under /dev as systemd's WatchdogDevice= takes it, one name per component: no "." or ".."
#: (nothing outside /dev), no spaces or line breaks (the value is written into system.conf).
WATCHDOG_DEVICE_PATTERN = re.compile(r"/dev(/[A-Za-z0-9_+:-][A-Za-z0-9._+:-]*)+")


def check_watchdog_device(value: str) -> str:
    if not WATCHDOG_DEVICE_PATTERN.fullmatch(value):
        raise ValueError(f"{{key}} must be a watchdog device's path under /dev, such as /dev/watchdog1 "
                         f"(letters, digits and . _ + : - between the slashes), not {value!r}")
    return value


class WatchdogConfig(BaseModel):
    """systemd's hardware watchdog: PID 1 pets /dev/watchdog0 (or `device`), so a node whose kernel or
    systemd hangs is reset by the hardware. Rendered at boot into a system.conf drop-in; where the machine
    has no hardware watchdog, the kernel's softdog module stands in (it cannot help when the kernel
    itself hangs). Unknown keys are refused: a misspelt timeout would silently keep the default."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Arm the watchdog (false keeps the section but disarms it)."""
    timeout_seconds: int = Field(default=60, ge=5, le=600)
    """Seconds without a sign of life from systemd before the watchdog resets the machine
    (RuntimeWatchdogSec). PID 1 pets it from its main loop, which a daemon-reload holds up: below 30, a slow
    or busy machine may be reset while healthy."""
    reboot_timeout_seconds: int = Field(default=600, ge=30, le=3600)
    """Seconds a reboot may take before the watchdog forces it (RebootWatchdogSec)."""
    device: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(default=None, max_length=64)
    """The watchdog device systemd pets (WatchdogDevice=), a path under /dev such as /dev/watchdog1, for a
    machine with two (a board's chipset timer and an added card; a q35 VM's iTCO_wdt and an i6300esb).
    Their numbers follow the order the drivers load in, which may change between boots: the boot's apply
    says which driver the path is; a name a udev rule gives the device, or the other driver blacklisted,
    holds steadier. Absent: systemd's default, /dev/watchdog0."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        return None if value is None else check_watchdog_device(value)


class AddressMode(StrEnum):
    DHCP = "dhcp"
    STATIC = "static"


class NetworkConfig(ConfigSection):
    """The node's wired network: DHCP, or one static IPv4 address with its gateway and name servers."""

    mode: AddressMode = AddressMode.DHCP
    """dhcp (the default) or static."""
    interface: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:-]{1,15}$")
    """The interface to configure (e.g. enp1s0); absent: every wired interface."""
    address: Annotated[str | None, BeforeValidator(_empty_is_none)] = None
    """With static: the address and its subnet in CIDR form, e.g. 192.168.10.21/24."""
    gateway: Annotated[str | None, BeforeValidator(_empty_is_none)] = None
    """With static: the default gateway, inside the address's subnet."""
    dns: Annotated[list[str], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list, max_length=4)
    """With static: name servers (IPv4 addresses)."""

    @field_validator("address")
    @classmethod
    def _interface_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            address = ipaddress.IPv4Interface(value)
        except ValueError as exc:
            raise ValueError(f"{{key}} must be an IPv4 address with its prefix, such as 192.168.10.21/24, "
                             f"not {value!r}") from exc
        if "/" not in value:
            raise ValueError(f"{{key}} {value!r} has no prefix: add the subnet's, such as /24")
        network = address.network
        if network.prefixlen < 31 and address.ip in (network.network_address, network.broadcast_address):
            raise ValueError(f"{{key}} {value!r} is the subnet's network or broadcast address, not a host's")
        return value

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        return None if value is None else _ipv4_address(value, "{key}", "192.168.10.1")

    @field_validator("dns")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for index, server in enumerate(value):
            _ipv4_address(server, f"{{key}}[{index}]", "1.1.1.1")
        return value

    @model_validator(mode="after")
    def _static_needs_a_subnet(self) -> NetworkConfig:
        if self.mode is AddressMode.STATIC:
            if self.address is None or self.gateway is None:
                raise ValueError("{key}: a static address needs both address (CIDR) and gateway")
            network = ipaddress.IPv4Interface(self.address).network
            if ipaddress.IPv4Address(self.gateway) not in network:
                raise ValueError(f"{{key}}.gateway {self.gateway} is outside the address's subnet {network}: "
                                 "the gateway must be on the node's own subnet")
        return self


class MaculaosConfig(ConfigSection):
    """MaculaOS's own settings."""

    hostname: Annotated[str | None, BeforeValidator(_hostname)] = None
    """This node's name (the Kubernetes Node's and mDNS's): one DNS label. Absent: macula-<8 hex>, made
    once from the machine id and kept on the data partition. A bad value is reported and not used."""
    timezone: Annotated[str | None, BeforeValidator(_optional(check_timezone))] = None
    """The node's time zone, an IANA name (Europe/Brussels); absent: UTC."""
    keymap: Annotated[str | None, BeforeValidator(_optional(check_keymap))] = None
    """The console keyboard layout (us, de, fr, be-latin1, ...: the image's supported set); absent: us."""
    locale: Annotated[str | None, BeforeValidator(_optional(check_locale))] = None
    """The system locale (LANG), one of the image's compiled set; absent: C.UTF-8."""
    network: NetworkConfig | None = None
    """The wired network; absent: DHCP on every wired interface."""
    mesh: MeshConfig | None = None
    """Mesh roles; absent: peer only, with the defaults below."""
    security: SecurityConfig | None = None
    """Firewall and WireGuard while no MeshRole selects the node (at boot: unless `meshrole_security`
    holds what the MeshRoles gave)."""
    meshrole_security: MeshRoleSecurityConfig | None = None
    """The firewall and WireGuard the MeshRoles selecting this node set, as last applied; while present it
    is used instead of `security` (written by the agent)."""
    backup_server: BackupServerConfig | None = None
    """Serve a backup server to peers; absent: this node serves none."""
    git_server: GitServerConfig | None = None
    """Serve git repositories to the site (GitOps); absent: this node serves none."""
    backup: Annotated[dict[str, LocalBackupJob], BeforeValidator(_none_is_empty_dict)] = Field(
        default_factory=dict)
    """The Backups this node runs, by name (written by the agent)."""
    kubernetes: KubernetesConfig | None = None
    """The cluster to join; absent: none. A bad section is reported at boot and the node boots unjoined."""
    watchdog: WatchdogConfig | None = None
    """The hardware watchdog; absent: off. A bad section is reported at boot and changes nothing."""


def _ssh_key(value: object) -> str:
    return check_ssh_key(value)


class NodeConfig(ConfigSection):
    """/var/lib/maculaos/config.yaml: the node's own settings (root-only, 0600: it may hold secrets).
    Provisioned by `maculaos install --config` or the ISO's `--install-config`, read by the agent and the
    boot services."""

    maculaos: MaculaosConfig = Field(default_factory=MaculaosConfig)
    """MaculaOS's settings."""
    ssh_authorized_keys: Annotated[list[Annotated[str, BeforeValidator(_ssh_key)]],
                                   BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    """OpenSSH public keys of the login user (macula), one line each. The login user's authorized_keys
    holds exactly these: removing one revokes it."""
    password_hash: Annotated[str | None, BeforeValidator(_password_hash)] = None
    """The login user's console password as a crypt(3) hash (`mkpasswd -m yescrypt`, `openssl passwd -6`);
    a password itself is refused. Absent: the password is locked (SSH keys only)."""

    _source: str = PrivateAttr(default="config.yaml")
    _problems: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], source: Path | str = "config.yaml") -> NodeConfig:
        """Every key checked; the first problem raises NodeConfigError (an install refuses the file)."""
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            key, problem = describe(exc.errors()[0])
            raise NodeConfigError(source, key, problem) from exc
        config._source = str(source)
        return config

    @classmethod
    def tolerant(cls, raw: Mapping[str, Any], source: Path | str = "config.yaml") -> NodeConfig:
        """Each section on its own: a bad one is left out (its defaults apply) and its problem kept for
        whoever needs it (`problem`, `require`), so one wrong key stops only what depends on it."""
        cleaned = copy.deepcopy(dict(raw))
        problems: dict[str, str] = {}
        while True:
            try:
                config = cls.model_validate(cleaned)
                break
            except ValidationError as exc:
                dropped = False
                for error in exc.errors():
                    _, problem = describe(error)
                    section = _section(error["loc"])
                    problems.setdefault(".".join(section), problem)
                    parent: Any = cleaned
                    for step in section[:-1]:
                        parent = parent.get(step) if isinstance(parent, dict) else None
                    if isinstance(parent, dict) and section[-1] in parent:
                        del parent[section[-1]]
                        dropped = True
                if not dropped:  # cannot happen with these models; never loop
                    raise NodeConfigError(source, *describe(exc.errors()[0])) from exc
        config._source, config._problems = str(source), problems
        return config

    @property
    def source(self) -> str:
        return self._source

    def problem(self, section: str) -> str | None:
        """What is wrong with a section (maculaos, maculaos.mesh, password_hash, ...), naming the key; None
        when it was fine or absent."""
        return self._problems.get(section)

    def require(self, *sections: str) -> None:
        """Raise NodeConfigError for the first of these sections that was bad (list parents first)."""
        for section in sections:
            problem = self.problem(section)
            if problem is not None:
                raise NodeConfigError(self._source, section, problem)

    def unknown_keys(self) -> list[str]:
        """Keys this version does not know (kept as they are), as dotted paths."""
        found: list[str] = []

        def walk(model: BaseModel, prefix: str) -> None:
            found.extend(f"{prefix}{k}" for k in (model.model_extra or {}))
            for name in type(model).model_fields:
                value = getattr(model, name)
                values: list[tuple[str, Any]] = list(value.items()) if isinstance(value, dict) else [("", value)]
                for sub, item in values:
                    if isinstance(item, BaseModel):
                        walk(item, f"{prefix}{name}.{sub + '.' if sub else ''}")
        walk(self, "")
        return found


class NodeConfigError(HostConfigError):
    """A config.yaml key is wrong: the message names the file and the key path."""

    def __init__(self, source: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source, self.key, self.problem = str(source), key, problem


def _section(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """The unit a tolerant read drops for an error at loc: maculaos.<section>, or a top-level key."""
    keys = tuple(str(step) for step in loc)
    return keys[:2] if keys[0] == "maculaos" and len(keys) > 1 else keys[:1]


def key_path(loc: tuple[int | str, ...]) -> str:
    """('maculaos', 'backup_server', 'port') -> maculaos.backup_server.port; list indexes in brackets."""
    path = ""
    for step in loc:
        path += f"[{step}]" if isinstance(step, int) else (f".{step}" if path else step)
    return path


def describe(error: ErrorDetails) -> tuple[str, str]:
    """(key path, the problem named by it) of one pydantic error, in config.yaml's words."""
    key = key_path(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        message = "{key} must be a mapping" + _mapping_hint(error["loc"])
    elif error["type"] == "list_type":
        message = "{key} must be a list"
    elif error["type"] == "extra_forbidden":
        message = "{key}: not a known key" + _mapping_hint(error["loc"][:-1], " (known: {})")
    return key, key_message(key, message)


def _mapping_hint(loc: tuple[int | str, ...], form: str = " ({})") -> str:
    """The keys of the section at loc, for a message: what a mapping there may hold."""
    model: Any = NodeConfig
    for step in loc:
        fields = getattr(model, "model_fields", {})
        if step not in fields:
            return ""
        model = _model_of(fields[step].annotation)
    fields = getattr(model, "model_fields", None)
    return form.format(", ".join(fields)) if fields else ""


def _model_of(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def read_node_config(host_root: Path) -> NodeConfig:
    """The node's config.yaml, read tolerantly (`NodeConfig.tolerant`); an unreadable or malformed file
    (not YAML, not a mapping) raises HostConfigError."""
    return NodeConfig.tolerant(read_config(host_root), config_file(host_root))


def section_value(section: ConfigSection, old: object) -> dict[str, Any]:
    """What to write for a section: its known keys from `section`, and every key of the old value this
    version does not know, as it was (so a rolled-back agent keeps what a newer one wrote)."""
    known = set(type(section).model_fields)
    kept = {k: v for k, v in old.items() if k not in known} if isinstance(old, dict) else {}
    return {**section.model_dump(mode="json", exclude_none=True), **kept}


def write_section(host_root: Path, name: str, section: ConfigSection | None) -> bool:
    """Set (or with None remove) maculaos.<name> from its model, keeping the keys it does not know;
    returns whether the file changed. Every other key of the file is left as it was."""
    return write_sections(host_root, {name: section})


def write_sections(host_root: Path, sections: Mapping[str, ConfigSection | None]) -> bool:
    """`write_section` for several sections in one atomic write of the file (they change together)."""
    raw = read_config(host_root).get("maculaos")
    values = {name: None if section is None else
              section_value(section, raw.get(name) if isinstance(raw, dict) else None)
              for name, section in sections.items()}
    return write_maculaos_sections(host_root, values)
