"""Real RAUC on a simulated node: what tests and the demo use in place of a disk, a bootloader and a
power button.

Per node: two slot image files in the host root (rootfs.0 = A, rootfs.1 = B), a system.conf with
`bootloader=custom` whose backend script keeps the bootloader environment in files (primary slot and
each slot's state: good, pending = activated and not yet tried, trying = booted once and not confirmed,
bad), a private dbus-daemon as the node's system bus, and `rauc service` in its own mount namespace,
chrooted into the node's host root (this machine's /usr, /dev and /sys bind-mounted in, a real /proc
with a file bind-mounted over /proc/cmdline: `rauc.slot=A`). So RAUC sees the host root as `/`, as on a
real node, while the agent sees it at another path (as the DaemonSet's agent sees the host at /host);
`host-rauc` in the node's directory enters the service's namespace and root as the chart's wrapper
enters PID 1's (`nsenter`). A simulated boot is the firmware's part: pick the slot (a pending slot gets
one try; a slot that used its try unconfirmed is skipped), write the kernel command line, a new boot ID,
the boot time and the slot's os-release into the host root. A reboot stops the node's agent and RAUC
service, boots, and starts both again. Bundles are `format=plain` here (this kernel has no device-mapper
for verity); test keys come from openssl. A bad build (`build_bundle(panics=True)`) carries a rootfs whose
first line says its kernel panics: the firmware uses up that slot's one try and boots the old slot again.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from maculaos.devenv.processes import ProcessRecord, spawn, stop
from maculaos.errors import MaculaosError
from maculaos.host.rauc import Rauc

SLOTS = (("rootfs.0", "A"), ("rootfs.1", "B"))
SLOT_SIZE = 16 * 1024 * 1024

BACKEND = """#!/bin/sh
# The simulated bootloader environment (a real node keeps this in the GRUB env on its ESP).
# Run by `rauc service` inside the node's root: paths are the node's own.
d=/boot/bootenv
case "$1" in
  get-primary) cat "$d/primary" ;;
  set-primary)
    s=$(cat "$d/$2" 2>/dev/null || echo bad)
    [ "$s" = good ] || echo pending > "$d/$2"
    echo "$2" > "$d/primary.new" && mv "$d/primary.new" "$d/primary" ;;
  get-state)
    case "$(cat "$d/$2" 2>/dev/null)" in good|pending|trying) echo good ;; *) echo bad ;; esac ;;
  set-state) echo "$3" > "$d/$2" ;;
  get-current) sed -n 's/.*rauc\\.slot=\\([^ ]*\\).*/\\1/p' /proc/cmdline ;;
  *) echo "bootloader backend: unknown command $1" >&2; exit 1 ;;
esac
"""

SYSTEM_CONF = """[system]
compatible={compatible}
bootloader=custom
data-directory=/var/lib/rauc
mountprefix=/mnt/rauc
activate-installed=false

[handlers]
bootloader-custom-backend=/etc/rauc/bootloader-backend

[keyring]
path=/etc/rauc/keyring.pem

[slot.rootfs.0]
device=/rootfs.0
type=raw
bootname=A

[slot.rootfs.1]
device=/rootfs.1
type=raw
bootname=B
"""

DBUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:abstract=/maculaos/rauc-{node}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""

HOST_RAUC = """#!/bin/sh
# The agent's door to this node's RAUC: the service's mount namespace and root, as the chart's host-rauc
# enters PID 1's. Paths given to it are the node's own (the agent translates them from its host root).
exec nsenter --target "$(cat {pidfile})" --mount --root --wd -- rauc "$@"
"""

#: What the chroot of `rauc service` borrows from this machine (its programs and devices).
BORROWED = ("usr", "dev", "sys")

REBOOT_HOOK = """#!/bin/sh
# The simulated node's `systemctl reboot`: a detached process stops the agent, boots and starts it again.
setsid {python} -m maculaos.devenv.rauc reboot {node} >> {node}/logs/reboot.log 2>&1 < /dev/null &
"""


class SimulationError(MaculaosError):
    pass


def make_signing_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and key: the keyring of one fleet (or, in tests, of an impostor)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.cert.pem", directory / f"{name}.key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "3650", "-subj", f"/O=MaculaOS test/CN={name}"],
                       check=True, capture_output=True)
    return cert, key


#: The first line of a bad build's rootfs: a slot holding it fails to boot (see SimulatedRaucNode.boot).
PANIC_MARK = b"kernel panics at boot"


def build_bundle(out: Path, version: str, compatible: str, cert: Path, key: Path,
                 payload_bytes: int = 1024 * 1024, random_payload: bool = False, panics: bool = False) -> Path:
    """A plain RAUC bundle holding one rootfs image of payload_bytes: a recognisable text, or random bytes
    (which squashfs cannot shrink: a bundle as large as a real one). panics: a bad build, whose slot
    never boots."""
    work = out.with_name(out.name + ".d")
    work.mkdir(parents=True, exist_ok=True)
    line = f"MaculaOS {version} rootfs".encode() + (b" (" + PANIC_MARK + b")" if panics else b"") + b"\n"
    payload = (os.urandom(payload_bytes) if random_payload and not panics
               else (line * (payload_bytes // len(line) + 1))[:payload_bytes])
    (work / "rootfs.img").write_bytes(payload)
    (work / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat=plain\n\n"
        "[image.rootfs]\nfilename=rootfs.img\n")
    out.unlink(missing_ok=True)
    result = subprocess.run(["rauc", "bundle", f"--cert={cert}", f"--key={key}", str(work), str(out)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SimulationError(f"rauc bundle failed: {result.stderr}")
    return out


@dataclass
class NodeLayout:
    """Everything the reboot hook needs to find again, saved as node.json."""

    name: str
    node_dir: str
    initial_version: str
    host_root: str = ""
    bus_address: str = ""
    dbus_pid: int = 0
    service: ProcessRecord | None = None
    agent: ProcessRecord | None = None
    agent_argv: list[str] | None = None
    agent_env: dict[str, str] | None = None


class SimulatedRaucNode:
    """One node's disk, bootloader and RAUC service."""

    def __init__(self, node_dir: Path, name: str, compatible: str, keyring: Path,
                 version: str = "0.1.0", slot_size: int = SLOT_SIZE, host_root: Path | None = None) -> None:
        """host_root: where the node's / lives (default `<node_dir>/host`; the demo keeps it apart)."""
        self.dir = node_dir.resolve()
        self.host_root = (host_root or self.dir / "host").resolve()
        self.boot_state = self.host_root / "boot" / "bootenv"
        self.cmdline = self.dir / "cmdline"
        self.conf = self.host_root / "etc" / "rauc" / "system.conf"
        self.reboot_hook = self.dir / "reboot"
        self.rauc_command = self.dir / "host-rauc"
        """The node's `rauc` as the agent runs it (inside the service's namespace and root)."""
        self.logs = self.dir / "logs"
        self.layout = NodeLayout(name=name, node_dir=str(self.dir), initial_version=version,
                                 host_root=str(self.host_root))
        self._compatible = compatible
        self._keyring = keyring
        self._slot_size = slot_size

    @classmethod
    def load(cls, node_dir: Path) -> SimulatedRaucNode:
        data = json.loads((node_dir / "node.json").read_text())
        node = cls.__new__(cls)
        cls.__init__(node, node_dir, data["name"], "", Path(),
                     host_root=Path(data["host_root"]) if data.get("host_root") else None)
        data["service"] = ProcessRecord(**data["service"]) if data.get("service") else None
        data["agent"] = ProcessRecord(**data["agent"]) if data.get("agent") else None
        node.layout = NodeLayout(**data)
        return node

    def save(self) -> None:
        tmp = self.dir / "node.json.tmp"
        tmp.write_text(json.dumps(asdict(self.layout), indent=2))
        tmp.replace(self.dir / "node.json")

    # ---- install the "disk"
    def create(self) -> SimulatedRaucNode:
        """Lay out slots, bootloader, RAUC config and keyring in the host root; slot A holds the initial
        version and is good, B is empty."""
        for path in (self.boot_state, self.conf.parent, self.logs, self.host_root / "var/lib/rauc",
                     self.host_root / "etc", self.host_root / "mnt/rauc", self.host_root / "proc",
                     self.host_root / "tmp",
                     *(self.host_root / d for d in BORROWED)):
            path.mkdir(parents=True, exist_ok=True)
        for slot, _ in SLOTS:
            with open(self.host_root / slot, "wb") as f:
                f.truncate(self._slot_size)
        (self.boot_state / "primary").write_text("A\n")
        (self.boot_state / "A").write_text("good\n")
        (self.boot_state / "B").write_text("bad\n")
        keyring = self.conf.parent / "keyring.pem"
        keyring.write_bytes(self._keyring.read_bytes())
        backend = self.conf.parent / "bootloader-backend"
        backend.write_text(BACKEND)
        backend.chmod(0o755)
        self.conf.write_text(SYSTEM_CONF.format(compatible=self._compatible))
        for name in ("bin", "lib", "lib64", "sbin"):  # merged /usr, as Debian lays it out
            link = self.host_root / name
            if not link.is_symlink() and not link.exists():
                link.symlink_to(f"usr/{name}")
        self.reboot_hook.write_text(REBOOT_HOOK.format(python=sys.executable, node=self.dir))
        self.reboot_hook.chmod(0o755)
        self.rauc_command.write_text(HOST_RAUC.format(pidfile=self.dir / "rauc.pid"))
        self.rauc_command.chmod(0o755)
        self.save()
        self.boot()
        return self

    # ---- firmware
    def slot_state(self, bootname: str) -> str:
        return (self.boot_state / bootname).read_text().strip()

    def set_broken(self, bootname: str, broken: bool = True) -> None:
        """Make a slot fail to boot (a kernel that panics): the firmware uses up its try and falls back."""
        marker = self.dir / f"broken.{bootname}"
        marker.touch() if broken else marker.unlink(missing_ok=True)

    def _panics(self, bootname: str) -> bool:
        """The slot's kernel panics: marked broken, or it holds a bad build."""
        slot = next(s for s, b in SLOTS if b == bootname)
        with open(self.host_root / slot, "rb") as image:
            first = image.read(256)
        return (self.dir / f"broken.{bootname}").exists() or PANIC_MARK in first.split(b"\n", 1)[0]

    def boot(self) -> str:
        """The firmware's choice of slot, with one try for an unconfirmed slot; returns the booted bootname."""
        primary = (self.boot_state / "primary").read_text().strip()
        order = [primary, *[b for _, b in SLOTS if b != primary]]
        chosen = ""
        for bootname in order:
            state = self.slot_state(bootname)
            if state in ("pending", "trying") and self._panics(bootname):
                (self.boot_state / bootname).write_text("bad\n")  # it panicked on its one try
                continue
            if state == "good":
                chosen = bootname
            elif state == "pending":
                (self.boot_state / bootname).write_text("trying\n")
                chosen = bootname
            elif state == "trying":
                (self.boot_state / bootname).write_text("bad\n")  # its try ended without a mark-good
            if chosen:
                break
        chosen = chosen or primary
        self.cmdline.write_text(f"BOOT_IMAGE=/vmlinuz root=/dev/disk/by-label/{chosen} ro quiet rauc.slot={chosen}\n")
        boot_id = self.host_root / "proc/sys/kernel/random/boot_id"
        boot_id.parent.mkdir(parents=True, exist_ok=True)
        boot_id.write_text(f"{uuid.uuid4()}\n")
        (self.host_root / "proc/stat").write_text(f"btime {int(time.time())}\n")  # the kernel's boot time
        version = self.slot_version(chosen)
        (self.host_root / "etc/os-release").write_text(
            f'NAME="MaculaOS"\nID=maculaos\nID_LIKE=debian\nVERSION_ID="{version}"\nPRETTY_NAME="MaculaOS {version}"\n')
        return chosen

    def slot_version(self, bootname: str) -> str:
        """The version in a slot: what RAUC last installed there, else the initial version."""
        slot = next(s for s, b in SLOTS if b == bootname)
        central = configparser.ConfigParser()
        central.read(self.host_root / "var/lib/rauc/central.raucs")
        section = f"slot.{slot}"
        if central.has_section(section) and central.get(section, "status", fallback="") == "ok":
            return central.get(section, "bundle.version", fallback=self.layout.initial_version)
        return self.layout.initial_version

    def booted(self) -> str:
        text = self.cmdline.read_text()
        return text.split("rauc.slot=", 1)[1].split()[0]

    # ---- RAUC service on its private bus
    def start_rauc(self) -> None:
        bus_conf = self.dir / "dbus.conf"
        bus_conf.write_text(DBUS_CONF.format(node=uuid.uuid4().hex))
        out = subprocess.run(["dbus-daemon", f"--config-file={bus_conf}", "--fork", "--print-address=1",
                              "--print-pid=1"], capture_output=True, text=True, check=True).stdout.split()
        self.layout.bus_address, self.layout.dbus_pid = out[0], int(out[1])
        root = self.host_root
        script = ("mount --make-rprivate / && "
                  + "".join(f'mount --rbind /{d} "{root}/{d}" && ' for d in BORROWED)
                  + f'mount -t proc proc "{root}/proc" && mount --bind "{self.cmdline}" "{root}/proc/cmdline" && '
                  + f'exec chroot "{root}" rauc service')
        proc, record = spawn("rauc-service", ["unshare", "-m", "sh", "-c", script], self.logs,
                             env={"DBUS_SYSTEM_BUS_ADDRESS": self.layout.bus_address})
        self.layout.service = record
        (self.dir / "rauc.pid").write_text(f"{record.pid}\n")
        self.save()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            probe = subprocess.run([str(self.rauc_command), "status", "--output-format=json"],
                                   capture_output=True, text=True,
                                   env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.layout.bus_address})
            if probe.returncode == 0:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise SimulationError(f"rauc service of {self.layout.name} did not come up; see {self.logs}/rauc-service.log")

    def rauc(self) -> Rauc:
        """The node's RAUC as its agent uses it (a new bus address after each boot)."""
        return Rauc(str(self.rauc_command), self.conf, self.layout.bus_address, root=self.host_root)

    def stop_rauc(self) -> None:
        if self.layout.service is not None:
            stop(self.layout.service)
        if self.layout.dbus_pid:
            try:
                os.kill(self.layout.dbus_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.layout.service, self.layout.dbus_pid = None, 0
        self.save()

    # ---- the agent on this node
    def start_agent(self, argv: list[str], env: dict[str, str]) -> ProcessRecord:
        """Start (and remember how to restart) the node's agent, with the node's bus and reboot hook."""
        self.layout.agent_argv, self.layout.agent_env = argv, env
        return self._spawn_agent()

    def _spawn_agent(self) -> ProcessRecord:
        assert self.layout.agent_argv is not None
        env = {**(self.layout.agent_env or {}), "DBUS_SYSTEM_BUS_ADDRESS": self.layout.bus_address}
        _, self.layout.agent = spawn(f"agent-{self.layout.name}", self.layout.agent_argv, self.logs, env=env)
        self.save()
        return self.layout.agent

    def stop_agent(self) -> None:
        if self.layout.agent is not None:
            stop(self.layout.agent)

    # ---- power
    def reboot(self) -> str:
        """Stop the agent and RAUC, boot (the firmware picks the slot), start RAUC and the agent again."""
        had_agent = self.layout.agent is not None
        self.stop_agent()
        self.stop_rauc()
        booted = self.boot()
        if (self.dir / "halted").exists():
            return booted
        self.start_rauc()
        if had_agent and self.layout.agent_argv:
            self._spawn_agent()
        return booted

    def shutdown(self) -> None:
        """Power off for good: a reboot hook still under way starts nothing afterwards, and what a hook
        started (recorded in node.json, not in this object) is stopped too."""
        (self.dir / "halted").touch()
        if (self.dir / "node.json").exists():
            self.layout = SimulatedRaucNode.load(self.dir).layout
        self.stop_agent()
        self.layout.agent = None
        self.stop_rauc()


def main(argv: list[str] | None = None) -> int:
    """`python -m maculaos.devenv.rauc reboot NODE_DIR`: the reboot hook's detached half."""
    parser = argparse.ArgumentParser(prog="maculaos.devenv.rauc")
    parser.add_argument("action", choices=["reboot"])
    parser.add_argument("node_dir", type=Path)
    args = parser.parse_args(argv)
    time.sleep(0.2)  # let the agent finish reporting Rebooting, as a real shutdown would
    node = SimulatedRaucNode.load(args.node_dir)
    booted = node.reboot()
    print(f"{time.strftime('%H:%M:%S')} {node.layout.name} rebooted into slot {booted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
