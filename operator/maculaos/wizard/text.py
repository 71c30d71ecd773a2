"""`maculaos setup`: the wizard's steps at the node's keyboard. The same steps and checks as the web pages
(wizard/steps.py); no setup secret is asked (whoever is logged in at the console is at the node). Input and
output are functions, so a test scripts it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maculaos.host.config import HostConfigError, read_config
from maculaos.host.firstboot import mark_configured
from maculaos.host.portal import PairingError, pair, store_credentials
from maculaos.wizard.errors import StepError
from maculaos.wizard.steps import STEPS, Step, apply_step, current_values

Ask = Callable[[str], str]
Say = Callable[[str], None]
TRIES = 3


def _ask_step(step: Step, ask: Ask, say: Say, values: dict[str, str]) -> dict[str, str] | None:
    """The step's form from the person; None when they skip it (an empty first answer keeps it as is)."""
    say(f"\n== {step.title} ==" + (f"\n{step.note}" if step.note else ""))
    form: dict[str, str] = {}
    for number, field in enumerate(step.fields):
        now = "" if field.kind in ("password",) else values.get(field.name, "")
        hint = f" [{now}]" if now and field.kind != "textarea" else ""
        extra = " (y/n)" if field.kind == "checkbox" else (" (one per line, an empty line ends)"
                                                             if field.kind == "textarea" else "")
        answer = ask(f"{field.label}{extra}{hint}: ").strip()
        if field.kind == "textarea" and answer:
            lines = [answer]
            while line := ask("... ").strip():
                lines.append(line)
            answer = "\n".join(lines)
        if number == 0 and not answer and not now and field.kind != "checkbox":
            say("skipped")
            return None
        if field.kind == "checkbox":
            answer = "on" if (answer or values.get(field.name, "")).lower() in ("y", "yes", "on") else ""
        form[field.name] = answer or now
    return form


def run_steps(host_root: Path, ask: Ask, say: Say) -> None:
    """Every step, each re-asked (up to three times) while its values are refused."""
    for step in STEPS:
        for _ in range(TRIES):
            try:
                values = current_values(read_config(host_root))
            except HostConfigError:
                values = {}
            form = _ask_step(step, ask, say, values)
            if form is None:
                break
            try:
                apply_step(host_root, step, form)
                say("saved to config.yaml")
                break
            except StepError as exc:
                say(f"refused, nothing changed: {exc}")


def run_pairing(host_root: Path, name: str, portal_url: str, ask: Ask, say: Say) -> bool:
    """Ask for the Portal code until it pairs (three tries); then store the credentials and set the flag."""
    for _ in range(TRIES):
        code = ask("Portal code (empty: pair later): ").strip()
        if not code:
            say("not paired: the node stays in first-boot mode")
            return False
        try:
            credentials = pair(portal_url, code, name)
        except PairingError as exc:
            say(f"not paired, nothing changed: {exc}")
            continue
        store_credentials(host_root, credentials)
        mark_configured(host_root)
        say(f"paired: {name} belongs to {credentials.org_name or credentials.org_id} (by {credentials.user_name}); "
            "first-boot mode ends")
        return True
    return False


def run_text_wizard(host_root: Path, name: str, portal_url: str, ask: Ask = input, say: Say = print) -> bool:
    """The steps, then pairing; whether the node was paired."""
    say(f"MaculaOS setup of {name}: press Enter to keep a value or skip a step.")
    run_steps(host_root, ask, say)
    return run_pairing(host_root, name, portal_url, ask, say)
