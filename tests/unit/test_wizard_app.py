"""The first-boot wizard's handlers (Starlette's test client over the real app): the setup secret gates
every change, CSRF tokens guard every form, each settings page writes config.yaml and each bad value
changes nothing and is named on the page, and pairing against the test Portal ends first-boot mode."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from maculaos.host.config import config_file
from maculaos.host.firstboot import CONFIGURED, setup_secret
from maculaos.host.portal import CREDENTIALS
from maculaos.wizard.app import CSRF, LOCKOUT_SECONDS, MAX_FAILURES, SESSION, WizardState, build_app, redirect_app
from maculaos.wizard.pairing import NodeSetup
from tests.portal import TestPortal

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"
CA = ("-----BEGIN CERTIFICATE-----\nMIIBdjCCAR2gAwIBAgIUQ2FsbGVkIGZvciB0ZXN0cyBvbmx5MAoGCCqGSM49BAMC\n"
      "-----END CERTIFICATE-----\n")
FINGERPRINT = "ab" * 32
TOKEN = "k3stok.abcdefghij012345"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def portal() -> Iterator[TestPortal]:
    with TestPortal() as running:
        yield running


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "var/lib/maculaos").mkdir(parents=True)
    config_file(root).write_text(yaml.safe_dump({"maculaos": {"mesh": {"realm": "io.macula.kept"}},
                                                 "k3s": {"airgap": True}}))
    return root


@pytest.fixture
def state(host_root: Path, portal: TestPortal) -> WizardState:
    setup = NodeSetup(host_root, "macula-1a2b3c4d", setup_secret(host_root), FINGERPRINT, portal.url, 443)
    paired: list[bool] = []
    return WizardState(setup, on_paired=lambda: paired.append(True), clock=Clock())


@pytest.fixture
def client(state: WizardState) -> TestClient:
    return TestClient(build_app(state), base_url="https://testserver", follow_redirects=False)


def csrf(client: TestClient, path: str = "/") -> str:
    client.get(path)
    token = client.cookies.get(CSRF)
    assert token
    return token


def signed_in(client: TestClient, state: WizardState) -> TestClient:
    response = client.post("/login", data={"csrf": csrf(client), "code": state.setup.code})
    assert response.status_code == 303 and response.headers["location"] == "/settings"
    return client


def raw(host_root: Path) -> dict[str, Any]:
    return yaml.safe_load(config_file(host_root).read_text())


def test_the_landing_page_shows_name_url_and_qr_but_never_the_secret(client: TestClient, state: WizardState) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert "macula-1a2b3c4d" in response.text and "https://macula-1a2b3c4d.local/" in response.text
    assert "<svg" in response.text and FINGERPRINT in response.text
    assert state.setup.secret not in response.text and state.setup.code not in response.text
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert response.headers["referrer-policy"] == "no-referrer"  # the QR link's secret stays here


@pytest.mark.parametrize("typed", ["wrong", "", "ABCD-EFGH-JKMN-PQRS"])
def test_a_wrong_setup_code_opens_no_session(client: TestClient, typed: str) -> None:
    response = client.post("/login", data={"csrf": csrf(client), "code": typed})
    assert response.status_code == 403 and "not this node" in response.text
    assert SESSION not in client.cookies
    assert client.get("/settings").headers["location"] == "/"


def test_the_code_is_typed_in_any_case_with_or_without_dashes(client: TestClient, state: WizardState) -> None:
    typed = state.setup.code.lower().replace("-", " ")
    response = client.post("/login", data={"csrf": csrf(client), "code": typed})
    assert response.status_code == 303 and client.cookies.get(SESSION)
    assert client.get("/settings").status_code == 200


def test_the_console_qr_link_opens_a_session(client: TestClient, state: WizardState) -> None:
    assert client.get("/login", params={"secret": "X" * 16}).status_code == 403
    response = client.get("/login", params={"secret": state.setup.secret})
    assert response.status_code == 303 and response.headers["location"] == "/settings"
    assert client.get("/settings").status_code == 200


def test_repeated_wrong_codes_lock_the_login_for_a_while(client: TestClient, state: WizardState) -> None:
    token = csrf(client)
    for _ in range(MAX_FAILURES):
        assert client.post("/login", data={"csrf": token, "code": "nope"}).status_code == 403
    locked = client.post("/login", data={"csrf": token, "code": state.setup.code})
    assert locked.status_code == 429 and "wait" in locked.text
    assert isinstance(state.clock, Clock)
    state.clock.now += LOCKOUT_SECONDS + 1
    assert client.post("/login", data={"csrf": token, "code": state.setup.code}).status_code == 303


@pytest.mark.parametrize("sent", [None, "", "forged"])
def test_a_form_without_its_csrf_token_is_refused(client: TestClient, state: WizardState, host_root: Path,
                                                  sent: str | None) -> None:
    signed_in(client, state)
    before = config_file(host_root).read_text()
    data = {"timezone": "Europe/Brussels", **({"csrf": sent} if sent is not None else {})}
    response = client.post("/step/timezone", data=data)
    assert response.status_code == 403 and "CSRF" in response.text
    assert config_file(host_root).read_text() == before
    login = client.post("/login", data={"code": state.setup.code, **({"csrf": sent} if sent is not None else {})})
    assert login.status_code == 403


def test_without_the_setup_secret_nothing_changes(client: TestClient, host_root: Path) -> None:
    before = config_file(host_root).read_text()
    token = csrf(client)
    assert client.post("/step/timezone", data={"csrf": token, "timezone": "UTC"}).status_code == 403
    assert client.post("/pair", data={"csrf": token, "portal_code": "AB12-CD34"}).status_code == 403
    client.cookies.set(SESSION, "guessed")
    assert client.post("/step/timezone", data={"csrf": token, "timezone": "UTC"}).status_code == 403
    for path in ("/settings", "/step/timezone", "/pair"):
        assert client.get(path).headers["location"] == "/"
    assert config_file(host_root).read_text() == before


@pytest.mark.parametrize(("step", "form", "expected"), [
    ("hostname", {"hostname": "shop-01"}, {"maculaos": {"hostname": "shop-01"}}),
    ("keyboard", {"keymap": "be-latin1"}, {"maculaos": {"keymap": "be-latin1"}}),
    ("timezone", {"timezone": "Europe/Brussels"}, {"maculaos": {"timezone": "Europe/Brussels"}}),
    ("locale", {"locale": "de_DE.UTF-8"}, {"maculaos": {"locale": "de_DE.UTF-8"}}),
    ("network", {"mode": "dhcp"}, {"maculaos": {"network": {"mode": "dhcp"}}}),
    ("network", {"mode": "static", "interface": "enp1s0", "address": "192.168.10.21/24", "gateway": "192.168.10.1",
                 "dns": "1.1.1.1, 9.9.9.9"},
     {"maculaos": {"network": {"mode": "static", "interface": "enp1s0", "address": "192.168.10.21/24",
                               "gateway": "192.168.10.1", "dns": ["1.1.1.1", "9.9.9.9"]}}}),
    ("mesh", {"bootstrap": "on", "public_hostname": "mesh.shop.example", "realm": "io.macula.shop"},
     {"maculaos": {"mesh": {"roles": {"bootstrap": True, "gateway": False}, "realm": "io.macula.shop",
                            "public_hostname": "mesh.shop.example"}}}),
    ("access", {"ssh_keys": KEY + "\n"}, {"ssh_authorized_keys": [KEY]}),
    ("cluster", {"server": "https://192.168.10.2:6443", "ca_cert": CA, "token": TOKEN},
     {"maculaos": {"kubernetes": {"server": "https://192.168.10.2:6443", "ca_cert": CA,
                                  "token": TOKEN}}}),
])
def test_each_step_writes_its_keys_and_keeps_the_others(client: TestClient, state: WizardState, host_root: Path,
                                                        step: str, form: dict[str, str],
                                                        expected: dict[str, Any]) -> None:
    signed_in(client, state)
    assert client.get(f"/step/{step}").status_code == 200
    response = client.post(f"/step/{step}", data={"csrf": client.cookies[CSRF], **form})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/settings?saved={step}"
    config = raw(host_root)
    for key, value in expected.items():
        if key == "maculaos":
            for name, section in value.items():
                assert config["maculaos"][name] == section
        else:
            assert config[key] == value
    assert config["k3s"] == {"airgap": True}
    if step != "mesh":
        assert config["maculaos"]["mesh"] == {"realm": "io.macula.kept"}
    assert stat.S_IMODE(os.stat(config_file(host_root)).st_mode) == 0o600


def test_the_mesh_page_warns_about_the_public_address_of_a_bootstrap_node(client: TestClient,
                                                                          state: WizardState) -> None:
    signed_in(client, state)
    assert "public address" in client.get("/step/mesh").text


def test_a_console_password_is_kept_only_as_its_hash(client: TestClient, state: WizardState, host_root: Path) -> None:
    signed_in(client, state)
    response = client.post("/step/access", data={"csrf": client.cookies[CSRF], "password": "correct horse",
                                                 "password_again": "correct horse"})
    assert response.status_code == 303
    text = config_file(host_root).read_text()
    assert "correct horse" not in text and re.search(r"password_hash: \$6\$", text)


@pytest.mark.parametrize(("step", "form", "named"), [
    ("hostname", {"hostname": "Shop_01"}, "maculaos.hostname"),
    ("hostname", {"hostname": "-shop"}, "maculaos.hostname"),
    ("keyboard", {"keymap": "klingon"}, "maculaos.keymap"),
    ("timezone", {"timezone": "Mars/Olympus_Mons"}, "maculaos.timezone"),
    ("timezone", {"timezone": "../../etc/passwd"}, "maculaos.timezone"),
    ("locale", {"locale": "xx_YY.UTF-8"}, "maculaos.locale"),
    ("network", {"mode": "static", "address": "192.168.10.21/24", "gateway": "10.0.0.1"}, "maculaos.network.gateway"),
    ("network", {"mode": "static", "address": "192.168.10.0/24", "gateway": "192.168.10.1"},
     "maculaos.network.address"),
    ("network", {"mode": "static", "address": "192.168.10.21", "gateway": "192.168.10.1"}, "maculaos.network.address"),
    ("network", {"mode": "static", "address": "not-an-ip/24", "gateway": "192.168.10.1"}, "maculaos.network.address"),
    ("network", {"mode": "static", "address": "192.168.10.21/24"}, "maculaos.network"),
    ("network", {"mode": "static", "address": "192.168.10.21/24", "gateway": "192.168.10.1", "dns": "one.one"},
     "maculaos.network.dns"),
    ("network", {"mode": "bridge"}, "maculaos.network.mode"),
    ("network", {"mode": "dhcp", "interface": "eth0; rm -rf /"}, "maculaos.network.interface"),
    ("mesh", {"bootstrap": "on", "realm": "not a realm!"}, "maculaos.mesh.realm"),
    ("access", {}, "ssh_keys"),
    ("access", {"ssh_keys": "ssh-ed25519 not-base64!"}, "ssh_authorized_keys[0]"),
    ("access", {"password": "correct horse", "password_again": "correct hose"}, "password"),
    ("access", {"password": "short", "password_again": "short"}, "password"),
    ("cluster", {"server": "http://192.168.10.2:6443", "ca_cert": CA, "token": TOKEN},
     "maculaos.kubernetes.server"),
    ("cluster", {"server": "https://192.168.10.2:6443", "ca_cert": "not pem", "token": TOKEN},
     "maculaos.kubernetes.ca_cert"),
    ("cluster", {"server": "https://192.168.10.2:6443", "ca_cert": CA, "token": "secret"}, "maculaos.kubernetes.token"),
    ("cluster", {"server": "https://192.168.10.2:6443", "ca_cert": CA, "token": TOKEN,
                 "node_ip": "10.0.0"}, "maculaos.kubernetes.node_ip"),
])
def test_a_bad_value_changes_nothing_and_is_named_on_the_page(client: TestClient, state: WizardState,
                                                              host_root: Path, step: str, form: dict[str, str],
                                                              named: str) -> None:
    signed_in(client, state)
    before = config_file(host_root).read_text()
    response = client.post(f"/step/{step}", data={"csrf": client.cookies[CSRF], **form})
    assert response.status_code == 400
    alert = re.search(r"<p class='error' role='alert'>(.*?)</p>", response.text)
    assert alert and named in alert.group(1), response.text
    assert config_file(host_root).read_text() == before
    assert "correct horse" not in response.text and TOKEN not in response.text


def test_an_unknown_page_is_not_found(client: TestClient, state: WizardState) -> None:
    signed_in(client, state)
    assert client.get("/step/bios").status_code == 404
    assert client.post("/step/bios", data={"csrf": client.cookies[CSRF]}).status_code == 404


def no_pairing(host_root: Path) -> bool:
    return not (host_root / CREDENTIALS).exists() and not (host_root / CONFIGURED).exists()


@pytest.mark.parametrize(("mode", "code", "message"), [
    ("normal", "expired", "has expired"),
    ("normal", "used", "already used"),
    ("normal", "ZZZZ-ZZZZ", "does not know this code"),
    ("normal", "no spaces allowed", "letters, digits and dashes"),
    ("garbage", "fresh", "not a pairing answer"),
    ("html", "fresh", "not a pairing answer"),
    ("error500", "fresh", "not a pairing answer"),
])
def test_a_pairing_the_portal_refuses_changes_nothing(client: TestClient, state: WizardState, host_root: Path,
                                                      portal: TestPortal, mode: str, code: str,
                                                      message: str) -> None:
    signed_in(client, state)
    if code == "expired":
        code = portal.issue(ttl=-1)
    elif code in ("used", "fresh"):
        code = portal.issue()
        if code and mode == "normal":
            portal.state.codes[code].used = True
    portal.state.mode = mode
    response = client.post("/pair", data={"csrf": client.cookies[CSRF], "portal_code": code})
    assert response.status_code == 400 and message in response.text
    assert no_pairing(host_root) and client.get("/settings").status_code == 200


def test_an_unreachable_portal_changes_nothing(client: TestClient, state: WizardState, host_root: Path) -> None:
    state.setup = NodeSetup(**{**state.setup.__dict__, "portal_url": "http://127.0.0.1:9"})
    signed_in(client, state)
    response = client.post("/pair", data={"csrf": client.cookies[CSRF], "portal_code": "AB12-CD34"})
    assert response.status_code == 400 and "cannot be reached" in response.text
    assert no_pairing(host_root)


def test_pairing_stores_the_credentials_sets_the_flag_and_closes_the_wizard(
        client: TestClient, state: WizardState, host_root: Path, portal: TestPortal,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    paired: list[bool] = []
    state.on_paired = lambda: paired.append(True)
    signed_in(client, state)
    client.post("/step/timezone", data={"csrf": client.cookies[CSRF], "timezone": "Europe/Brussels"})
    code = portal.issue()
    response = client.post("/pair", data={"csrf": client.cookies[CSRF], "portal_code": code})
    assert response.status_code == 200 and "Shop Example" in response.text and paired == [True]
    credentials = host_root / CREDENTIALS
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    stored = yaml.safe_load(credentials.read_text())
    assert stored["refresh_token"] == portal.state.paired[0]["refresh_token"]
    assert portal.state.paired[0]["node"] == "macula-1a2b3c4d"
    assert (host_root / CONFIGURED).exists() and raw(host_root)["maculaos"]["timezone"] == "Europe/Brussels"
    for path in ("/", "/settings", "/pair"):
        assert client.get(path).status_code == 410
    assert client.post("/login", data={"csrf": client.cookies[CSRF], "code": state.setup.code}).status_code == 410
    for secret in (state.setup.secret, state.setup.code, code, stored["refresh_token"]):
        assert secret not in caplog.text


def test_port_80_only_redirects_to_https() -> None:
    client = TestClient(redirect_app(8443), base_url="http://macula-1a2b3c4d.local", follow_redirects=False)
    for method in ("GET", "POST"):
        response = client.request(method, "/step/timezone")
        assert response.status_code == 301
        assert response.headers["location"] == "https://macula-1a2b3c4d.local:8443/step/timezone"
    assert TestClient(redirect_app(443), base_url="http://10.0.0.5").get("/", follow_redirects=False) \
        .headers["location"] == "https://10.0.0.5/"


def test_a_page_keeps_the_keys_of_its_section_that_it_does_not_show(client: TestClient, state: WizardState,
                                                                    host_root: Path) -> None:
    config = raw(host_root)
    config["maculaos"]["mesh"].update({"bootstrap_peers": ["quic://mesh.shop.example:4433"], "tls_mode": "production"})
    config["maculaos"]["kubernetes"] = {"server": "https://192.168.10.2:6443", "ca_cert": CA, "token": TOKEN}
    config_file(host_root).write_text(yaml.safe_dump(config))
    signed_in(client, state)
    assert TOKEN not in client.get("/step/cluster").text  # never shown again
    client.post("/step/mesh", data={"csrf": client.cookies[CSRF], "gateway": "on"})
    client.post("/step/cluster", data={"csrf": client.cookies[CSRF], "server": "https://192.168.10.3:6443",
                                       "ca_cert": CA})
    after = raw(host_root)["maculaos"]
    assert after["mesh"] == {"bootstrap_peers": ["quic://mesh.shop.example:4433"], "tls_mode": "production",
                             "roles": {"bootstrap": False, "gateway": True}}
    assert after["kubernetes"] == {"server": "https://192.168.10.3:6443", "ca_cert": CA, "token": TOKEN}
