"""`maculaos agent apply --once`: a node converges from its own config.yaml, without Kubernetes, through
the same code as the agent; a bad config changes nothing; after a reboot it loads the ruleset the agent
last applied from the MeshRoles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from maculaos.agent.meshrole import converge_mesh
from maculaos.host.config import config_file, read_config
from maculaos.host.firewall import tcp_port_blocked
from maculaos.host.meshrole import FIREWALL_STATE
from maculaos.host.ports import ADMITTED_PORTS
from maculaos.host.systemd import Systemd

# Runs the CLI in a fresh interpreter and fails if the boot path pulled in the Kubernetes stack.
LEAN = ("import sys; from maculaos.cli import main; code = main(sys.argv[1:]); "
        "heavy = [m for m in ('kubernetes', 'kopf') if m in sys.modules]; "
        "sys.exit(f'boot path imported {heavy}') if heavy else sys.exit(code)")


def apply_once(host_root: Path, nft: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LEAN, "agent", "apply", "--once", f"--host-root={host_root}",
                           f"--nft={nft}"], capture_output=True, text=True, timeout=60)


def write_mesh(host_root: Path, mesh: dict[str, object], security: dict[str, object] | None = None) -> None:
    config = read_config(host_root)
    config["maculaos"]["mesh"] = mesh
    if security:
        config["maculaos"]["security"] = security
    config_file(host_root).write_text(yaml.safe_dump(config))


def test_gateway_from_config(host_root: Path, netns_nft: str) -> None:
    write_mesh(host_root, {"roles": {"bootstrap": False, "gateway": True}, "realm": "io.macula"},
               {"firewall": {"allow_ssh": False}})
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 0, result.stderr
    assert "mesh roles peer,gateway" in result.stdout
    assert Systemd(host_root).is_enabled("macula-gateway.service")
    table = subprocess.run([netns_nft, "list", "table", "inet", "maculaos"], capture_output=True, text=True).stdout
    assert "gateway" in table and "ssh" not in table
    assert read_config(host_root)["maculaos"]["hostname"] == "macula-nuc-01"
    again = apply_once(host_root, netns_nft)
    assert "config unchanged, units changed: none, firewall unchanged" in again.stdout


def test_a_bad_config_changes_nothing(host_root: Path, netns_nft: str) -> None:
    write_mesh(host_root, {"roles": {"gateway": "maybe"}})
    before = config_file(host_root).read_text()
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 1 and "maculaos.mesh.roles.gateway must be true or false" in result.stderr
    assert config_file(host_root).read_text() == before
    write_mesh(host_root, {"realm": "Not A Realm"})
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 1 and "realm" in result.stderr and "nothing changed" in result.stderr
    assert subprocess.run([netns_nft, "list", "tables"], capture_output=True, text=True).stdout == ""


# Issue #15, story 5: the firewall is right from the first packet after the reboot. The agent applies
# MeshRoles (converge_mesh, as its pass does); a reboot empties the kernel's ruleset and keeps the data
# partition; the boot's `maculaos agent apply --once` must load the same ruleset before the agent runs.
SHOP = {"roles": ["gateway"], "bootstrapPeers": ["https://boot.macula.io:443"],
        "firewall": {"allowSSH": False, "extraPorts": [{"port": 9100, "sources": ["10.0.3.0/24"]},
                                                       {"port": 5060, "protocol": "udp"}]},
        "wireguard": {"listenPort": 51900}}


def agent_applies(host_root: Path, nft: str, spec: dict[str, object] | None) -> None:
    objects = {} if spec is None else {"shop": {"metadata": {"name": "shop", "generation": 1}, "spec": spec}}
    outcome = converge_mesh(objects, {}, host_root, Systemd(host_root), nft, public_address=True)
    assert all(e["phase"] == "Applied" for e in outcome.entries.values()), outcome.entries


def ruleset(nft: str) -> str:
    return subprocess.run([nft, "list", "ruleset"], capture_output=True, text=True, check=True).stdout


def reboot_and_apply(host_root: Path, nft: str) -> subprocess.CompletedProcess[str]:
    subprocess.run([nft, "flush", "ruleset"], check=True)  # the kernel forgets; the data partition does not
    assert ruleset(nft) == ""
    result = apply_once(host_root, nft)
    assert result.returncode == 0, result.stderr
    return result


def test_the_boot_loads_the_ruleset_the_agent_applied_from_its_meshroles(host_root: Path, netns_nft: str) -> None:
    """Byte-identical to the live one: extraPorts (with sources), allowSSH false, the gateway's ports and the
    MeshRole's WireGuard port, although config.yaml's own security asks for something else."""
    write_mesh(host_root, {}, {"firewall": {"allow_ssh": True, "default_policy": "accept"}})
    agent_applies(host_root, netns_nft, SHOP)
    live = ruleset(netns_nft)
    assert "ip saddr 10.0.3.0/24 tcp dport 9100 accept" in live and "udp dport 5060 accept" in live
    assert "tcp dport 22" not in live and "udp dport 51900" in live and "policy drop" in live
    recorded = read_config(host_root)["maculaos"]["meshrole_security"]
    assert recorded["firewall"]["allow_ssh"] is False and recorded["wireguard"]["port"] == 51900

    result = reboot_and_apply(host_root, netns_nft)
    assert ruleset(netns_nft) == live
    assert "mesh roles peer,gateway" in result.stdout and result.stderr == ""


def test_a_removed_extra_port_stays_removed_after_the_reboot(host_root: Path, netns_nft: str) -> None:
    agent_applies(host_root, netns_nft, SHOP)
    fewer = {**SHOP, "firewall": {"allowSSH": False, "extraPorts": [{"port": 5060, "protocol": "udp"}]}}
    agent_applies(host_root, netns_nft, fewer)
    live = ruleset(netns_nft)
    assert "9100" not in live and "5060" in live
    reboot_and_apply(host_root, netns_nft)
    assert ruleset(netns_nft) == live


def test_with_no_meshrole_left_the_record_goes_and_the_boot_agrees_with_the_agent(host_root: Path,
                                                                                  netns_nft: str) -> None:
    """No MeshRole selects the node any more: the record is removed with the MeshRole's ruleset, and both
    the agent and the boot render config.yaml's own security."""
    write_mesh(host_root, {}, {"firewall": {"allow_mdns": False}})
    agent_applies(host_root, netns_nft, SHOP)
    agent_applies(host_root, netns_nft, None)
    assert "meshrole_security" not in read_config(host_root)["maculaos"]
    live = ruleset(netns_nft)
    assert "9100" not in live and "tcp dport 22" in live and "5353" not in live and "gateway" not in live
    reboot_and_apply(host_root, netns_nft)
    assert ruleset(netns_nft) == live


def test_a_corrupt_record_is_named_and_the_node_still_drops(host_root: Path, netns_nft: str) -> None:
    """A record damaged on disk (here an extra port the model refuses) is not used: the boot says which key
    of which file, and loads the MeshRole defaults (policy drop, no extra ports), never an open node. The
    record is left for the agent to rewrite."""
    agent_applies(host_root, netns_nft, SHOP)
    config = read_config(host_root)
    config["maculaos"]["meshrole_security"]["firewall"]["extra_ports"][0]["port"] = 70000
    config["maculaos"]["security"] = {"firewall": {"default_policy": "accept"}}
    config_file(host_root).write_text(yaml.safe_dump(config))

    result = reboot_and_apply(host_root, netns_nft)
    assert "warning: " + str(config_file(host_root)) + ": maculaos.meshrole_security.firewall.extra_ports[0].port: " \
           "Input should be less than or equal to 65535; the firewall is the MeshRole defaults" in result.stderr
    loaded = ruleset(netns_nft)
    assert "policy drop" in loaded and "9100" not in loaded and "5060" not in loaded
    assert read_config(host_root)["maculaos"]["meshrole_security"]["firewall"]["extra_ports"][0]["port"] == 70000

    agent_applies(host_root, netns_nft, SHOP)  # the agent's next pass records the MeshRoles again
    assert meshrole_ports(host_root) == [9100, 5060]


def meshrole_ports(host_root: Path) -> list[int]:
    return [p["port"] for p in read_config(host_root)["maculaos"]["meshrole_security"]["firewall"]["extra_ports"]]


def admitted_ports(nft: str) -> dict[str, set[int]]:
    """The ports table inet maculaos accepts from anywhere (rules with no interface or source match), read
    back from the kernel (nft -j), by protocol."""
    out = subprocess.run([nft, "-j", "list", "table", "inet", "maculaos"], capture_output=True, text=True,
                         check=True).stdout
    ports: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for item in json.loads(out)["nftables"]:
        expr = item.get("rule", {}).get("expr", [])
        matches = [e["match"] for e in expr if "match" in e]
        if len(matches) != 1 or "accept" not in expr[-1]:
            continue
        payload = matches[0]["left"].get("payload", {})
        if payload.get("field") == "dport":
            right = matches[0]["right"]
            ports[payload["protocol"]] |= set(right["set"]) if isinstance(right, dict) else {right}
    return ports


def test_a_host_without_config_gets_the_default_firewall(host_root: Path, netns_nft: str) -> None:
    """Issue #21: an unconfigured node drops everything but the one list of ports (maculaos.host.ports),
    never Debian's accept-everything; the agent's metrics only from pods."""
    config_file(host_root).unlink()
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 0, result.stderr
    assert "the default firewall loaded" in result.stdout
    listed = {proto: {n for p in ADMITTED_PORTS if p.protocol.value == proto and not p.pods_only for n in p.ports}
              for proto in ("tcp", "udp")}
    assert admitted_ports(netns_nft) == listed == {
        "tcp": {22, 6443, 10250, 2379, 2380, 23232, 80, 443}, "udp": {8472, 51820, 51821, 5353}}
    assert "policy drop" in ruleset(netns_nft)
    for port in (8080, 9750, 9000):
        assert tcp_port_blocked(port, netns_nft) is not None, port
    assert not (host_root / FIREWALL_STATE).exists()  # the agent's record stays the agent's
    assert apply_once(host_root, netns_nft).returncode == 0  # a second boot's apply: the same, no error
    assert admitted_ports(netns_nft) == listed


def test_a_host_with_config_but_no_security_section_drops_by_default(host_root: Path, netns_nft: str) -> None:
    """config.yaml without maculaos.security: the MeshRole defaults (policy drop), the wizard's ports shut."""
    assert apply_once(host_root, netns_nft).returncode == 0
    ports = admitted_ports(netns_nft)
    assert "policy drop" in ruleset(netns_nft) and 22 in ports["tcp"] and 23232 in ports["tcp"]
    assert 80 not in ports["tcp"] and tcp_port_blocked(8080, netns_nft) is not None


def test_the_first_boot_settings_are_applied_and_a_bad_one_only_warned(host_root: Path, netns_nft: str) -> None:
    """What the first-boot wizard writes (time zone, keymap, locale, network) reaches /etc at the next
    apply; a bad key is named and its files left alone, the rest still applied."""
    config = read_config(host_root)
    config["maculaos"].update({"timezone": "Europe/Brussels", "keymap": "be-latin1", "locale": "fr_BE.UTF-8",
                               "network": {"mode": "static", "address": "192.168.10.21/24",
                                           "gateway": "192.168.10.1", "dns": ["1.1.1.1"]}})
    config_file(host_root).write_text(yaml.safe_dump(config))
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 0, result.stderr
    assert (host_root / "etc/localtime").readlink() == Path("/usr/share/zoneinfo/Europe/Brussels")
    assert "KEYMAP=be-latin1" in (host_root / "etc/vconsole.conf").read_text()
    assert "LANG=fr_BE.UTF-8" in (host_root / "etc/default/locale").read_text()
    network = (host_root / "etc/systemd/network/10-maculaos.network").read_text()
    assert "Address=192.168.10.21/24" in network and "Gateway=192.168.10.1" in network and "DNS=1.1.1.1" in network
    config["maculaos"].update({"timezone": "Mars/Base", "network": {"mode": "dhcp"}})
    config_file(host_root).write_text(yaml.safe_dump(config))
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 0 and "maculaos.timezone 'Mars/Base' is not a time zone" in result.stderr
    assert (host_root / "etc/localtime").readlink() == Path("/usr/share/zoneinfo/Europe/Brussels")
    assert not (host_root / "etc/systemd/network/10-maculaos.network").exists()  # the image's DHCP default
