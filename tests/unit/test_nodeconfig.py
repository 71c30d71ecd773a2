"""NodeConfig, the one model of config.yaml: every bad value named by its key, unknown keys kept through a
section write, defaults shared with the MeshRole, the lean boot readers agreeing with it, docs/config.md
generated from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.api.meshrole import Firewall, MeshRoleSpec, WireGuard
from maculaos.cli import main
from maculaos.host.config import HostConfigError, config_file, read_config
from maculaos.host.firewall import render_ruleset
from maculaos.host.hostname import choose
from maculaos.host.logins import authorized_keys, password_field
from maculaos.host.meshrole import (
    meshrole_security_problem,
    plan_from_config,
    plan_mesh,
    plan_without_meshroles,
    recorded_security,
)
from maculaos.host.nodeconfig import (
    FirewallConfig,
    LocalBackupJob,
    MeshConfig,
    NodeConfig,
    NodeConfigError,
    WireGuardConfig,
    section_value,
    write_section,
)
from maculaos.host.nodeinfo import read_node_info
from maculaos.host.watchdog import render_drop_in
from maculaos.image.install import InstallError, check_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"
HASH = "$6$saltsalt$" + "a" * 86


def test_committed_reference_matches_the_model() -> None:
    assert main(["config", "docs", "--check", "--output", str(DOCS)]) == 0, \
        "docs/config.md is out of date: run `maculaos config docs`"


def test_check_fails_on_a_stale_or_missing_reference(tmp_path: Path) -> None:
    out = tmp_path / "config.md"
    assert main(["config", "docs", "--check", "--output", str(out)]) == 1 and not out.exists()
    assert main(["config", "docs", "--output", str(out)]) == 0
    assert main(["config", "docs", "--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("| `realm` |", "| `realm2` |"))
    assert main(["config", "docs", "--check", "--output", str(out)]) == 1


def test_every_key_is_in_the_reference() -> None:
    text = DOCS.read_text()
    for section in ("maculaos.mesh", "maculaos.security.firewall", "maculaos.security.wireguard",
                    "maculaos.security.firewall.extra_ports", "maculaos.meshrole_security.firewall",
                    "maculaos.backup_server", "maculaos.backup.<name>", "maculaos.network"):
        assert f"## `{section}`" in text
    for key in ("hostname", "ssh_authorized_keys", "password_hash", "bootstrap_peers", "mesh_interface", "htpasswd",
                "timezone", "keymap", "locale", "gateway"):
        assert f"| `{key}` |" in text
    assert "seed" not in text.lower()


@pytest.mark.parametrize(("config", "key"), [
    ("maculaos: 3", "maculaos must be a mapping"),
    ("maculaos: {hostname: Not_A_Name}", "maculaos.hostname 'Not_A_Name' is not used: it must be one DNS label"),
    ("maculaos: {hostname: 42}", "maculaos.hostname 42 is not used"),
    ("maculaos: {mesh: [bootstrap]}", "maculaos.mesh must be a mapping (roles, bootstrap_peers"),
    ("maculaos: {mesh: {roles: [gateway]}}", "maculaos.mesh.roles must be a mapping of role: true or false"),
    ("maculaos: {mesh: {roles: {gateway: maybe}}}", "maculaos.mesh.roles.gateway must be true or false"),
    ("maculaos: {mesh: {roles: {relay: true}}}", "maculaos.mesh.roles.relay: not a role; the roles are bootstrap, "
                                                 "gateway"),
    ("maculaos: {mesh: {bootstrap_peers: [ftp://boot]}}", "maculaos.mesh.bootstrap_peers[0]: String should match"),
    ("maculaos: {mesh: {bootstrap_peers: https://boot}}", "maculaos.mesh.bootstrap_peers must be a list"),
    ("maculaos: {mesh: {realm: Not A Realm}}", "maculaos.mesh.realm: String should match"),
    ("maculaos: {mesh: {tls_mode: strict}}", "maculaos.mesh.tls_mode: Input should be 'development' or 'production'"),
    ("maculaos: {mesh: {public_hostname: -x-}}", "maculaos.mesh.public_hostname: String should match"),
    ("maculaos: {security: on}", "maculaos.security must be a mapping (firewall, wireguard)"),
    ("maculaos: {security: {firewall: 1}}", "maculaos.security.firewall must be a mapping (enabled, default_policy"),
    ("maculaos: {security: {firewall: {enabled: maybe}}}", "maculaos.security.firewall.enabled: Input should be a "
                                                           "valid boolean"),
    ("maculaos: {security: {firewall: {default_policy: reject}}}", "maculaos.security.firewall.default_policy: "
                                                                   "Input should be 'drop' or 'accept'"),
    ("maculaos: {security: {firewall: {allow_mesh: maybe}}}", "maculaos.security.firewall.allow_mesh"),
    ("maculaos: {security: {firewall: {allow_ssh: maybe}}}", "maculaos.security.firewall.allow_ssh"),
    ("maculaos: {security: {wireguard: {enabled: maybe}}}", "maculaos.security.wireguard.enabled"),
    ("maculaos: {security: {wireguard: {mesh_interface: wg-mesh-far-too-long}}}",
     "maculaos.security.wireguard.mesh_interface: String should have at most 15 characters"),
    ("maculaos: {security: {wireguard: {port: 0}}}", "maculaos.security.wireguard.port: Input should be greater"),
    ("maculaos: {security: {firewall: {allow_kubernetes: maybe}}}", "maculaos.security.firewall.allow_kubernetes"),
    ("maculaos: {security: {firewall: {allow_mdns: maybe}}}", "maculaos.security.firewall.allow_mdns"),
    ("maculaos: {security: {firewall: {extra_ports: 9100}}}", "maculaos.security.firewall.extra_ports must be a list"),
    ("maculaos: {security: {firewall: {extra_ports: [{port: 70000}]}}}",
     "maculaos.security.firewall.extra_ports[0].port: Input should be less than or equal to 65535"),
    ("maculaos: {security: {firewall: {extra_ports: [{port: 53, protocol: sctp}]}}}",
     "maculaos.security.firewall.extra_ports[0].protocol: Input should be 'tcp' or 'udp'"),
    ("maculaos: {security: {firewall: {extra_ports: [{port: 53, sources: [lan]}]}}}",
     "maculaos.security.firewall.extra_ports[0].sources[0]: String should match"),
    ("maculaos: {meshrole_security: [ssh]}", "maculaos.meshrole_security must be a mapping (firewall, wireguard)"),
    ("maculaos: {meshrole_security: {firewall: {extra_ports: [{port: 0}]}}}",
     "maculaos.meshrole_security.firewall.extra_ports[0].port: Input should be greater than or equal to 1"),
    ("maculaos: {meshrole_security: {wireguard: {port: 0}}}", "maculaos.meshrole_security.wireguard.port"),
    ("maculaos: {backup_server: yes}", "maculaos.backup_server must be a mapping (enabled, url, port, sources, "
                                       "htpasswd)"),
    ("maculaos: {backup_server: {enabled: maybe}}", "maculaos.backup_server.enabled"),
    ("maculaos: {backup_server: {url: 'ftp://10.0.3.7'}}", "maculaos.backup_server.url: String should match"),
    ("maculaos: {backup_server: {port: 70000}}", "maculaos.backup_server.port: Input should be less than"),
    ("maculaos: {backup_server: {sources: [shop-lan]}}", "maculaos.backup_server.sources: entry 0 ('shop-lan')"),
    ("maculaos: {backup_server: {htpasswd: 'nas pw'}}", "maculaos.backup_server.htpasswd: line 1: expected "
                                                        "user:hash"),
    ("maculaos: {backup_server: {adress: x}}", "maculaos.backup_server.adress: not a known key (known: enabled"),
    ("maculaos: {backup: [nightly]}", "maculaos.backup must be a mapping"),
    ("maculaos: {backup: {nightly: {include_k3s_datastore: maybe}}}",
     "maculaos.backup.nightly.include_k3s_datastore: Input should be a valid boolean"),
    ("maculaos: {watchdog: 60}", "maculaos.watchdog must be a mapping (enabled, timeout_seconds, "
                                 "reboot_timeout_seconds, device)"),
    ("maculaos: {watchdog: {enabled: maybe}}", "maculaos.watchdog.enabled: Input should be a valid boolean"),
    ("maculaos: {watchdog: {timeout_seconds: 1}}",
     "maculaos.watchdog.timeout_seconds: Input should be greater than or equal to 5"),
    ("maculaos: {watchdog: {timeout_seconds: 3600}}",
     "maculaos.watchdog.timeout_seconds: Input should be less than or equal to 600"),
    ("maculaos: {watchdog: {timeout_seconds: a minute}}", "maculaos.watchdog.timeout_seconds: Input should be a "
                                                          "valid integer"),
    ("maculaos: {watchdog: {reboot_timeout_seconds: 10}}",
     "maculaos.watchdog.reboot_timeout_seconds: Input should be greater than or equal to 30"),
    ("maculaos: {watchdog: {timeout: 30}}", "maculaos.watchdog.timeout: not a known key (known: enabled"),
    ("maculaos: {watchdog: {device: watchdog1}}", "maculaos.watchdog.device must be a watchdog device's path "
                                                  "under /dev, such as /dev/watchdog1"),
    ("maculaos: {watchdog: {device: /etc/watchdog1}}", "maculaos.watchdog.device must be a watchdog device's path"),
    ("maculaos: {watchdog: {device: /dev/../etc/shadow}}", "not '/dev/../etc/shadow'"),
    ("maculaos: {watchdog: {device: /dev/}}", "maculaos.watchdog.device must be a watchdog device's path"),
    ("maculaos: {watchdog: {device: /dev//watchdog1}}", "maculaos.watchdog.device must be a watchdog device's path"),
    ("maculaos: {watchdog: {device: '/dev/watchdog 1'}}", "maculaos.watchdog.device must be a watchdog device's"),
    ("maculaos: {watchdog: {device: \"/dev/watchdog1\\nRuntimeWatchdogSec=0\"}}",
     "maculaos.watchdog.device must be a watchdog device's path"),
    ("maculaos: {watchdog: {device: 1}}", "maculaos.watchdog.device: Input should be a valid string"),
    ("maculaos: {watchdog: {device: [/dev/watchdog1]}}", "maculaos.watchdog.device: Input should be a valid string"),
    (f"maculaos: {{watchdog: {{device: /dev/{'w' * 60}}}}}",
     "maculaos.watchdog.device: String should have at most 64 characters"),
    ("maculaos: {timezone: Mars/Base}", "maculaos.timezone 'Mars/Base' is not a time zone"),
    ("maculaos: {timezone: 3}", "maculaos.timezone 3 is not a time zone"),
    ("maculaos: {keymap: klingon}", "maculaos.keymap 'klingon' is not a supported keyboard layout"),
    ("maculaos: {locale: tlh_QO.UTF-8}", "maculaos.locale 'tlh_QO.UTF-8' is not a supported locale"),
    ("maculaos: {network: dhcp}", "maculaos.network must be a mapping (mode, interface, address, gateway, dns)"),
    ("maculaos: {network: {mode: bridge}}", "maculaos.network.mode: Input should be 'dhcp' or 'static'"),
    ("maculaos: {network: {interface: 'eth0 up'}}", "maculaos.network.interface: String should match"),
    ("maculaos: {network: {mode: static, address: 10.0.0.5}}", "maculaos.network.address '10.0.0.5' has no prefix"),
    ("maculaos: {network: {mode: static, address: 10.0.0.255/24, gateway: 10.0.0.1}}",
     "maculaos.network.address '10.0.0.255/24' is the subnet's network or broadcast address"),
    ("maculaos: {network: {mode: static, address: 10.0.0.5/24}}",
     "maculaos.network: a static address needs both address (CIDR) and gateway"),
    ("maculaos: {network: {mode: static, address: 10.0.0.5/24, gateway: 10.0.1.1}}",
     "maculaos.network.gateway 10.0.1.1 is outside the address's subnet 10.0.0.0/24"),
    ("maculaos: {network: {gateway: router}}", "maculaos.network.gateway must be an IPv4 address"),
    ("maculaos: {network: {dns: [dns.google]}}", "maculaos.network.dns[0] must be an IPv4 address"),
    ("ssh_authorized_keys: ssh-ed25519 AAAA", "ssh_authorized_keys must be a list"),
    ("ssh_authorized_keys: [ssh-dss AAAA]", "ssh_authorized_keys[0]: not an OpenSSH public key"),
    ("password_hash: hunter2", "password_hash must be a crypt(3) hash"),
])
def test_a_bad_value_is_named_by_its_key_and_the_file(config: str, key: str) -> None:
    with pytest.raises(NodeConfigError) as raised:
        NodeConfig.parse(yaml.safe_load(config), "/var/lib/maculaos/config.yaml")
    assert str(raised.value).startswith("/var/lib/maculaos/config.yaml: ")
    assert key in raised.value.problem and "Value error" not in raised.value.problem
    assert "hunter2" not in str(raised.value)  # a password is not echoed


@pytest.mark.parametrize(("device", "kept"), [
    ("/dev/watchdog1", "/dev/watchdog1"),
    ("/dev/watchdog", "/dev/watchdog"),  # the kernel's name for the first device, as older systemd used
    ("/dev/watchdog-i6300esb", "/dev/watchdog-i6300esb"),  # a udev rule's name
    ("/dev/watchdogs/board.0", "/dev/watchdogs/board.0"),
    ("", None),  # an empty value is the default: /dev/watchdog0
    (None, None),
])
def test_a_watchdog_device_is_a_path_under_dev_and_goes_into_the_drop_in(device: str | None,
                                                                        kept: str | None) -> None:
    config = NodeConfig.parse({"maculaos": {"watchdog": {"timeout_seconds": 30, "device": device}}})
    assert config.maculaos.watchdog is not None and config.maculaos.watchdog.device == kept
    drop_in = render_drop_in(config.maculaos.watchdog).splitlines()
    assert drop_in[1:4] == ["[Manager]", "RuntimeWatchdogSec=30s", "RebootWatchdogSec=600s"]
    assert drop_in[4:] == ([f"WatchdogDevice={kept}"] if kept else [])


@pytest.mark.parametrize(("config", "refusal"), [
    ("maculaos: {hostname: Not_A_Name}", "the agent would refuse it: maculaos.hostname"),
    ("maculaos: {security: {wireguard: {port: 0}}}", "the agent would refuse it: maculaos.security.wireguard.port"),
    ("maculaos: {backup_server: {adress: x}}", "the agent would refuse it: maculaos.backup_server.adress"),
    ("password_hash: hunter2", r"the login settings are refused: .*config.yaml: password_hash must be"),
])
def test_install_refuses_with_the_model(tmp_path: Path, config: str, refusal: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config + "\n")
    with pytest.raises(InstallError, match=refusal):
        check_config(path)


def test_a_full_config_is_accepted_with_its_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    text = yaml.safe_dump({
        "maculaos": {"hostname": "shop-01", "mesh": {"roles": {"gateway": True}, "realm": "io.macula.shop"},
                     "security": {"firewall": {"allow_ssh": False}, "wireguard": {"port": 51900}},
                     "backup_server": {"port": 8100, "sources": ["10.0.3.0/24"]}, "dns_nameservers": ["1.1.1.1"]},
        "ssh_authorized_keys": [KEY], "password_hash": HASH, "k3s": {"airgap": True}})
    path.write_text(text)
    assert check_config(path) == text
    config = NodeConfig.parse(yaml.safe_load(text))
    assert config.unknown_keys() == ["k3s", "maculaos.dns_nameservers"]
    plan = plan_from_config(config)
    assert plan.realm == "io.macula.shop" and not plan.firewall.allow_ssh and plan.wireguard.listen_port == 51900


def test_defaults_are_the_meshroles() -> None:
    spec = MeshRoleSpec()
    mesh = MeshConfig()
    assert (mesh.realm, mesh.bootstrap_peers, mesh.tls_mode, mesh.public_hostname) == \
        (spec.realm, spec.bootstrap_peers, spec.tls_mode, spec.public_hostname)
    assert FirewallConfig().to_api() == Firewall() and WireGuardConfig().to_api() == WireGuard()
    assert plan_from_config(NodeConfig()) == plan_mesh({"config.yaml": spec})


MESHROLE = MeshRoleSpec.model_validate({
    "roles": ["gateway"], "realm": "io.macula.shop",
    "firewall": {"allowSSH": False, "allowMdns": False, "defaultPolicy": "drop",
                 "extraPorts": [{"port": 9100, "sources": ["10.0.3.0/24", "fd00::/8"]},
                                {"port": 5060, "protocol": "udp"}]},
    "wireguard": {"listenPort": 51900, "interface": "wg-shop"}})


def booted(plan_config: dict[str, Any]) -> NodeConfig:
    """config.yaml as the agent left it and the boot reads it (dumped and read back, as on disk)."""
    return NodeConfig.tolerant(yaml.safe_load(yaml.safe_dump(plan_config)), "/var/lib/maculaos/config.yaml")


def test_the_boot_renders_the_ruleset_the_meshroles_gave() -> None:
    """Issue #15, story 5: what the agent records with the ruleset (maculaos.mesh and
    maculaos.meshrole_security) gives the boot the same plan and the same nft script, byte for byte, even
    where config.yaml's own security says otherwise. Before, the boot used maculaos.security alone: SSH
    open, mDNS open, no extra ports, WireGuard on the default port."""
    live = plan_mesh({"shop": MESHROLE})
    config = booted({"maculaos": {"mesh": section_value(live.config_section(), None),
                                  "meshrole_security": section_value(recorded_security(live), None),
                                  "security": {"firewall": {"allow_ssh": True, "default_policy": "accept"}}}})
    boot = plan_from_config(config)
    assert (boot.roles, boot.firewall, boot.wireguard) == (live.roles, live.firewall, live.wireguard)
    script = render_ruleset(live.roles, live.firewall, live.wireguard, 8000, ("10.0.3.0/24",))
    assert render_ruleset(boot.roles, boot.firewall, boot.wireguard, 8000, ("10.0.3.0/24",)) == script
    assert "extra tcp/9100" in script and "udp dport 51900" in script and "ssh" not in script
    assert meshrole_security_problem(config) is None


def test_without_the_record_the_boot_and_the_agent_use_the_security_section() -> None:
    config = booted({"maculaos": {"security": {"firewall": {"allow_mdns": False,
                                                            "extra_ports": [{"port": 9100}]}}}})
    assert plan_from_config(config).firewall == plan_without_meshroles(config).firewall == \
        Firewall(allow_mdns=False, extra_ports=[{"port": 9100}])


def test_a_corrupt_record_is_named_and_falls_back_to_a_dropping_firewall() -> None:
    config = booted({"maculaos": {"meshrole_security": {"firewall": {"allow_ssh": False,
                                                                     "extra_ports": [{"port": "nine"}]}},
                                  "security": {"firewall": {"default_policy": "accept"}}}})
    problem = meshrole_security_problem(config)
    assert problem is not None and problem.startswith(
        "/var/lib/maculaos/config.yaml: maculaos.meshrole_security.firewall.extra_ports[0].port: "), problem
    plan = plan_from_config(config)
    assert plan.firewall == Firewall() and plan.firewall.default_policy.value == "drop"
    assert "policy drop;" in render_ruleset(plan.roles, plan.firewall, plan.wireguard)


def test_a_bad_section_stops_only_what_depends_on_it() -> None:
    config = NodeConfig.tolerant({"maculaos": {"backup_server": {"port": 0}, "mesh": {"realm": "io.macula.shop"}},
                                  "password_hash": "hunter2"}, "config.yaml")
    assert config.maculaos.backup_server is None and config.maculaos.mesh is not None
    assert config.problem("maculaos.backup_server") == "maculaos.backup_server.port: Input should be greater than " \
                                                       "or equal to 1"
    assert config.problem("password_hash") is not None and config.password_hash is None
    assert plan_from_config(config).realm == "io.macula.shop"
    with pytest.raises(NodeConfigError, match="^config.yaml: maculaos.backup_server.port"):
        config.require("maculaos.mesh", "maculaos.backup_server")


NEWER = """\
future_top: {kept: [1, 2]}
maculaos:
  hostname: shop-01
  future_section: {x: 1}
  mesh:
    roles: {bootstrap: false, gateway: true}
    realm: io.macula.shop
    future_mesh_key: keep me
  security:
    firewall: {allow_ssh: false, future_firewall_key: 3}
  backup:
    nightly:
      target: local
      future_job_key: keep me too
k3s: {airgap: true}
ssh_authorized_keys: []
"""


def test_writing_a_section_keeps_every_other_key_known_or_not(tmp_path: Path) -> None:
    """An agent rolled back to an older version rewrites maculaos.mesh: what a newer one wrote stays, at
    every level (top, inside maculaos, inside the section written, inside other sections)."""
    config_file(tmp_path).parent.mkdir(parents=True)
    config_file(tmp_path).write_text(NEWER)
    before = yaml.safe_load(NEWER)
    plan = plan_mesh({"m": MeshRoleSpec(roles=["bootstrap"], realm="io.macula.other", bootstrap_peers=[])})
    assert write_section(tmp_path, "mesh", plan.config_section())
    after = read_config(tmp_path)
    assert after["maculaos"]["mesh"] == {"roles": {"bootstrap": True, "gateway": False}, "bootstrap_peers": [],
                                         "realm": "io.macula.other", "tls_mode": "development",
                                         "future_mesh_key": "keep me"}
    del after["maculaos"]["mesh"], before["maculaos"]["mesh"]
    assert after == before
    assert not write_section(tmp_path, "mesh", plan.config_section())  # the same again: file untouched
    assert NodeConfig.tolerant(read_config(tmp_path)).unknown_keys() == [
        "future_top", "k3s", "maculaos.future_section", "maculaos.mesh.future_mesh_key",
        "maculaos.security.firewall.future_firewall_key", "maculaos.backup.nightly.future_job_key"]


def test_a_known_key_no_longer_set_is_removed_and_an_unknown_one_kept() -> None:
    old = {"realm": "io.macula", "public_hostname": "boot.example.org", "future": 1}
    new = MeshConfig(realm="io.macula")
    assert section_value(new, old) == {**new.model_dump(mode="json", exclude_none=True), "future": 1}
    job = LocalBackupJob(target="mesh")
    assert section_value(job, {"target": "local", "future_job_key": [1]})["future_job_key"] == [1]


def model_and_lean(raw: dict[str, Any], model: Callable[[NodeConfig], Any],
                   lean: Callable[[dict[str, Any], Path], Any]) -> tuple[Any, Any]:
    """What NodeConfig and a lean boot reader make of raw: each one's value, or its refusal as a message."""
    try:
        expected: Any = model(NodeConfig.parse(raw))
    except NodeConfigError as exc:
        expected = exc.problem
    try:
        found: Any = lean(raw, Path("config.yaml"))
    except HostConfigError as exc:
        found = str(exc).removeprefix("config.yaml: ")
    return expected, found


@pytest.mark.parametrize("value", [[KEY], [42], ["ssh-dss AAAA"], "not a list", None, [f"{KEY}\nssh-rsa AAAA"]])
def test_the_lean_key_reader_agrees_with_the_model(value: Any) -> None:
    """node-info reads the raw file at boot (no pydantic): it must accept and refuse what NodeConfig does."""
    expected, lean = model_and_lean({"ssh_authorized_keys": value}, lambda c: c.ssh_authorized_keys, authorized_keys)
    if isinstance(expected, str):  # both refuse, naming the same key
        assert isinstance(lean, str) and lean.split(" ")[0].rstrip(":") == expected.split(" ")[0].rstrip(":")
    else:
        assert lean == expected


@pytest.mark.parametrize("value", [HASH, "hunter2", 42, None])
def test_the_lean_password_reader_agrees_with_the_model(value: Any) -> None:
    expected, lean = model_and_lean({"password_hash": value}, lambda c: c.password_hash or "!", password_field)
    assert lean == expected


@pytest.mark.parametrize("value", ["shop-01", "Shop_01", 42, "", None])
def test_the_lean_hostname_reader_agrees_with_the_model(tmp_path: Path, value: Any) -> None:
    config_file(tmp_path).parent.mkdir(parents=True)
    config_file(tmp_path).write_text(yaml.safe_dump({"maculaos": {"hostname": value}}))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    choice = choose(tmp_path)
    try:
        configured = NodeConfig.parse(read_config(tmp_path)).maculaos.hostname
        assert choice.problem == "" and (choice.name == configured or configured is None)
    except NodeConfigError as exc:
        assert choice.problem == f"config.yaml {exc.problem}"


def test_the_lean_node_info_reader_agrees_with_the_model(tmp_path: Path) -> None:
    raw = {"maculaos": {"mesh": {"roles": {"gateway": True, "bootstrap": False}, "realm": "io.macula.shop"}}}
    info = read_node_info(tmp_path, raw)
    mesh = NodeConfig.parse(raw).maculaos.mesh
    assert mesh is not None
    assert info.roles == ("peer", *sorted(r.value for r in mesh.roles_on())) and info.realm == mesh.realm
