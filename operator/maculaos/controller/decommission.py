"""Decommissioning a node on request (seed 4.12.5): a Node annotated os.macula.io/decommission is
cordoned and drained (the NodeUpgrade drain step, with the default drain options and no timeout: a pod
a PodDisruptionBudget protects holds the node until it can go), then granted the factory reset; once the
node's agent says the reset is scheduled, the Node object is deleted. Removing the annotation before the
grant stops it there (the node stays cordoned); after the grant it withdraws the grant. One step per
resync pass, each told by an Event on the Node. A node a NodeUpgrade has cordoned waits until the upgrade releases it.

The state lives on the Node (unschedulable, the grant, the agent's answer), so a restarted operator goes
on where it stood; only the last message told is kept here, so Events are not repeated every pass."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from maculaos.api.decommission import (
    DECOMMISSION_ANNOTATION,
    FAILED_PREFIX,
    GRANTED_ANNOTATION,
    MODES,
    RESET_ANNOTATION,
    valid_mode,
)
from maculaos.api.nodeupgrade import DrainOptions
from maculaos.controller.nodeupgrade import CORDON_ANNOTATION
from maculaos.controller.nodeupgrade_drain import PodRef, drain_step
from maculaos.kube.rest import ApiError, KubeClient, post_event, resource_path

log = logging.getLogger("maculaos.controller")
COMPONENT = "maculaos-operator"


class Decommissions:
    """Moves every annotated Node one step per pass."""

    def __init__(self, kube: KubeClient, own_pod: PodRef | None = None) -> None:
        self.kube = kube
        self.own_pod = own_pod
        self._told: dict[str, str] = {}  # node uid -> the last Event's reason and message

    def run(self, nodes: Iterable[dict[str, Any]]) -> int:
        """One step for each annotated node; returns how many were acted on."""
        acted = 0
        for node in nodes:
            annotations = node["metadata"].get("annotations") or {}
            if DECOMMISSION_ANNOTATION not in annotations and GRANTED_ANNOTATION not in annotations:
                continue
            try:
                if DECOMMISSION_ANNOTATION in annotations:
                    self.step(node)
                else:
                    self.withdraw(node)
            except ApiError as exc:  # the next pass retries
                log.warning(f"decommissioning node {node['metadata']['name']}: {exc}")
            acted += 1
        return acted

    def step(self, node: dict[str, Any]) -> None:
        meta = node["metadata"]
        name, annotations = str(meta["name"]), dict(meta.get("annotations") or {})
        mode = annotations[DECOMMISSION_ANNOTATION]
        if not valid_mode(mode):
            self._tell(node, "Warning", "DecommissionInvalid",
                       f"annotation {DECOMMISSION_ANNOTATION}={mode!r} is not one of {', '.join(MODES)}: "
                       "nothing done")
            return
        upgrade = annotations.get(CORDON_ANNOTATION)
        if upgrade and GRANTED_ANNOTATION not in annotations:
            self._tell(node, "Normal", "DecommissionWaiting",
                       f"NodeUpgrade {upgrade} is upgrading this node: decommissioning starts when it is done")
            return
        if not (node.get("spec") or {}).get("unschedulable"):
            self._patch(name, {"spec": {"unschedulable": True}})
            self._tell(node, "Normal", "DecommissionCordoned", f"cordoned for decommissioning ({mode})")
            return
        granted, answer = annotations.get(GRANTED_ANNOTATION), annotations.get(RESET_ANNOTATION, "")
        if granted != mode:
            report = drain_step(self.kube, name, DrainOptions(), forced=False, own_pod=self.own_pod)
            if not report.done:
                self._tell(node, "Normal", "DecommissionDraining", f"draining: {report.message}")
                return
            self._patch(name, {"metadata": {"annotations": {GRANTED_ANNOTATION: mode}}})
            self._tell(node, "Normal", "DecommissionGranted",
                       f"drained; factory reset ({mode}) granted to the node's agent")
            return
        if answer.startswith(FAILED_PREFIX):
            self._tell(node, "Warning", "DecommissionFailed",
                       f"the node could not schedule its factory reset ({answer.removeprefix(FAILED_PREFIX)}); "
                       "the Node stays, cordoned")
            return
        if answer != mode:
            self._tell(node, "Normal", "DecommissionGranted", "waiting for the node's agent to schedule the reset")
            return
        self._tell(node, "Normal", "Decommissioned", f"factory reset ({mode}) scheduled and the node rebooting: "
                   "Node object deleted")
        try:
            self.kube.delete(resource_path("v1", "nodes", name), {})
        except ApiError as exc:
            if exc.status != 404:
                raise
        self._told.pop(str(meta.get("uid")), None)

    def withdraw(self, node: dict[str, Any]) -> None:
        """The person removed the annotation after the grant: the grant and the agent's answer go, so a
        new annotation starts afresh (say, after fixing what made the reset fail). The node stays
        cordoned; a reset the agent already scheduled still happens at its next boot."""
        name = str(node["metadata"]["name"])
        self._patch(name, {"metadata": {"annotations": {GRANTED_ANNOTATION: None, RESET_ANNOTATION: None}}})
        self._tell(node, "Normal", "DecommissionWithdrawn",
                   f"annotation {DECOMMISSION_ANNOTATION} removed: grant withdrawn; the node stays cordoned")

    def _patch(self, name: str, patch: dict[str, Any]) -> None:
        self.kube.patch(resource_path("v1", "nodes", name), patch)

    def _tell(self, node: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """An Event and a log line, once per change of what there is to say."""
        key, said = str(node["metadata"].get("uid")), f"{reason}: {message}"
        if self._told.get(key) == said:
            return
        self._told[key] = said
        name = node["metadata"]["name"]
        (log.warning if type_ == "Warning" else log.info)(f"node {name}: {said}")
        try:
            post_event(self.kube, {**node, "apiVersion": "v1", "kind": "Node"}, type_, reason, message, COMPONENT)
        except ApiError as exc:
            log.warning(f"cannot post event on node {name}: {exc}")
