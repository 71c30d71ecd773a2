"""`maculaos decommission NODE`: ask the operator to retire a node (cordon, drain, factory reset, remove
the Node object) by setting the annotation it acts on. Runs wherever a kubeconfig reaches the cluster."""

from __future__ import annotations

import argparse
from http import HTTPStatus

from maculaos.api.decommission import DECOMMISSION_ANNOTATION
from maculaos.cli import options
from maculaos.errors import MaculaosError


def _decommission(args: argparse.Namespace) -> int:
    from maculaos.kube.rest import ApiError, ConfigError, Credentials, KubeClient, resource_path

    mode = "all" if args.wipe_data else "keep-data"
    kept = "including /var/lib/data" if args.wipe_data else "/var/lib/data kept"
    if not args.confirm:
        print(f"maculaos decommission: node {args.node} would be cordoned and drained, factory reset ({kept}) "
              "and removed from the cluster. Run it again with --confirm to go ahead.", flush=True)
        return 2
    try:
        kube = KubeClient(Credentials.load(), user_agent="maculaos-cli")
    except ConfigError as exc:
        raise MaculaosError(f"cannot reach the Kubernetes API: {exc}", exit_code=2) from exc
    try:
        kube.patch(resource_path("v1", "nodes", args.node), {"metadata": {"annotations": {
            DECOMMISSION_ANNOTATION: mode}}})
    except ApiError as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            raise MaculaosError(f"no node {args.node} in the cluster") from exc
        raise MaculaosError(f"cannot annotate node {args.node}: HTTP {exc.status} {exc.message or exc.reason}") \
            from exc
    print(f"node {args.node} annotated {DECOMMISSION_ANNOTATION}={mode}: the operator cordons and drains it, the "
          f"node resets and reboots, then its Node object goes (`kubectl get events --field-selector "
          f"involvedObject.name={args.node}` follows it)")
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = options.command(commands, "decommission", _decommission,
                             "retire a node: drain it, factory reset it and remove it from the cluster")
    parser.add_argument("node", help="the Node's name")
    parser.add_argument("--wipe-data", action="store_true", help="wipe /var/lib/data too (default: keep it)")
    parser.add_argument("--confirm", action="store_true", help="go ahead (without it: say what would happen)")
