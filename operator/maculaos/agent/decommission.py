"""The node's side of decommissioning (seed 4.12.5): once the operator grants the factory reset on this
node's Node (it is cordoned and drained by then), schedule it in GRUB's environment, say so on the Node
and reboot with the agent's reboot command. A reset that cannot be scheduled (no MaculaOS ESP, a grub.cfg
that predates reset from the command) is reported and the node does not reboot; answered grants are not
acted on again, so a failed reboot command does not loop."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from maculaos.agent.nodereport import Reporter
from maculaos.api.decommission import FAILED_PREFIX, GRANTED_ANNOTATION, RESET_ANNOTATION, valid_mode
from maculaos.host import factory_reset
from maculaos.host.nodeupgrade import run_reboot_command

log = logging.getLogger("maculaos.agent")


def reset_when_granted(node: dict[str, Any], host_root: Path, reboot_command: str, reporter: Reporter,
                       editenv: str = "grub-editenv", editenv_in_node: bool = False) -> bool:
    """Act on a grant not answered yet; True when the node was told to reboot. editenv_in_node: the
    editenv command sees the node's root as `/` (it runs in the node's mount namespace)."""
    annotations: dict[str, str] = dict(node["metadata"].get("annotations") or {})
    granted = annotations.get(GRANTED_ANNOTATION)
    answer = annotations.get(RESET_ANNOTATION, "")
    if not valid_mode(granted) or answer == granted or answer.startswith(FAILED_PREFIX):
        return False
    try:
        mode = factory_reset.schedule(host_root, wipe_data=granted == "all", editenv=editenv,
                                      seen_as=Path("/") if editenv_in_node else None)
    except factory_reset.FactoryResetError as exc:
        log.error(f"decommissioning: {exc}")
        reporter.annotations({RESET_ANNOTATION: f"{FAILED_PREFIX}{exc}"[:1000]}, annotations)
        reporter.event(_as_node(node), "Warning", "FactoryResetFailed", f"not rebooting: {exc}")
        return False
    if not reporter.annotations({RESET_ANNOTATION: mode}, annotations):
        return False  # the next pass tells again (scheduling twice is harmless) before rebooting
    reporter.event(_as_node(node), "Normal", "FactoryResetScheduled", f"factory reset ({mode}) scheduled; rebooting")
    log.info(f"decommissioning: factory reset ({mode}) scheduled, rebooting")
    detail = run_reboot_command(reboot_command)
    if detail:
        log.error(f"reboot command {reboot_command!r} failed: {detail}")
        reporter.event(_as_node(node), "Warning", "RebootFailed",
                       f"the reboot command `{reboot_command}` failed ({detail}); the reset happens at the next boot")
        return False
    return True


def _as_node(node: dict[str, Any]) -> dict[str, Any]:
    return {**node, "apiVersion": "v1", "kind": "Node"}
