"""The API never promises more than the node does (issue #18): `kubectl explain` reads the generated CRDs,
so each field whose feature is only partly built must say plainly what happens today, and nothing in its
description may claim the rest. When the feature is built, change the entry here with the description."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.api.meshrole import WIREGUARD_PORT
from maculaos.host.ports import ADMITTED_PORTS

REPO = Path(__file__).resolve().parents[2]

#: (CRD file, field path under spec, what the description must say, what it must not claim).
PARTLY_BUILT = [
    ("os.macula.io_meshroles.yaml", "wireguard.enabled", r"does not create an interface",
     r"\bbrings? up\b|\bconfigures?\b.*\binterface\b"),
    ("os.macula.io_meshroles.yaml", "wireguard.interface", r"nothing creates the interface",
     r"\bbrings? up\b"),
    ("os.macula.io_meshroles.yaml", "wireguard", r"no interface is brought up", r"\bmesh VPN interface\b"),
    ("os.macula.io_meshroles.yaml", "gateway.bandwidthLimitMbps", r"Not enforced", r"^Cap on|\bis capped\b"),
]


def field_schema(crd_file: str, path: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / crd_file).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for part in path.split("."):
        schema = schema["properties"][part]
    return dict(schema)


@pytest.mark.parametrize(("crd_file", "path", "says", "never"), PARTLY_BUILT)
def test_a_partly_built_field_says_what_it_does_today(crd_file: str, path: str, says: str, never: str) -> None:
    description = " ".join(field_schema(crd_file, path)["description"].split())
    assert re.search(says, description, re.IGNORECASE), f"spec.{path} must say what it does today: {description!r}"
    assert not re.search(never, description, re.IGNORECASE), f"spec.{path} promises what is not built: {description!r}"


def test_the_mesh_wireguard_port_stays_clear_of_flannel() -> None:
    listen_port = field_schema("os.macula.io_meshroles.yaml", "wireguard.listenPort")
    assert listen_port["default"] == WIREGUARD_PORT
    kubernetes_udp = {n for p in ADMITTED_PORTS if p.switch == "allow_kubernetes" and p.protocol.value == "udp"
                      for n in p.ports}
    assert kubernetes_udp and WIREGUARD_PORT not in kubernetes_udp, "flannel's VXLAN and WireGuard ports are k3s's own"
    assert str(WIREGUARD_PORT) in listen_port["description"], "the description names the default and why"


def test_install_docs_do_not_send_people_to_an_unpublished_image() -> None:
    text = " ".join((REPO / "docs" / "install.md").read_text().split())
    assert "No registry publishes it" in text and "ImagePullBackOff" in text
    assert "--set image.repository=" in text, "the way to use an image of one's own registry"
