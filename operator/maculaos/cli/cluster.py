"""Commands for the cluster: `maculaos operator run` (the controller) and `maculaos crds generate` (the
CustomResourceDefinitions from the API models)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from maculaos.api.common import DEFAULT_NAMESPACE
from maculaos.cli import options
from maculaos.errors import MaculaosError

if TYPE_CHECKING:
    from maculaos.controller.fleet_metrics import Fleet
    from maculaos.controller.metrics import Health
    from maculaos.kube.rest import Credentials

REPO_CRDS = options.REPO_ROOT / "crds"
CHART_CRDS = options.REPO_ROOT / "charts" / "maculaos-crds" / "templates"


def _crds_generate(args: argparse.Namespace) -> int:
    from maculaos.api.crd import chart_crd_files, crd_files

    targets: list[tuple[Path, dict[str, str]]] = [(args.output, crd_files())]
    chart_output = args.chart_output or (CHART_CRDS if args.output == REPO_CRDS else None)
    if chart_output is not None:
        targets.append((chart_output, chart_crd_files()))
    if args.check:
        problems = [f"{out}: {', '.join(names)}" for out, files in targets if (names := _stale(out, files))]
        if problems:
            print(f"generated CRDs are out of date ({'; '.join(problems)}): run `maculaos crds generate`",
                  file=sys.stderr)
            return 1
        return 0
    for out, files in targets:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
            print(out / name)
    return 0


def _stale(out: Path, files: dict[str, str]) -> list[str]:
    """Names in out that differ from files, are missing, or are left over (*.yaml only)."""
    stale = [n for n, text in files.items() if not (out / n).exists() or (out / n).read_text() != text]
    return stale + sorted(p.name for p in out.glob("*.yaml") if p.name not in files)


def _configure_logging(fmt: str, verbose: bool) -> None:
    import kopf

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if fmt == "json" else kopf.LogFormat.FULL)


def _without_generated_client() -> None:
    """kopf imports the generated `kubernetes` client whenever it is installed, only to recognise its model
    objects, which the operator never hands it: about 30 MiB of RSS for nothing. It is not in the operator
    image; where it is installed (the development venv: tests, demo, benchmarks), this process does without
    it too, so it runs, and measures, as in its image."""
    if "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]  # `import kubernetes` raises ImportError


def _operator_run(args: argparse.Namespace) -> int:
    _without_generated_client()
    from maculaos.controller.run import run_operator, run_with_leader_election
    from maculaos.kube.rest import ConfigError, Credentials

    _configure_logging(args.log_format, args.verbose)
    try:
        credentials = Credentials.load()
    except ConfigError as exc:
        raise MaculaosError(f"cannot reach the Kubernetes API: {exc}", exit_code=2) from exc
    health, fleet = _serve_metrics(args.metrics_port, credentials, args.leader_elect)
    if args.leader_elect:
        run_with_leader_election(args.resync_seconds, args.namespace, credentials,
                                 lease_duration=args.lease_duration, health=health, fleet=fleet)
    else:
        run_operator(args.resync_seconds, credentials, health=health, fleet=fleet)
    return 0


def _serve_metrics(address: str, credentials: Credentials, leader_elect: bool) -> tuple[Health | None, Fleet | None]:
    """/metrics, /healthz and /readyz on address ([HOST:]PORT; port 0 serves nothing): (Health, Fleet)."""
    from prometheus_client import REGISTRY

    from maculaos import metrics_http
    from maculaos.controller.fleet_metrics import Fleet
    from maculaos.controller.metrics import Health
    from maculaos.kube.rest import KubeClient

    try:
        host, port = metrics_http.parse_address(address)
    except ValueError as exc:
        raise MaculaosError(f"--metrics-port: {exc}", exit_code=2) from exc
    if port == 0:
        return None, None
    probe_client = KubeClient(credentials, user_agent="maculaos-operator-probes", connections=1)
    health = Health(leader_election=leader_elect,
                    api_check=lambda: probe_client.request("GET", "/version", timeout=3))
    fleet = Fleet()
    REGISTRY.register(fleet)
    try:
        metrics_http.serve(host, port, {"/healthz": health.liveness, "/readyz": health.readiness})
    except OSError as exc:
        raise MaculaosError(f"cannot serve metrics on {host}:{port}: {exc.strerror}; choose another "
                            "--metrics-port (or 0 to serve none)", exit_code=2) from exc
    return health, fleet


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    crds = commands.add_parser("crds", help="CustomResourceDefinitions").add_subparsers(dest="action", required=True)
    generate = options.command(crds, "generate", _crds_generate, "write crds/*.yaml from the API models")
    generate.add_argument("--output", type=Path, default=REPO_CRDS)
    generate.add_argument("--chart-output", type=Path, default=None,
                          help="where the maculaos-crds chart's CRD templates go (default: the chart's "
                               "templates/ when --output is the repository's crds/, else none)")
    options.check(generate)

    operator = commands.add_parser("operator", help="the cluster-wide controller").add_subparsers(
        dest="action", required=True)
    run = options.command(operator, "run", _operator_run,
                          "run the controller against $KUBECONFIG or in-cluster credentials")
    run.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                     help="hold a Lease so that only one of several replicas acts (default: on)")
    run.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", DEFAULT_NAMESPACE),
                     help="namespace of the leader-election Lease")
    run.add_argument("--lease-duration", type=int, default=15,
                     help="seconds a leader's Lease is valid: how long a failover can take")
    run.add_argument("--resync-seconds", type=float,
                     default=float(os.environ.get("MACULAOS_RESYNC_SECONDS", "30")),
                     help="re-judge every object this often, so cluster changes are picked up")
    run.add_argument("--metrics-port", default=os.environ.get("MACULAOS_OPERATOR_METRICS_PORT", "9751"),
                     help="[HOST:]PORT serving /metrics, /healthz and /readyz (default 9751 on every address; "
                          "0 serves none)")
    options.logging_options(run)
