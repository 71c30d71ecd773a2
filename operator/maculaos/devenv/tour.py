"""`maculaos dev tour`: the stories, played for real on the running demo. Each step applies or changes objects
with the real kubectl, waits for the outcome, and prints the commands with their real output, so that the
person sees what to type and what to look for. A step whose outcome does not come fails the tour loudly."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from maculaos.api.common import VERSION_LABEL
from maculaos.devenv.controlplane import ControlPlane
from maculaos.devenv.demo import Demo, DemoError
from maculaos.devenv.demo_objects import API_VERSION, BAD_UPGRADE, DEMO_UPGRADE
from maculaos.devenv.processes import ProcessRecord, is_running, load_records

#: The demo's Backup (examples/backup.yaml) and the node whose sandbox the backup step changes.
BACKUP = "nightly"
TOUR_NODE = "macula-nuc-01"
#: The file the backup step writes, changes and brings back, inside /var/lib/data (which the Backup includes).
TOUR_FILE = "/var/lib/data/tour/notes.txt"


class TourError(DemoError):
    """A step's outcome did not come: what the person should have seen, and what was there instead."""


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    play: Callable[[Tour], None]


class Tour:
    """The running demo, seen through kubectl as the person types it."""

    def __init__(self, demo: Demo, out: TextIO) -> None:
        self.demo = demo
        self.plane: ControlPlane = demo.control_plane()
        self.out = out
        self.files = demo.workdir / "tour"
        self.files.mkdir(exist_ok=True)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def kubectl(self, *args: str, expect_failure: bool = False) -> str:
        """Run kubectl as the person would type it (KUBECONFIG exported) and print the command and its output."""
        self.say(f"\n  $ {shlex.join(['kubectl', *args])}")
        result = subprocess.run([str(self.plane.bin_dir / "kubectl"), f"--kubeconfig={self.plane.kubeconfig}",
                                 *args], capture_output=True, text=True, timeout=120)
        output = (result.stdout + result.stderr).rstrip()
        self.say("\n".join(f"    {line}" for line in output.splitlines()))
        if (result.returncode != 0) != expect_failure:
            raise TourError(f"kubectl {' '.join(args)} " + (
                "was accepted; it should have been refused" if expect_failure else f"failed:\n{output}"))
        return output

    def apply(self, name: str, docs: list[dict[str, Any]]) -> Path:
        """Write the objects to a file the person can read and apply again, show it, apply it."""
        path = self.files / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self.say(f"\n  {path}:")
        self.say("\n".join(f"    {line}" for line in path.read_text().splitlines()))
        return path

    def show_file(self, path: Path) -> str:
        text = path.read_text()
        self.say(f"\n  $ cat {path}")
        self.say("\n".join(f"    {line}" for line in text.splitlines()))
        return text

    def get(self, ref: str) -> dict[str, Any]:
        result = subprocess.run([str(self.plane.bin_dir / "kubectl"), f"--kubeconfig={self.plane.kubeconfig}",
                                 "get", ref, "-o", "json"], capture_output=True, text=True, timeout=60)
        return dict(json.loads(result.stdout)) if result.returncode == 0 else {}

    def wait_for(self, ref: str, probe: Callable[[dict[str, Any]], Any], what: str, timeout: float = 120.0) -> Any:
        """Read the object until probe finds something true in it; fail at once if the operator stopped."""
        self.say(f"\n  ... waiting for {what}")
        operator = self._operator()
        deadline = time.monotonic() + timeout
        while not (got := probe(self.get(ref))):
            if operator is not None and not is_running(operator):
                raise TourError(f"the operator stopped; see {operator.log}")
            if time.monotonic() > deadline:
                raise TourError(f"timed out after {timeout:.0f}s waiting for {what}; `kubectl get {ref} -o yaml` "
                                "shows where it stands")
            time.sleep(0.5)
        return got

    def host_path(self, node: str, path: str) -> Path:
        """A path on a simulated node: inside its sandbox host root."""
        return self.demo.workdir / "nodes" / node / path.lstrip("/")

    def _operator(self) -> ProcessRecord | None:
        return next((r for r in load_records(self.demo.state_file) if r.name == "operator"), None)


def backup_restore(tour: Tour) -> None:
    node, file = TOUR_NODE, tour.host_path(TOUR_NODE, TOUR_FILE)
    tour.say(f"A file on {node} ({TOUR_FILE}; the node's sandbox host root holds it at {file}):")
    file.parent.mkdir(parents=True, exist_ok=True)
    original = f"written by the tour at {time.strftime('%H:%M:%S')}, before the backup\n"
    file.write_text(original)
    tour.show_file(file)
    token = f"tour-{time.time_ns()}"
    tour.say(f"\nBack it up now: the run-now annotation starts an on-demand run of backup/{BACKUP} on every node.")
    last_run = ((tour.get(f"backup/{BACKUP}").get("status") or {}).get("run") or {}).get("id")
    tour.kubectl("annotate", "--overwrite", f"backup/{BACKUP}", f"os.macula.io/run-now={token}")
    status = tour.wait_for(f"backup/{BACKUP}", lambda o: _new_run_done(o, last_run),
                           "the run to complete on every node (status.run.completionTime)")
    failed = {n: e.get("lastError") or e.get("message") for n, e in (status.get("nodes") or {}).items()
              if e.get("phase") != "Succeeded"}
    if failed:
        raise TourError(f"backup/{BACKUP}'s run failed on {failed}")
    tour.kubectl("get", f"backup/{BACKUP}")
    nodes = len(status.get("nodes") or {})
    tour.say(f"\nLook for: LAST SUCCESS a few seconds ago and OUTCOME {nodes}/{nodes} backed up; "
             "`kubectl get backup nightly -o yaml` shows each node's new snapshot "
             "(status.nodes.<node>.lastSnapshotId).")
    file.write_text("changed by mistake\n")
    tour.say(f"\nNow the file is changed by mistake on {node}:")
    tour.show_file(file)
    name = "tour-restore"
    tour.say("\nBring it back in place from the newest snapshot (a Restore is never changed: the tour deletes "
             "its last one first):")
    tour.kubectl("delete", f"restore/{name}", "--ignore-not-found")
    path = tour.apply(name, [{"apiVersion": API_VERSION, "kind": "Restore", "metadata": {"name": name},
                              "spec": {"backupName": BACKUP, "nodeName": node, "snapshot": {"latest": True},
                                       "paths": [str(Path(TOUR_FILE).parent)]}}])
    tour.kubectl("apply", "-f", str(path))
    restore = tour.wait_for(f"restore/{name}", _restore_finished, f"restore/{name} to finish")
    tour.kubectl("get", f"restore/{name}")
    if restore.get("phase") != "Succeeded":
        raise TourError(f"restore/{name} ended {restore.get('phase')}: {restore.get('nodes')}")
    tour.say("\nLook for: PHASE Succeeded and the snapshot it came from. The file is back:")
    if tour.show_file(file) != original:
        raise TourError(f"{file} was not restored: it holds {file.read_text()!r}")


def health(tour: Tour) -> None:
    name, port = "tour-service", _free_port()
    tour.say(f"A service the nodes depend on should listen on 127.0.0.1:{port}, and it is down. A HealthCheck "
             "watches it on every node, every 2 seconds:")
    path = tour.apply(name, [{"apiVersion": API_VERSION, "kind": "HealthCheck", "metadata": {"name": name},
                              "spec": {"checks": [{"name": "service-port", "type": "tcp", "interval": "2s",
                                                   "timeout": "1s", "failureThreshold": 1,
                                                   "tcp": {"host": "127.0.0.1", "port": port}}]}}])
    tour.kubectl("apply", "-f", str(path))
    count = len(tour.get("nodes").get("items") or [])
    tour.wait_for(f"healthcheck/{name}", lambda o: _healthy(o) == 0 and _condition(o, "Degraded"),
                  "every node to find it failing")
    tour.say(f"\nLook for: OUTCOME 0/{count} healthy, and each node's status naming the check that fails.")
    tour.kubectl("get", f"healthcheck/{name}")
    tour.kubectl("get", f"healthcheck/{name}", "-o",
                 "jsonpath={range .status.nodes.*}{.phase}: {.message}{\"\\n\"}{end}")
    tour.say("\nThe service comes back (here the tour itself listens on the port; on a real node "
             "restartOnFailure restarts its systemd unit, as demo-capped-restart tries to).")
    service = _listen(port)
    try:
        tour.wait_for(f"healthcheck/{name}", lambda o: _healthy(o) == count, f"all {count} nodes healthy")
        tour.say(f"\nLook for: OUTCOME {count}/{count} healthy.")
        tour.kubectl("get", f"healthcheck/{name}")
    finally:
        service.close()
    tour.say("\nThe tour's service goes away with the tour, so its HealthCheck goes too:")
    tour.kubectl("delete", "-f", str(path))


def bad_object(tour: Tour) -> None:
    name = "tour-bad-interval"
    tour.say("A HealthCheck whose interval is not a duration. The API server checks every object against the "
             "CRD's schema before anything stores it:")
    path = tour.apply(name, [{"apiVersion": API_VERSION, "kind": "HealthCheck", "metadata": {"name": name},
                              "spec": {"checks": [{"name": "mesh", "type": "tcp", "interval": "every minute",
                                                   "tcp": {"host": "127.0.0.1", "port": 8080}}]}}])
    refused = tour.kubectl("apply", "-f", str(path), expect_failure=True)
    if "spec.checks[0].interval" not in refused or "Invalid value" not in refused:
        raise TourError(f"the refusal does not name the field spec.checks[0].interval:\n{refused}")
    tour.say("\nLook for: `is invalid`, the field (spec.checks[0].interval), the value, and the form it must have. "
             "Nothing was stored:")
    tour.kubectl("get", "healthcheck", name, expect_failure=True)
    name = "tour-bad-path"
    tour.say(f"\nWhat the schema cannot know, the operator judges: a Restore of a path backup/{BACKUP} never "
             "includes. It is stored, then marked Invalid with the field named, and no agent acts on it:")
    tour.kubectl("delete", f"restore/{name}", "--ignore-not-found")
    path = tour.apply(name, [{"apiVersion": API_VERSION, "kind": "Restore", "metadata": {"name": name},
                              "spec": {"backupName": BACKUP, "nodeName": TOUR_NODE, "snapshot": {"latest": True},
                                       "paths": ["/home/macula/notes"]}}])
    tour.kubectl("apply", "-f", str(path))
    message = tour.wait_for(f"restore/{name}", lambda o: _condition(o, "Invalid"), "the operator's verdict")
    if "spec.paths[0]" not in message:
        raise TourError(f"restore/{name}'s Invalid condition does not name spec.paths[0]: {message}")
    tour.kubectl("get", f"restore/{name}")
    tour.kubectl("get", f"restore/{name}", "-o", "jsonpath={.status.conditions[?(@.type==\"Invalid\")].message}")
    tour.say("\nLook for: READY False with the reason, and the Invalid condition's message naming spec.paths[0]. "
             "A Restore cannot be changed, so it goes:")
    tour.kubectl("delete", "-f", str(path))


def upgrade(tour: Tour) -> None:
    index = _release_index(tour)
    tour.say(f"The nodes started on 0.1.0. `maculaos dev up` applied {DEMO_UPGRADE}, which rolls 0.2.0 from the "
             f"demo's release index ({index}) across them one node at a time, with no maintenance window "
             f"(examples/nodeupgrade.yaml keeps the night window a real site would have). In another terminal:\n"
             f"  kubectl get nodeupgrades -w")
    status = tour.wait_for(f"nodeupgrade/{DEMO_UPGRADE}", _upgrade_finished, f"nodeupgrade/{DEMO_UPGRADE} to finish",
                           timeout=600)
    tour.kubectl("get", f"nodeupgrade/{DEMO_UPGRADE}")
    if status.get("phase") != "Succeeded":
        raise TourError(f"nodeupgrade/{DEMO_UPGRADE} ended {status.get('phase')}: {status.get('nodes')}")
    tour.say("\nLook for: PHASE Succeeded, every node upgraded. Each node's versions and slot:")
    tour.kubectl("get", f"nodeupgrade/{DEMO_UPGRADE}", "-o",
                 "jsonpath={range .status.nodes.*}{.fromVersion} -> {.version} slot {.slot}{\"\\n\"}{end}")


def rollback(tour: Tour) -> None:
    _release_index(tour)
    tour.say("0.3.0 on the beta channel is a bad build: its kernel panics. The firmware boots the node's previous "
             "slot again by itself, and the rollout stops at the first failure:")
    tour.kubectl("delete", f"nodeupgrade/{BAD_UPGRADE}", "--ignore-not-found")
    tour.demo.apply_bad_upgrade()
    tour.say(f"$ kubectl apply -f {tour.demo.workdir / (BAD_UPGRADE + '.yaml')}")
    status = tour.wait_for(f"nodeupgrade/{BAD_UPGRADE}", lambda o: _upgrade_finished(o) or _paused(o),
                           f"nodeupgrade/{BAD_UPGRADE} to stop", timeout=600)
    tour.kubectl("get", f"nodeupgrade/{BAD_UPGRADE}")
    rolled_back = [e for e in (status.get("rollout") or {}).values() if e.get("stage") == "RolledBack"]
    if not status.get("failedNodes") or not rolled_back:
        raise TourError(f"nodeupgrade/{BAD_UPGRADE} did not roll back: failedNodes {status.get('failedNodes')}, "
                        f"rollout {status.get('rollout')}")
    tour.say("\nLook for: FAILED 1 and the rollout stopped. The operator's record of each node (the node that "
             "booted the bad build is RolledBack, back on its slot; the others never rebooted into it):")
    tour.kubectl("get", f"nodeupgrade/{BAD_UPGRADE}", "-o",
                 "jsonpath={range .status.rollout.*}{.stage}: {.message}{\"\\n\"}{end}")
    tour.kubectl("get", "nodes", "-L", VERSION_LABEL)


STEPS = (
    Step("backup-restore", "backup and restore: a file changed on a node comes back", backup_restore),
    Step("health", "a health check failing and healing", health),
    Step("bad-object", "bad objects refused, naming the field: by the API server, by the operator", bad_object),
    Step("upgrade", "an upgrade rolled across the nodes", upgrade),
    Step("rollback", "a bad build rolled back", rollback),
)


class StepSkipped(Exception):
    """The running demo cannot play this step; the message says why."""


def run_tour(demo: Demo, out: TextIO, step: str | None = None, pause: Callable[[], object] | None = None) -> int:
    """Play every step (or the one named) on the running demo; the number of steps played."""
    steps = [s for s in STEPS if step in (None, s.name)]
    if not steps:
        raise DemoError(f"no step {step!r}; the steps: {', '.join(s.name for s in STEPS)}")
    tour = Tour(demo, out)
    tour.say(f"export KUBECONFIG={tour.plane.kubeconfig} PATH={tour.plane.bin_dir}:$PATH   # to type along")
    played = 0
    for number, current in enumerate(steps, 1):
        tour.say(f"\n== {number}/{len(steps)} {current.name}: {current.title}\n")
        try:
            current.play(tour)
            played += 1
        except StepSkipped as skipped:
            tour.say(f"skipped: {skipped}")
        if pause is not None and number < len(steps):
            pause()
    tour.say(f"\nThe tour is over: {played} of {len(steps)} step(s) played.")
    return played


def _release_index(tour: Tour) -> str:
    try:
        return tour.demo.release_index()
    except DemoError as exc:
        raise StepSkipped("this demo serves no release index, so there is nothing to upgrade to") from exc


def _new_run_done(obj: dict[str, Any], last_run: str | None) -> dict[str, Any] | None:
    """A Backup's status once a run other than last_run (the one before the annotation) is complete."""
    status: dict[str, Any] = obj.get("status") or {}
    run = status.get("run") or {}
    return status if run.get("id") != last_run and run.get("completionTime") else None


def _restore_finished(obj: dict[str, Any]) -> dict[str, Any] | None:
    status: dict[str, Any] = obj.get("status") or {}
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def _upgrade_finished(obj: dict[str, Any]) -> dict[str, Any] | None:
    status: dict[str, Any] = obj.get("status") or {}
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def _paused(obj: dict[str, Any]) -> dict[str, Any] | None:
    status: dict[str, Any] = obj.get("status") or {}
    return status if status.get("phase") == "Paused" else None


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    """The message of the condition of this type once it is True."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return str(cond.get("message") or kind)
    return None


def _nodes(obj: dict[str, Any]) -> dict[str, Any]:
    return dict((obj.get("status") or {}).get("nodes") or {})


def _healthy(obj: dict[str, Any]) -> int | None:
    """status.healthyNodes (the HEALTHY column), once every node it selects (the NODES column) has reported on
    this generation and the operator has counted their latest reports (None before)."""
    entries = _nodes(obj).values()
    generation = (obj.get("metadata") or {}).get("generation")
    matched = (obj.get("status") or {}).get("matchedNodes")
    if not entries or len(entries) != matched or any(e.get("observedGeneration") != generation for e in entries):
        return None
    status = obj.get("status") or {}
    healthy = sum(1 for e in entries if e.get("phase") == "Healthy")
    unhealthy = len(entries) - healthy
    # The OUTCOME column the person is shown, judged from these very entries.
    outcome = f"{healthy}/{len(entries)} healthy" + (f", {unhealthy} unhealthy" if unhealthy else "")
    return healthy if status.get("healthyNodes") == healthy and status.get("outcome") == outcome else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listen(port: int) -> socket.socket:
    """A port that accepts connections (the kernel completes them from the backlog; nobody reads)."""
    service = socket.socket()
    service.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    service.bind(("127.0.0.1", port))
    service.listen(64)
    return service
