"""First-boot state and what the console shows: the setup secret made once and kept root-only, its typed
form, the wizard's certificate (made by the real openssl) and its fingerprint, the console's text and QR
code, and `maculaos wizard console`."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from maculaos.cli import main
from maculaos.host.config import CONFIG_PATH
from maculaos.host.firstboot import (
    CERTIFICATE,
    KEY,
    SECRET,
    ensure_certificate,
    in_first_boot_mode,
    is_configured,
    mark_configured,
    secret_matches,
    setup_secret,
    short_code,
)
from maculaos.wizard.pairing import NodeSetup, console_text


def test_the_setup_secret_is_made_once_and_kept_root_only(tmp_path: Path) -> None:
    secret = setup_secret(tmp_path)
    assert re.fullmatch(r"[A-Z2-9]{16}", secret) and not set("01ILO") & set(secret)
    assert setup_secret(tmp_path) == secret
    assert stat.S_IMODE((tmp_path / SECRET).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / SECRET).parent.stat().st_mode) == 0o700
    (tmp_path / SECRET).write_text("tampered\n")
    assert setup_secret(tmp_path) != secret  # a damaged file gives a new secret, never a weak one


def test_the_short_code_is_the_secret_in_groups_and_matches_as_typed() -> None:
    secret = "ABCDEFGHJKMNPQRS"
    assert short_code(secret) == "ABCD-EFGH-JKMN-PQRS"
    for typed in (secret, "abcd-efgh-jkmn-pqrs", " ABCD EFGH JKMN PQRS "):
        assert secret_matches(secret, typed)
    for typed in ("", "ABCD-EFGH-JKMN-PQR", "ABCD-EFGH-JKMN-PQRT", secret + "A"):
        assert not secret_matches(secret, typed)


def test_the_certificate_is_made_once_and_its_fingerprint_is_openssls(tmp_path: Path) -> None:
    made = ensure_certificate(tmp_path, "macula-1a2b3c4d")
    assert made.cert == tmp_path / CERTIFICATE and stat.S_IMODE((tmp_path / KEY).stat().st_mode) == 0o600
    shown = subprocess.run(["openssl", "x509", "-in", str(made.cert), "-noout", "-fingerprint", "-sha256", "-ext",
                            "subjectAltName"], check=True, capture_output=True, text=True).stdout
    assert made.fingerprint == shown.split("=", 1)[1].splitlines()[0].replace(":", "").lower()
    assert "DNS:macula-1a2b3c4d.local" in shown
    assert ensure_certificate(tmp_path, "macula-1a2b3c4d").fingerprint == made.fingerprint


def test_the_configured_flag(tmp_path: Path) -> None:
    assert not is_configured(tmp_path)
    mark_configured(tmp_path)
    assert is_configured(tmp_path)


WIZARD_UNIT = Path(__file__).parents[2] / "image-build/overlay/usr/lib/systemd/system/maculaos-wizard.service"


def _unit_says_first_boot(root: Path) -> bool:
    """The wizard unit's own test (its ConditionPathExists and ExecCondition), run by sh against root."""
    unit = WIZARD_UNIT.read_text()
    flag = re.search(r"^ConditionPathExists=!(\S+)$", unit, re.MULTILINE)
    script = re.search(r"^ExecCondition=/bin/sh -c '(.+)'$", unit, re.MULTILINE)
    assert flag and script
    if Path(f"{root}{flag.group(1)}").exists():
        return False
    command = script.group(1).replace("/var/lib/maculaos", f"{root}/var/lib/maculaos")
    return subprocess.run(["sh", "-c", command], check=False).returncode == 0


def test_first_boot_mode_is_a_blank_node_or_a_wizard_under_way_never_a_provisioned_one(tmp_path: Path) -> None:
    """Python's test (wizard, console, firewall) and the wizard unit's agree at every step."""
    (tmp_path / CONFIG_PATH).parent.mkdir(parents=True)
    seen = [(in_first_boot_mode(tmp_path), _unit_says_first_boot(tmp_path))]          # blank
    (tmp_path / CONFIG_PATH).write_text("maculaos: {}\n")
    seen.append((in_first_boot_mode(tmp_path), _unit_says_first_boot(tmp_path)))     # provisioned
    setup_secret(tmp_path)
    seen.append((in_first_boot_mode(tmp_path), _unit_says_first_boot(tmp_path)))     # the wizard's, half-way
    mark_configured(tmp_path)
    seen.append((in_first_boot_mode(tmp_path), _unit_says_first_boot(tmp_path)))     # paired
    assert seen == [(True, True), (False, False), (True, True), (False, False)]


def test_a_provisioned_node_shows_no_wizard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / CONFIG_PATH).parent.mkdir(parents=True)
    (tmp_path / CONFIG_PATH).write_text("maculaos: {}\n")
    assert main(["wizard", "console", "--host-root", str(tmp_path)]) == 0
    assert main(["wizard", "serve", "--host-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith("provisioned with a config.yaml): no wizard served\n")
    assert not (tmp_path / SECRET).exists()


def test_the_console_shows_url_code_and_a_qr_code_with_secret_and_fingerprint(tmp_path: Path) -> None:
    setup = NodeSetup(tmp_path, "macula-1a2b3c4d", "ABCDEFGHJKMNPQRS", "ab" * 32, "http://portal", 8443, "10.0.0.5")
    assert setup.url == "https://10.0.0.5:8443/"
    assert setup.pairing_url() == f"https://10.0.0.5:8443/login?secret=ABCDEFGHJKMNPQRS#sha256={'ab' * 32}"
    text = console_text(setup)
    assert "https://10.0.0.5:8443/" in text and "ABCD-EFGH-JKMN-PQRS" in text and "ab" * 32 in text
    assert "█" in text and "maculaos setup" in text
    assert NodeSetup(tmp_path, "macula-1a2b3c4d", "X", "f", "p").url == "https://macula-1a2b3c4d.local/"


def test_wizard_console_prints_it_until_the_node_is_configured(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert main(["wizard", "console", "--host-root", str(tmp_path), "--port", "8443"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"MaculaOS first boot: macula-[0-9a-f]{8}", out)
    assert short_code(setup_secret(tmp_path)) in out
    mark_configured(tmp_path)
    assert main(["wizard", "console", "--host-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["wizard", "serve", "--host-root", str(tmp_path)]) == 0
    assert "no wizard served" in capsys.readouterr().out
    assert os.path.exists(tmp_path / SECRET)


def test_a_maculaos_start_does_not_import_the_web_stack() -> None:
    """The boot's commands build the same parser: the wizard's packages load only when it runs."""
    code = ("import sys; from maculaos.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'zeroconf', 'segno') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
