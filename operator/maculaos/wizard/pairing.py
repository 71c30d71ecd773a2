"""What the wizard knows about the node it sets up, and the URLs and codes it shows: one object shared by
the web app, the console text and the text wizard."""

from __future__ import annotations

import io
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import segno

from maculaos.host.firstboot import short_code


@dataclass(frozen=True)
class NodeSetup:
    host_root: Path
    name: str
    """The node's name, macula-XXXX."""
    secret: str
    fingerprint: str
    """The wizard certificate's SHA-256 fingerprint (hex)."""
    portal_url: str
    port: int = 443
    address: str = ""
    """How the LAN reaches the node (an IP address); empty: <name>.local."""

    @property
    def url(self) -> str:
        """The wizard's address, without any secret."""
        host = self.address or f"{self.name}.local"
        return f"https://{host}{'' if self.port == 443 else f':{self.port}'}/"

    def pairing_url(self) -> str:
        """The URL in the console's QR code: the wizard's login with the secret, and the certificate's
        fingerprint (in the fragment, which the browser never sends) for an app that pins it."""
        query = urllib.parse.urlencode({"secret": self.secret})
        return f"{self.url}login?{query}#sha256={self.fingerprint}"

    @property
    def code(self) -> str:
        return short_code(self.secret)


def qr_svg(data: str) -> str:
    """A QR code as inline SVG (no XML declaration: it goes inside a page)."""
    out = io.BytesIO()
    segno.make(data, error="m").save(out, kind="svg", scale=5, xmldecl=False, svgns=True, title="QR code")
    return out.getvalue().decode()


def qr_text(data: str) -> str:
    """A QR code drawn with block characters, for a terminal or the console."""
    out = io.StringIO()
    segno.make(data, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def console_text(setup: NodeSetup) -> str:
    """What the node's console shows in first-boot mode (tty1 and serial): where the wizard is, the setup
    code to type, and the QR code holding both with the certificate's fingerprint. The console is the one
    place the secret is shown, on purpose: whoever sees it stands at the node."""
    return (f"MaculaOS first boot: {setup.name}\n\n"
            f"Scan the QR code, or open {setup.url} (or https://{setup.name}.local/)\n"
            f"and type the setup code: {setup.code}\n"
            f"The wizard's certificate (SHA-256): {setup.fingerprint}\n\n"
            f"{qr_text(setup.pairing_url())}\n"
            "At this keyboard instead: log in and run `maculaos setup`.\n")
