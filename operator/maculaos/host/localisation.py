"""The node's time zone, console keyboard layout, locale and wired network: the values config.yaml may
name, their checks (NodeConfig and the first-boot wizard share them), and the files the boot's apply
writes from them (/etc is the overlay kept on the data partition).

The root is read-only, so nothing can be generated on the node: the keymaps and locales are a fixed
supported set that the image ships compiled (docs/first-boot.md), and a time zone is one of the IANA
database's names (Debian's tzdata on the node, the tzdata wheel elsewhere)."""

from __future__ import annotations

import functools
import os
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING

from maculaos.host.files import atomic_write

if TYPE_CHECKING:
    from maculaos.host.nodeconfig import MaculaosConfig, NetworkConfig

#: Console keymaps (kbd names, as `loadkeys` and /etc/vconsole.conf take them) the image supports.
KEYMAPS = frozenset({
    "us", "uk", "de", "de-latin1", "fr", "fr-latin9", "es", "it", "nl", "be-latin1", "fr_CH", "de_CH",
    "dk", "no", "sv-latin1", "fi", "pt-latin1", "br-abnt2", "pl", "cz", "hu", "ro", "sk-qwerty", "slovene",
    "gr", "ru", "ua", "tr_q-latin5", "jp106", "la-latin1", "ie", "is-latin1", "et", "lt", "lv",
})
#: Locales the image ships compiled (C.UTF-8 is always there; the others are built at image build time).
LOCALES = frozenset({
    "C.UTF-8", "en_US.UTF-8", "en_GB.UTF-8", "en_IE.UTF-8", "de_DE.UTF-8", "de_AT.UTF-8", "de_CH.UTF-8",
    "fr_FR.UTF-8", "fr_BE.UTF-8", "fr_CH.UTF-8", "es_ES.UTF-8", "it_IT.UTF-8", "nl_NL.UTF-8", "nl_BE.UTF-8",
    "pt_PT.UTF-8", "pt_BR.UTF-8", "pl_PL.UTF-8", "sv_SE.UTF-8", "da_DK.UTF-8", "nb_NO.UTF-8", "fi_FI.UTF-8",
})


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA time zone names this machine knows."""
    return frozenset(zoneinfo.available_timezones())


def check_timezone(value: object) -> str:
    """An IANA time zone name (Europe/Brussels, UTC), else ValueError naming an example."""
    if not isinstance(value, str) or value not in time_zones():
        raise ValueError(f"{{key}} {value!r} is not a time zone: use an IANA name such as Europe/Brussels, "
                         "America/New_York or UTC")
    return value


def check_keymap(value: object) -> str:
    """A console keymap of the supported set, else ValueError listing a few."""
    if not isinstance(value, str) or value not in KEYMAPS:
        raise ValueError(f"{{key}} {value!r} is not a supported keyboard layout; the layouts are "
                         f"{', '.join(sorted(KEYMAPS))}")
    return value


def check_locale(value: object) -> str:
    """A locale of the supported set, else ValueError listing them."""
    if not isinstance(value, str) or value not in LOCALES:
        raise ValueError(f"{{key}} {value!r} is not a supported locale; the locales are "
                         f"{', '.join(sorted(LOCALES))}")
    return value


ZONEINFO = Path("usr/share/zoneinfo")
LOCALTIME = Path("etc/localtime")
TIMEZONE_FILE = Path("etc/timezone")
VCONSOLE = Path("etc/vconsole.conf")
LOCALE_FILES = (Path("etc/default/locale"), Path("etc/locale.conf"))
NETWORK_FILE = Path("etc/systemd/network/10-maculaos.network")
HEADER = "# Written by maculaos agent apply from /var/lib/maculaos/config.yaml: edit that file.\n"


def _symlink(path: Path, target: str) -> bool:
    if path.is_symlink() and os.readlink(path) == target:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.maculaos")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, path)
    return True


def render_network(network: NetworkConfig) -> str:
    """A systemd-networkd unit that sorts before the image's DHCP default (80-maculaos-dhcp.network)."""
    match = network.interface or "en* eth*"
    lines = [HEADER, "[Match]", "Type=ether", f"Name={match}", "", "[Network]", "MulticastDNS=resolve"]
    if network.mode == "static":
        lines += [f"Address={network.address}", f"Gateway={network.gateway}", *(f"DNS={s}" for s in network.dns)]
    else:
        lines.append("DHCP=yes")
    return "\n".join(lines) + "\n"


def apply_localisation(host_root: Path, config: MaculaosConfig) -> list[Path]:
    """Write what the set keys ask for (time zone, keymap, locale, network); returns the files changed. An
    absent key leaves the image's file as it is, except the network: without the section (or with DHCP on
    every interface) the image's DHCP default applies, so the node's own file goes."""
    changed: list[Path] = []
    if config.timezone is not None:
        if _symlink(host_root / LOCALTIME, f"/{ZONEINFO}/{config.timezone}"):
            changed.append(LOCALTIME)
        if atomic_write(host_root / TIMEZONE_FILE, config.timezone + "\n"):
            changed.append(TIMEZONE_FILE)
    if config.keymap is not None and atomic_write(host_root / VCONSOLE, f"{HEADER}KEYMAP={config.keymap}\n"):
        changed.append(VCONSOLE)
    if config.locale is not None:
        changed += [p for p in LOCALE_FILES if atomic_write(host_root / p, f"{HEADER}LANG={config.locale}\n")]
    network = config.network
    if network is not None and (network.mode == "static" or network.interface):
        if atomic_write(host_root / NETWORK_FILE, render_network(network)):
            changed.append(NETWORK_FILE)
    elif (host_root / NETWORK_FILE).exists():
        (host_root / NETWORK_FILE).unlink()
        changed.append(NETWORK_FILE)
    return changed
