"""What the node agent is told when it starts: one field per setting, each with its docstring.

`maculaos agent run` makes its flags from these fields (maculaos.cli.options.settings_flags: the field
name is the flag, the docstring its help), so a setting is declared once. Kept apart from the runner so
that building the command line imports nothing of the agent loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AgentSettings:
    """The agent's settings; a field without a default is a required flag of `maculaos agent run`."""

    node_name: str
    """This node's Node name."""
    host_root: Path
    """Where the node's root filesystem is mounted."""
    resync_seconds: float = 30.0
    """Converge and report this often even without changes, so drift on the host heals."""
    nft: str = "nft"
    """nft command (tests point it at a network namespace)."""
    systemctl: str = "systemctl"
    """systemctl of the running system: health probes and restarts (and role units with live systemd)."""
    live_systemd: bool = False
    """Enable role units on the running systemd (`--now`) instead of `systemctl --root=<host root>`."""
    restic: str = "restic"
    """restic command for Backups and Restores."""
    rauc: str = "rauc"
    """rauc command, run in the node's mount namespace (it sees the host root as `/`: paths given to it are
    translated); it talks to the node's RAUC service on $DBUS_SYSTEM_BUS_ADDRESS (default system bus)."""
    rauc_conf: str = ""
    """RAUC system.conf whose keyring verifies bundles, under the host root; empty:
    <host root>/etc/rauc/system.conf."""
    reboot_command: str = "systemctl reboot"
    """How the agent reboots the node when the operator grants it (simulated nodes pass a hook)."""
    grub_editenv: str = "grub-editenv"
    """grub-editenv command: a decommissioning factory reset sets its flag in the node's GRUB environment."""
    grub_editenv_in_node: bool = False
    """The grub-editenv command runs in the node's mount namespace (the image's host wrapper): it is given
    the GRUB environment's path as the node sees it, not under the host root."""
    lan_neighbours_seconds: float = 0.0
    """Look for the other MaculaOS nodes on the LAN (mDNS) this often and list them in the NodeReport;
    0: never (python-zeroconf is not even loaded)."""
