"""The image's identity in os-release: MaculaOS and its version, on Debian. The agent reports VERSION_ID as
the node's version, the kubelet shows PRETTY_NAME as the Node's OS image, and both must name the MaculaOS
build, not Debian's release ("13")."""

from __future__ import annotations

import re
from pathlib import Path

#: Where the image keeps it (/etc/os-release links here, as on Debian).
OS_RELEASE = Path("usr/lib/os-release")
BUILD_INFO = Path("etc/maculaos/build-info")


def os_release(version: str, suite: str) -> str:
    fields = {
        "PRETTY_NAME": f"MaculaOS {version} (Debian {suite})",
        "NAME": "MaculaOS",
        "ID": "maculaos",
        "ID_LIKE": "debian",
        "VERSION_ID": version,
        "VERSION": version,
        "VERSION_CODENAME": suite,
        "HOME_URL": "https://macula.io/",
    }
    # Double quotes (the kubelet's os-release reader strips only those); no value holds one.
    return "".join(f'{key}="{value}"\n' if " " in value else f"{key}={value}\n" for key, value in fields.items())


def set_version(root: Path, version: str) -> None:
    """Give an unpacked image root another version (a derived build: os-release and build-info)."""
    for path, keys in ((root / OS_RELEASE, ("VERSION_ID", "VERSION")), (root / BUILD_INFO, ("MACULAOS_VERSION",))):
        text = path.read_text()
        for key in keys:
            text, count = re.subn(rf"^{key}=.*$", f"{key}={version}", text, flags=re.MULTILINE)
            if count != 1:
                raise ValueError(f"{path}: expected one {key}= line, found {count}")
        text = re.sub(r"^PRETTY_NAME=.*$", lambda m: re.sub(r"MaculaOS \S+", f"MaculaOS {version}", m.group(0)),
                      text, flags=re.MULTILINE)
        path.write_text(text)
