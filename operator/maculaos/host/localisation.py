"""The node's time zone, console keyboard layout and locale: the values config.yaml may name, and their
checks (NodeConfig and the first-boot wizard share them).

The root is read-only, so nothing can be generated on the node: the keymaps and locales are a fixed
supported set that the image ships compiled (docs/first-boot.md), and a time zone is one of the IANA
database's names (Debian's tzdata on the node, the tzdata wheel elsewhere)."""

from __future__ import annotations

import functools
import zoneinfo

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
