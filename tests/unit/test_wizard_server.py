"""The wizard as a node serves it: the real uvicorn server on loopback with its self-signed certificate
(pinned by the fingerprint the console shows), port 80's stand-in only redirecting, the whole flow against
the test Portal (setup secret, settings, a refused and a good Portal code), and both ports closed once the
node is paired."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml

from maculaos.devenv.processes import free_port, wait_for_port
from maculaos.host.config import config_file
from maculaos.host.firstboot import CONFIGURED
from maculaos.host.portal import CREDENTIALS
from maculaos.wizard.app import CSRF
from maculaos.wizard.server import ServeSettings, node_setup, serve_until_paired
from tests.portal import TestPortal


@pytest.fixture
def portal() -> Iterator[TestPortal]:
    with TestPortal() as running:
        yield running


def peer_fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # pinned below instead
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw_socket:
        with context.wrap_socket(raw_socket) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_full_flow_over_tls_ends_with_the_wizard_gone(tmp_path: Path, portal: TestPortal) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    settings = ServeSettings(tmp_path, portal.url, bind="127.0.0.1", tls_port=free_port(), http_port=free_port(),
                             address="127.0.0.1")
    setup, certificate = node_setup(settings)
    server = threading.Thread(target=asyncio.run, args=(serve_until_paired(settings, setup, certificate),),
                              daemon=True)
    server.start()
    wait_for_port(settings.tls_port, 15)
    wait_for_port(settings.http_port, 15)

    assert peer_fingerprint(settings.tls_port) == setup.fingerprint  # what the QR code pins
    redirect = httpx2.get(f"http://127.0.0.1:{settings.http_port}/settings", follow_redirects=False)
    assert redirect.status_code == 301
    assert redirect.headers["location"] == f"https://127.0.0.1:{settings.tls_port}/settings"

    context = ssl.create_default_context(cafile=str(certificate.cert))
    context.check_hostname = False  # the certificate names macula-XXXX(.local); the CA check pins it
    with httpx2.Client(base_url=setup.url, verify=context, follow_redirects=True, timeout=10) as client:
        home = client.get("/")
        assert home.status_code == 200 and setup.name in home.text and setup.secret not in home.text
        login = client.get(setup.pairing_url().split("#")[0].removeprefix(setup.url.rstrip("/")))
        assert login.status_code == 200 and str(login.url).endswith("/settings")
        for step, form in (("timezone", {"timezone": "Europe/Brussels"}), ("keyboard", {"keymap": "be-latin1"}),
                           ("hostname", {"hostname": "shop-01"})):
            saved = client.post(f"/step/{step}", data={"csrf": client.cookies[CSRF], **form})
            assert saved.status_code == 200 and "Saved" in saved.text
        bad = client.post("/step/timezone", data={"csrf": client.cookies[CSRF], "timezone": "Mars/Base"})
        assert bad.status_code == 400 and "maculaos.timezone" in bad.text
        refused = client.post("/pair", data={"csrf": client.cookies[CSRF], "portal_code": portal.issue(ttl=-1)})
        assert refused.status_code == 400 and "expired" in refused.text
        assert not (tmp_path / CONFIGURED).exists()
        paired = client.post("/pair", data={"csrf": client.cookies[CSRF], "portal_code": portal.issue()})
        assert paired.status_code == 200 and re.search("belongs to <b>Shop Example</b>", paired.text)

    server.join(timeout=15)
    assert not server.is_alive(), "the wizard still serves after pairing"
    assert closed(settings.tls_port) and closed(settings.http_port)
    config = yaml.safe_load(config_file(tmp_path).read_text())["maculaos"]
    assert (config["timezone"], config["keymap"], config["hostname"]) == ("Europe/Brussels", "be-latin1", "shop-01")
    assert (tmp_path / CONFIGURED).exists() and (tmp_path / CREDENTIALS).exists()
    assert [p["node"] for p in portal.state.paired] == [setup.name]
