"""The boot loader of a MaculaOS disk: GRUB for BIOS (core.img in the bios_grub partition, boot.img in
the MBR) and UEFI (EFI/BOOT/BOOTX64.EFI), one grub.cfg on the ESP that picks the slot from the GRUB
environment RAUC's grub backend keeps (ORDER, <slot>_OK, <slot>_TRY), and that environment itself.

RAUC's backend gives a slot one try (TRY 0 -> 1). Ours counts three, with string values because GRUB has
no arithmetic: TRY goes 0 -> 1 -> 2 -> 3 on boots nobody marked good, and a slot found at 3 is marked bad
(OK=0) and the next slot in ORDER boots. `rauc status mark-good` (maculaos-mark-good.service, after
boot-complete.target) sets TRY back to 0; `mark-active` sets OK=1, TRY=0 and puts the slot first."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from maculaos.errors import MaculaosError
from maculaos.host import factory_reset, recovery_reboot

GRUB_LIB = Path("/usr/lib/grub")
# Built into the images (no module folder on the ESP, so nothing there can be half-updated).
COMMON_MODULES = ["part_gpt", "part_msdos", "fat", "iso9660", "normal", "linux", "echo", "test", "loadenv",
                  "search", "search_label", "search_fs_uuid", "regexp", "sleep", "reboot", "halt", "serial",
                  "terminal", "configfile", "ls", "cat", "true"]
BIOS_MODULES = ["biosdisk"]
EFI_MODULES = ["efi_gop", "efi_uga"]
MAX_TRIES = 3
#: The GRUB environment variable that overrides the menu's wait (seconds) on a disk's boots.
MENU_TIMEOUT = "MENU_TIMEOUT"
#: Beside each slot's kernel on the ESP: the version of the system in that slot, for the menu.
VERSION_CFG = "version.cfg"
SLOTS = ("A", "B")
# The boot.img fields grub-bios-setup would patch (grub-core/boot/i386/pc/boot.S, diskboot.S).
BOOT_KERNEL_SECTOR = 0x5C
BOOT_DRIVE_CHECK = 0x66
MBR_KEEP_FROM = 0x1B8          # disk signature, partition table, 0x55AA: the disk's, not boot.img's
CORE_BLOCKLIST_START = 0x1F4
CORE_BLOCKLIST_LEN = 0x1FC


class GrubError(MaculaosError):
    pass


def _mkimage(fmt: str, out: Path, prefix: str, modules: list[str], config: str | None = None) -> Path:
    directory = GRUB_LIB / ("i386-pc" if fmt.startswith("i386-pc") else fmt)
    if not directory.is_dir():
        package = "grub-pc-bin" if fmt.startswith("i386-pc") else "grub-efi-amd64-bin"
        raise GrubError(f"{directory} is missing (Debian package {package}; tools/install.sh installs it)")
    embedded = []
    if config is not None:
        early = out.with_name(out.name + ".early.cfg")
        early.write_text(config)
        embedded = ["-c", str(early)]
    result = subprocess.run(["grub-mkimage", "-O", fmt, "-d", str(directory), "-o", str(out), "-p", prefix,
                             *embedded, *modules], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GrubError(f"grub-mkimage -O {fmt} failed: {result.stderr.strip()}")
    return out


def efi_image(out: Path) -> Path:
    """BOOTX64.EFI: the prefix has no device, so GRUB reads /grub on the partition it was loaded from."""
    return _mkimage("x86_64-efi", out, "/grub", COMMON_MODULES + EFI_MODULES)


def bios_core_image(out: Path, esp_partition: int) -> Path:
    """core.img: `(,gptN)` is partition N of the disk the BIOS booted, whatever its number."""
    return _mkimage("i386-pc", out, f"(,gpt{esp_partition})/grub", COMMON_MODULES + BIOS_MODULES)


def _find_medium(label: str) -> str:
    """The config built into the ISO's GRUB images: whatever the firmware booted from (CD drive, USB stick
    as a hard disk), the medium is the file system with our label."""
    return (f'search --no-floppy --label --set=root "{label}"\n'
            'set prefix=($root)/boot/grub\n')


def iso_bios_image(out: Path, label: str) -> Path:
    """The ISO's El Torito BIOS image (cdboot.img + core.img); the hybrid MBR loads the same core.img
    from a USB stick."""
    return _mkimage("i386-pc-eltorito", out, "/boot/grub", COMMON_MODULES + BIOS_MODULES, _find_medium(label))


def iso_efi_image(out: Path, label: str) -> Path:
    """BOOTX64.EFI for the ISO's EFI boot image: finds the medium by label, reads /boot/grub/grub.cfg."""
    return _mkimage("x86_64-efi", out, "/boot/grub", COMMON_MODULES + EFI_MODULES, _find_medium(label))


def install_bios(disk: Path, core: Path, core_sector: int, core_sectors_max: int) -> None:
    """What grub-bios-setup does for a GPT disk with a bios_grub partition, on a plain file (the tool
    itself insists on probing the device its --directory lives on): core.img into the partition, its
    first sector told where the rest is, and boot.img into the MBR told where core.img is."""
    core_img = bytearray(core.read_bytes())
    sectors = (len(core_img) + 511) // 512
    if sectors > core_sectors_max:
        raise GrubError(f"core.img needs {sectors} sectors, the bios_grub partition has {core_sectors_max}")
    length = int.from_bytes(core_img[CORE_BLOCKLIST_LEN:CORE_BLOCKLIST_LEN + 2], "little")
    if length != sectors - 1:
        raise GrubError(f"core.img's block list says {length} sectors after the first, expected {sectors - 1}")
    core_img[CORE_BLOCKLIST_START:CORE_BLOCKLIST_START + 8] = (core_sector + 1).to_bytes(8, "little")
    boot_img = bytearray((GRUB_LIB / "i386-pc" / "boot.img").read_bytes())
    with disk.open("r+b") as f:
        mbr = f.read(512)
        boot_img[MBR_KEEP_FROM:512] = mbr[MBR_KEEP_FROM:512]
        boot_img[BOOT_KERNEL_SECTOR:BOOT_KERNEL_SECTOR + 8] = core_sector.to_bytes(8, "little")
        boot_img[BOOT_DRIVE_CHECK:BOOT_DRIVE_CHECK + 2] = b"\x90\x90"  # a hard disk: trust the BIOS's drive
        f.seek(0)
        f.write(boot_img)
        f.seek(core_sector * 512)
        f.write(core_img)


def initial_environment(env: Path, slots_with_system: list[str]) -> Path:
    """The GRUB environment block of a new disk: ORDER "A B", the slots that hold a system good."""
    env.unlink(missing_ok=True)
    values = [f"ORDER={' '.join(SLOTS)}"]
    for slot in SLOTS:
        values += [f"{slot}_OK={1 if slot in slots_with_system else 0}", f"{slot}_TRY=0"]
    for args in (["create"], ["set", *values]):
        result = subprocess.run(["grub-editenv", str(env), *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise GrubError(f"grub-editenv {args[0]} failed: {result.stderr.strip()}")
    return env


def _slot_choice() -> str:
    """The GRUB script that picks the slot and counts its try (no arithmetic in GRUB: string steps)."""
    lines = ["set boot_slot=", "for s in $ORDER; do", "  set ok=0", "  set try="]
    for slot in SLOTS:
        lines.append(f'  if [ "$s" = {slot} ]; then set ok="${slot}_OK"; set try="${slot}_TRY"; fi')
    lines += ['  if [ "$ok" != 1 ]; then continue; fi',
              '  if [ -z "$try" -o "$try" = 0 ]; then set try=1']
    lines += [f'  elif [ "$try" = {n} ]; then set try={n + 1}' for n in range(1, MAX_TRIES)]
    lines += ["  else",
              f'    echo "MaculaOS: slot $s did not boot in {MAX_TRIES} tries: marked bad, trying the next slot"']
    lines += [f'    if [ "$s" = {slot} ]; then set {slot}_OK=0; set {slot}_TRY=0; fi' for slot in SLOTS]
    lines += ["    continue", "  fi"]
    lines += [f'  if [ "$s" = {slot} ]; then set {slot}_TRY="$try"; fi' for slot in SLOTS]
    lines += ['  set boot_slot="$s"', "  break", "done"]
    return "\n".join(lines)


def slot_version_cfg(slot: str, version: str) -> str:
    """The slot's VERSION_CFG: one line that grub.cfg sources. Written with the slot's kernel, by the disk
    build (slot A) and by the update bundle's hook (the slot it installed into), so the menu names the
    version each slot really holds, not the one the disk was built with."""
    if slot not in SLOTS or not re.fullmatch(r"[0-9A-Za-z.+-]+", version):
        raise GrubError(f"no version line for slot {slot!r}, version {version!r}")
    return f'set version_{slot}="{version}"\n'


def grub_config(cmdline: str, timeout: int = 5) -> str:
    """grub.cfg for the ESP. `cmdline` is the kernel command line without rauc.slot= and macula.mode=;
    EXTRA_CMDLINE in the GRUB environment is appended (serial consoles, test settings), and MENU_TIMEOUT
    there replaces `timeout`. The entries name each slot's version from its VERSION_CFG."""
    env_vars = " ".join(["ORDER", *(f"{s}_{k}" for s in SLOTS for k in ("OK", "TRY")), "EXTRA_CMDLINE",
                         MENU_TIMEOUT, factory_reset.FLAG, recovery_reboot.FLAG])
    saved = " ".join(f"{s}_{k}" for s in SLOTS for k in ("OK", "TRY"))
    other = "\n".join(f'if [ "$boot_slot" = {s} ]; then set other_slot={o}; set other_ok="${o}_OK"; '
                      f'set this_version="$version_{s}"; set other_version="$version_{o}"; fi'
                      for s, o in (("A", "B"), ("B", "A")))
    versions = "\n".join(f'set version_{s}=\nif [ -f /{s}/{VERSION_CFG} ]; then source /{s}/{VERSION_CFG}; fi'
                         for s in SLOTS)
    return f"""# MaculaOS boot loader configuration (written by `maculaos image build`; operator/maculaos/image/grub.py).
# The slot comes from the GRUB environment (/grub/grubenv on this ESP) that RAUC's grub backend edits:
# ORDER, and per slot <slot>_OK (1 = may boot) and <slot>_TRY (boots not yet marked good: 0..{MAX_TRIES}).
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout={timeout}
set default=normal

set ORDER=
load_env {env_vars}
if [ -z "$ORDER" ]; then set ORDER="A B"; fi
# The menu's wait in seconds, when the environment sets one (0: no menu, as a VM of the tests boots).
if [ -n "${MENU_TIMEOUT}" ]; then set timeout="${MENU_TIMEOUT}"; fi

{_slot_choice()}

# `maculaos recovery reboot` asked for one boot in recovery mode: its entry is the default, this boot only
# (the flag is cleared before the kernel starts), and it is not counted as a try of the slot.
set recovery_once=
if [ "${recovery_reboot.FLAG}" = {recovery_reboot.ONCE} ]; then
  set recovery_once=1
  set default=recovery
  set {recovery_reboot.FLAG}=
  save_env {recovery_reboot.FLAG}
  echo "MaculaOS: recovery mode asked for (this boot only)"
fi

if [ -z "$boot_slot" ]; then
  # Every slot spent its tries: keep trying the first one rather than stopping an unattended node
  # (a disk that was slow to appear is a reason to try again); the environment is left as it is.
  for s in $ORDER; do set boot_slot="$s"; break; done
  echo "MaculaOS: no slot is marked good; trying slot $boot_slot anyway"
elif [ -z "$recovery_once" ]; then
  save_env {saved}
fi
# Each slot's version, from the file its build or update bundle wrote beside its kernel.
{versions}
{other}
set this_title="MaculaOS $this_version (slot $boot_slot)"
if [ -z "$this_version" ]; then set this_title="MaculaOS (slot $boot_slot)"; fi
set other_title="MaculaOS $other_version (the other slot, $other_slot: this boot only)"
if [ -z "$other_version" ]; then set other_title="MaculaOS (the other slot, $other_slot: this boot only)"; fi
set cmdline="{cmdline} panic=10 $EXTRA_CMDLINE"
# `maculaos factory-reset` asked for a reset: the normal boot performs it (cleared once it is done).
set reset_args=
if [ -n "${factory_reset.FLAG}" ]; then
  set reset_args="macula.factory_reset=${factory_reset.FLAG} macula.factory_reset_confirmed=yes"
  echo "MaculaOS: factory reset (${factory_reset.FLAG}) asked for: this boot performs it"
fi
export boot_slot other_slot cmdline reset_args

menuentry "$this_title" --id normal {{
  linux /$boot_slot/vmlinuz boot=macula macula.mode=disk rauc.slot=$boot_slot $cmdline $reset_args
  initrd /$boot_slot/initrd.img
}}
if [ "$other_ok" = 1 -a -f "/$other_slot/vmlinuz" ]; then
  menuentry "$other_title" --id previous {{
    linux /$other_slot/vmlinuz boot=macula macula.mode=disk rauc.slot=$other_slot $cmdline
    initrd /$other_slot/initrd.img
  }}
fi
menuentry "Recovery mode (network, SSH and a root console; the data partition left to repair)" --id recovery {{
  linux /$boot_slot/vmlinuz boot=macula macula.mode=recovery rauc.slot=$boot_slot $cmdline
  initrd /$boot_slot/initrd.img
}}
menuentry "Recovery shell (before any file system is mounted)" --id shell {{
  linux /$boot_slot/vmlinuz boot=macula macula.mode=shell rauc.slot=$boot_slot $cmdline
  initrd /$boot_slot/initrd.img
}}
menuentry "Factory reset (keeps the OS and /var/lib/data; asks first)" --id factory-reset {{
  linux /$boot_slot/vmlinuz boot=macula macula.mode=disk macula.factory_reset=keep-data rauc.slot=$boot_slot $cmdline
  initrd /$boot_slot/initrd.img
}}
"""


def boot_cmdline(kernel_cmdline: str) -> str:
    """The definition's kernel command line without the words grub.cfg sets per entry."""
    drop = ("rauc.slot=", "macula.mode=", "boot=macula")
    return " ".join(w for w in kernel_cmdline.split() if not w.startswith(drop))


def iso_config(version: str, cmdline: str, medium: str, default: str = "live", extra: str = "",
               timeout: int = 5) -> str:
    """grub.cfg of the live/installer ISO (seed 4.10.1): live (default), install to disk, recovery.
    `cmdline` is the definition's without per-entry words; `extra` is appended to every entry (a custom
    ISO's unattended install settings, a serial console)."""
    # rauc.external: RAUC's word for "booted from an external medium": no booted slot to look for.
    common = f"boot=macula macula.medium={medium} rauc.external {cmdline} {extra}".strip()
    entries = [("live", f"MaculaOS {version} live (runs from this medium; changes are kept in RAM only)", "live"),
               ("install", f"Install MaculaOS {version} to a disk", "install"),
               ("recovery", "Recovery mode (network, SSH and a root console; the disk's data partition left "
                "to repair)", "recovery"),
               ("shell", "Recovery shell (before any file system is mounted)", "shell")]
    body = "".join(f"""
menuentry "{title}" --id {ident} {{
  linux /live/vmlinuz macula.mode={mode} {common}
  initrd /live/initrd.img
}}""" for ident, title, mode in entries)
    return f"""# MaculaOS live and installer medium (written by `maculaos image build`; operator/maculaos/image/grub.py).
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout={timeout}
set default={default}
{body}
"""
