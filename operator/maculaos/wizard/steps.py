"""The wizard's settings, one table for the web pages and the text wizard: each step's fields and how a
filled form becomes config.yaml keys. Every value is checked by NodeConfig (the model the agent reads)
before anything is written, so a bad one changes nothing and the message names the key."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculaos.host.config import lookup, read_config, write_keys
from maculaos.host.nodeconfig import NodeConfig, NodeConfigError
from maculaos.wizard.errors import StepError

Form = Mapping[str, str]
Config = Mapping[str, Any]


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    help: str = ""
    kind: str = "text"
    """text, textarea, password, checkbox or select (with choices)."""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    fields: tuple[Field, ...]
    keys: Callable[[Form, Config], dict[str, Any]]
    """The config.yaml keys (dotted) the filled form sets, given the file as it is (a section's keys the
    page does not show are kept); None removes a key."""
    note: str = ""


def _text(form: Form, name: str) -> str:
    return form.get(name, "").strip()


def _old_section(config: Config, name: str) -> dict[str, Any]:
    maculaos = config.get("maculaos")
    section = maculaos.get(name) if isinstance(maculaos, dict) else None
    return dict(section) if isinstance(section, dict) else {}


def _hostname(form: Form, config: Config) -> dict[str, Any]:
    return {"maculaos.hostname": _text(form, "hostname") or None}


def _one(key: str, field: str) -> Callable[[Form, Config], dict[str, Any]]:
    return lambda form, config: {key: _text(form, field) or None}


def _network(form: Form, config: Config) -> dict[str, Any]:
    if _text(form, "mode") in ("", "dhcp"):
        return {"maculaos.network": {"mode": "dhcp", **({"interface": i} if (i := _text(form, "interface")) else {})}}
    dns = [s for s in _text(form, "dns").replace(",", " ").split() if s]
    section = {"mode": _text(form, "mode"), "interface": _text(form, "interface"), "address": _text(form, "address"),
               "gateway": _text(form, "gateway"), "dns": dns}
    return {"maculaos.network": {k: v for k, v in section.items() if v not in ("", [])}}


def _mesh(form: Form, config: Config) -> dict[str, Any]:
    roles = {role: form.get(role, "") in ("on", "yes", "true", "y") for role in ("bootstrap", "gateway")}
    section = {k: v for k, v in _old_section(config, "mesh").items() if k not in ("realm", "public_hostname")}
    section["roles"] = {**(section.get("roles") or {}), **roles}
    for key in ("realm", "public_hostname"):
        if value := _text(form, key):
            section[key] = value
    return {"maculaos.mesh": section}


def hash_password(password: str, openssl: str = "openssl") -> str:
    """A SHA-512 crypt(3) hash of the password (openssl passwd -6, the password on stdin: never in argv)."""
    try:
        done = subprocess.run([openssl, "passwd", "-6", "-stdin"], input=password + "\n", check=True,
                              capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise StepError("password", f"the password cannot be hashed here (openssl: {type(exc).__name__})") from None
    return done.stdout.strip()


def _access(form: Form, config: Config) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    lines = [line.strip() for line in form.get("ssh_keys", "").splitlines() if line.strip()]
    if lines:
        keys["ssh_authorized_keys"] = lines
    password = form.get("password", "")
    if password:
        if password != form.get("password_again", ""):
            raise StepError("password", "the two passwords differ: type the same password twice")
        if len(password) < 8:
            raise StepError("password", "the password is shorter than 8 characters")
        keys["password_hash"] = hash_password(password)
    if not keys:
        raise StepError("ssh_keys", "give at least one SSH public key or a console password: without either "
                                    "nobody can log in to the node")
    return keys


def _cluster(form: Form, config: Config) -> dict[str, Any]:
    if not any(_text(form, k) for k in ("server", "ca_cert")):
        return {"maculaos.kubernetes": None}
    # The token is never shown again: an empty field keeps the one the file has.
    token = _text(form, "token") or str(_old_section(config, "kubernetes").get("token", ""))
    section = {"server": _text(form, "server"), "ca_cert": form.get("ca_cert", "").strip().replace("\r\n", "\n"),
               "token": token}
    if node_ip := _text(form, "node_ip"):
        section["node_ip"] = node_ip
    return {"maculaos.kubernetes": section}


STEPS: tuple[Step, ...] = (
    Step("hostname", "Name", (Field("hostname", "Hostname", "one DNS label: lowercase letters, digits and '-'"),),
         _hostname),
    Step("keyboard", "Keyboard", (Field("keymap", "Keyboard layout", "us, uk, de, fr, be-latin1, ..."),),
         _one("maculaos.keymap", "keymap")),
    Step("timezone", "Time zone", (Field("timezone", "Time zone", "an IANA name such as Europe/Brussels"),),
         _one("maculaos.timezone", "timezone")),
    Step("locale", "Language", (Field("locale", "Locale", "C.UTF-8, en_US.UTF-8, de_DE.UTF-8, ..."),),
         _one("maculaos.locale", "locale")),
    Step("network", "Network", (
        Field("mode", "Addressing", "dhcp or static", kind="select", choices=("dhcp", "static")),
        Field("interface", "Interface", "e.g. enp1s0; empty: every wired interface"),
        Field("address", "Address (CIDR)", "static: e.g. 192.168.10.21/24"),
        Field("gateway", "Gateway", "static: e.g. 192.168.10.1, inside the address's subnet"),
        Field("dns", "Name servers", "static: addresses separated by spaces"),
    ), _network),
    Step("mesh", "Mesh roles", (
        Field("bootstrap", "Bootstrap", "other nodes find the mesh through it", kind="checkbox"),
        Field("gateway", "Gateway", "routes the mesh to the Internet", kind="checkbox"),
        Field("realm", "Realm", "e.g. io.macula.shop; empty: the default"),
        Field("public_hostname", "Public address", "the name or address peers reach this node at"),
    ), _mesh, note="A bootstrap node must be reachable from the Internet at a public address: give it under "
                   "Public address and open the mesh port on your router, or peers outside the LAN cannot join."),
    Step("access", "Login", (
        Field("ssh_keys", "SSH public keys", "one per line (ssh-ed25519 AAAA... me@laptop)", kind="textarea"),
        Field("password", "Console password", "at least 8 characters; only its hash is kept", kind="password"),
        Field("password_again", "Console password again", kind="password"),
    ), _access),
    Step("cluster", "Cluster", (
        Field("server", "API server", "https://192.168.10.2:6443; empty with the CA: join no cluster"),
        Field("ca_cert", "Cluster CA (PEM)", kind="textarea"),
        Field("token", "Bootstrap token", "abcdef.0123456789abcdef; empty: keep the one set", kind="password"),
        Field("node_ip", "Node IP", "optional: the address to register with"),
    ), _cluster),
)
BY_NAME = {step.name: step for step in STEPS}


def _nested(keys: Mapping[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for path, value in keys.items():
        *parents, last = path.split(".")
        mapping = raw
        for step in parents:
            mapping = mapping.setdefault(step, {})
        if value is not None:
            mapping[last] = value
    return raw


def check_keys(keys: Mapping[str, Any]) -> dict[str, Any]:
    """Every key checked by NodeConfig, and returned as the model normalised it (a PEM's final newline,
    an enum's value); StepError naming the key otherwise."""
    try:
        config = NodeConfig.parse(_nested(keys), "the form")
    except NodeConfigError as exc:
        raise StepError(exc.key, exc.problem) from None
    dumped = config.model_dump(mode="json", exclude_none=True, exclude_unset=True)
    return {path: None if value is None else lookup(dumped, path) for path, value in keys.items()}


def apply_step(host_root: Path, step: Step, form: Form) -> dict[str, Any]:
    """Check the form, then write its keys to config.yaml in one atomic write; returns the keys written.
    A bad value raises StepError and leaves the file as it was."""
    keys = check_keys(step.keys(form, read_config(host_root)))
    write_keys(host_root, keys)
    return keys


def current_values(raw: Mapping[str, Any]) -> dict[str, str]:
    """The form values config.yaml holds now (to fill the pages), never a secret."""
    maculaos = raw.get("maculaos") if isinstance(raw.get("maculaos"), dict) else {}
    assert isinstance(maculaos, dict)
    values = {k: str(maculaos[k]) for k in ("hostname", "keymap", "timezone", "locale")
              if isinstance(maculaos.get(k), str)}
    network = maculaos.get("network")
    if isinstance(network, dict):
        values.update({k: str(network[k]) for k in ("mode", "interface", "address", "gateway") if k in network})
        if isinstance(network.get("dns"), list):
            values["dns"] = " ".join(map(str, network["dns"]))
    mesh = maculaos.get("mesh")
    if isinstance(mesh, dict):
        roles = mesh.get("roles") if isinstance(mesh.get("roles"), dict) else {}
        assert isinstance(roles, dict)
        values.update({r: "on" for r in ("bootstrap", "gateway") if roles.get(r) is True})
        values.update({k: str(mesh[k]) for k in ("realm", "public_hostname") if k in mesh})
    keys = raw.get("ssh_authorized_keys")
    if isinstance(keys, list):
        values["ssh_keys"] = "\n".join(map(str, keys))
    kubernetes = maculaos.get("kubernetes")
    if isinstance(kubernetes, dict):
        values.update({k: str(kubernetes[k]) for k in ("server", "ca_cert", "node_ip") if k in kubernetes})
    return values
