"""`maculaos setup`, the text wizard, scripted: the same steps and checks as the web pages, a refused value
asked again with the key named, and pairing against the test Portal."""

from __future__ import annotations

import io
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from maculaos.cli import main
from maculaos.host.config import config_file
from maculaos.host.firstboot import CONFIGURED
from maculaos.host.portal import CREDENTIALS
from maculaos.wizard.text import run_text_wizard
from tests.portal import TestPortal

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"


@pytest.fixture
def portal() -> Iterator[TestPortal]:
    with TestPortal() as running:
        yield running


class Script:
    """Answers in order; every prompt and message kept."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []
        self.said: list[str] = []

    def ask(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError(prompt)
        return self.answers.pop(0)

    def say(self, text: str) -> None:
        self.said.append(text)


def answers(code: str) -> list[str]:
    return [
        "Shop_01", "shop-01",                      # hostname: refused, then good
        "de",                                      # keyboard
        "Mars/Base", "Europe/Berlin",              # time zone: refused, then good
        "",                                        # locale: skipped
        "static", "", "192.168.10.21/24", "10.0.0.1", "",            # network: gateway outside: refused
        "static", "", "192.168.10.21/24", "192.168.10.1", "1.1.1.1",  # network: good
        "n", "y", "", "",                          # mesh: gateway only
        KEY, "", "", "",                           # access: one key, no password
        "",                                        # cluster: skipped
        code,
    ]


def test_the_text_wizard_writes_the_settings_and_pairs(tmp_path: Path, portal: TestPortal) -> None:
    code = portal.issue()
    script = Script(answers(code))
    assert run_text_wizard(tmp_path, "macula-1a2b3c4d", portal.url, script.ask, script.say)
    config = yaml.safe_load(config_file(tmp_path).read_text())
    assert config["maculaos"]["hostname"] == "shop-01" and config["maculaos"]["keymap"] == "de"
    assert config["maculaos"]["timezone"] == "Europe/Berlin" and "locale" not in config["maculaos"]
    assert config["maculaos"]["network"] == {"mode": "static", "address": "192.168.10.21/24",
                                             "gateway": "192.168.10.1", "dns": ["1.1.1.1"]}
    assert config["maculaos"]["mesh"]["roles"] == {"bootstrap": False, "gateway": True}
    assert config["ssh_authorized_keys"] == [KEY]
    refusals = [s for s in script.said if s.startswith("refused")]
    assert len(refusals) == 3
    assert "maculaos.hostname" in refusals[0] and "maculaos.timezone" in refusals[1]
    assert "maculaos.network.gateway" in refusals[2] and "outside" in refusals[2]
    assert (tmp_path / CONFIGURED).exists()
    assert stat.S_IMODE((tmp_path / CREDENTIALS).stat().st_mode) == 0o600
    assert any("public address" in s for s in script.said)


def test_a_refused_portal_code_is_asked_again_and_changes_nothing(tmp_path: Path, portal: TestPortal) -> None:
    used = portal.issue()
    portal.state.codes[used].used = True
    script = Script(["", "", "", "", "", "n", "n", "", "", "", "", expired := portal.issue(-1), used, ""])
    assert not run_text_wizard(tmp_path, "macula-1a2b3c4d", portal.url, script.ask, script.say)
    assert expired and any("has expired" in s for s in script.said) and any("already used" in s for s in script.said)
    assert not (tmp_path / CONFIGURED).exists() and not (tmp_path / CREDENTIALS).exists()


def test_setup_on_a_configured_node_does_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / CONFIGURED).parent.mkdir(parents=True)
    (tmp_path / CONFIGURED).write_text("")
    assert main(["setup", "--host-root", str(tmp_path)]) == 0
    assert "configured already" in capsys.readouterr().out


def test_setup_stops_cleanly_when_its_input_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["setup", "--host-root", str(tmp_path)]) == 1
    assert "setup stopped" in capsys.readouterr().err and not (tmp_path / CONFIGURED).exists()
