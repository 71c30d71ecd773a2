"""`maculaos gitops ...`: the node's git server (config.yaml maculaos.git_server) and its upstream sync."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maculaos.cli import options

if TYPE_CHECKING:  # imported where used: every `maculaos` start builds the parser
    from maculaos.host.gitsync import SyncReport
    from maculaos.host.nodeconfig import GitServerConfig


def _section(host_root: Path) -> GitServerConfig | None:
    from maculaos.host.gitserver import git_section
    from maculaos.host.nodeconfig import NodeConfigError, read_node_config

    config = read_node_config(host_root)
    section, error = git_section(config)
    if error:
        raise NodeConfigError(config.source, "maculaos.git_server", error)
    return section


def _repository_and_upstream(args: argparse.Namespace) -> tuple[Path, str | None, bool]:
    """The repository and upstream the flags name, else config.yaml's."""
    if args.repository is not None:
        return args.repository, args.upstream, args.push_upstream
    section = _section(args.host_root)
    if section is None or section.upstream is None:
        from maculaos.errors import MaculaosError

        raise MaculaosError("config.yaml has no maculaos.git_server.upstream: this node's server is the "
                            "site's authority and has nothing to mirror (or give --repository and --upstream)")
    upstream = section.upstream
    repository = args.host_root / section.root.lstrip("/") / f"{upstream.repository}.git"
    return repository, upstream.url, upstream.push_upstream or args.push_upstream


def _sync(args: argparse.Namespace) -> int:
    from maculaos.host.gitserver import ensure_repository
    from maculaos.host.gitsync import sync

    repository, upstream, push = _repository_and_upstream(args)
    if upstream is None:
        from maculaos.errors import MaculaosError

        raise MaculaosError("--upstream is needed with --repository")
    ensure_repository(repository)
    report = sync(repository, upstream, push)
    _print_report(report.upstream, report)
    return 0 if report.ok else 1


def _print_report(upstream: str, report: SyncReport) -> None:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(report.time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"upstream {upstream}: last sync {when}: {'FAILED: ' + report.error if report.error else 'fetched'}")
    branches = sorted(set(report.local_heads) | set(report.upstream_heads))
    conflicts = {c.branch for c in report.conflicts}
    print(f"{'BRANCH':<24} {'LOCAL':<12} {'UPSTREAM':<12} STATE")
    for branch in branches:
        ours, theirs = report.local_heads.get(branch), report.upstream_heads.get(branch)
        state = ("CONFLICT: diverged, local kept" if branch in conflicts else
                 "pushed upstream" if branch in report.pushed else
                 "ahead (not pushed upstream)" if branch in report.ahead else
                 "local only" if theirs is None else
                 "in sync" if ours == theirs else
                 "behind" if ours is not None else "upstream only")
        print(f"{branch:<24} {(ours or '-')[:12]:<12} {(theirs or '-')[:12]:<12} {state}")
    for conflict in report.conflicts:
        print(f"conflict: {conflict.branch}: local {conflict.local[:12]} and upstream {conflict.upstream[:12]} "
              f"have diverged; merge them upstream (the upstream's is at refs/upstream/heads/{conflict.branch})",
              file=sys.stderr)


def _status(args: argparse.Namespace) -> int:
    section = _section(args.host_root)
    if section is None:
        print("no git server: config.yaml has no maculaos.git_server")
    else:
        _print_server(args.host_root, section)
    print()
    _print_flux(args.kubeconfig, args.flux_namespace)
    return 0


def _print_server(host_root: Path, section: GitServerConfig) -> None:
    from maculaos.host.gitsync import heads, read_report

    root = host_root / section.root.lstrip("/")
    print(f"git server: {'enabled' if section.enabled else 'disabled'}, port {section.port}, root {section.root}, "
          f"push: {'htpasswd users' if section.htpasswd else 'nobody (read-only)'}, "
          f"reads: {'anyone' if section.anonymous_read else 'htpasswd users'}")
    upstream = section.upstream
    print(f"authority: {'the upstream ' + upstream.url if upstream else 'this server (no upstream)'}")
    for repository in sorted(root.glob("*.git")) if root.is_dir() else []:
        print(f"\n{repository.name}:")
        report = read_report(repository)
        if report is None:
            for branch, sha in sorted(heads(repository).items()):
                print(f"  {branch:<24} {sha[:12]}")
        else:
            report.local_heads = heads(repository)  # pushes since the last sync
            _print_report(report.upstream, report)


#: Where a k3s server node keeps its admin kubeconfig.
K3S_KUBECONFIG = Path("/etc/rancher/k3s/k3s.yaml")


def _print_flux(kubeconfig: Path | None, namespace: str) -> None:
    """What Flux applied from the site's folder (each Kustomization's revision, Ready and message), and
    what the operator made of each MaculaOS object it applied. The git server's part above needs no
    cluster: an unreachable one is said, not an error."""
    from maculaos.api import KINDS
    from maculaos.errors import MaculaosError
    from maculaos.kube.rest import ApiError, Credentials, KubeClient, object_path, resource_path

    plural_of_kind = {m.resource.kind: m.resource.plural for m in KINDS}

    try:
        path = kubeconfig or (K3S_KUBECONFIG if K3S_KUBECONFIG.exists() and not os.environ.get("KUBECONFIG")
                              else None)
        kube = KubeClient(Credentials.from_kubeconfig(path) if path else Credentials.load())
        kustomizations = kube.get(resource_path("kustomize.toolkit.fluxcd.io/v1", "kustomizations",
                                                namespace=namespace))["items"]
    except (MaculaosError, ApiError, OSError) as exc:
        print(f"Flux: not reported ({exc})")
        return
    if not kustomizations:
        print(f"Flux: no Kustomization in namespace {namespace}")
    for item in kustomizations:
        status = item.get("status") or {}
        ready = _ready(status)
        print(f"Flux Kustomization {namespace}/{item['metadata']['name']} ({item['spec'].get('path', './')}): "
              f"applied {status.get('lastAppliedRevision') or 'nothing yet'}; "
              f"Ready={ready.get('status', 'Unknown')} {ready.get('message', '')}".rstrip())
        for kind, name in _macula_objects(status):
            try:
                obj = kube.get(object_path(plural_of_kind[kind], name))
            except ApiError as exc:
                print(f"  {kind}/{name}: {exc}")
                continue
            verdict = _ready(obj.get("status") or {})
            print(f"  {kind}/{name}: Ready={verdict.get('status', 'Unknown')} {verdict.get('reason', '')} "
                  f"{verdict.get('message', '')}".rstrip())


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})


def _macula_objects(status: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of the MaculaOS objects in a Kustomization's inventory. Flux writes each entry's
    id as `<namespace>_<name>_<group>_<Kind>` (the namespace empty for cluster-scoped objects)."""
    from maculaos.api import GROUP, KINDS

    kinds = {m.resource.kind for m in KINDS}
    found = []
    for entry in (status.get("inventory") or {}).get("entries") or []:
        parts = str(entry.get("id", "")).split("_")
        if len(parts) == 4 and parts[2] == GROUP and parts[3] in kinds:
            found.append((parts[3], parts[1]))
    return found


def _server_config(args: argparse.Namespace) -> int:
    from maculaos.host.gitserver import server_files

    section = _section(args.host_root)
    if section is None:
        print("no git server: config.yaml has no maculaos.git_server")
        return 0
    for path, text in server_files(section).files.items():
        shown = "(htpasswd lines, not shown)\n" if path.name == "htpasswd" else text
        print(f"==> /{path}\n{shown}")
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gitops = commands.add_parser("gitops", help="this node's git server and its upstream sync") \
        .add_subparsers(dest="action", required=True)
    sync = options.command(gitops, "sync", _sync, "mirror the upstream repository into this node's server "
                           "(fast-forward only; a diverged local branch is kept and reported)", reports=(OSError,))
    sync.add_argument("--repository", type=Path, help="the local bare repository (default: config.yaml's)")
    sync.add_argument("--upstream", help="the upstream URL (with --repository)")
    sync.add_argument("--push-upstream", action="store_true", help="push local branches ahead of the upstream's")
    options.host_root(sync)
    status = options.command(gitops, "status", _status, "the server's repositories, their local and upstream "
                             "heads and any conflict; what Flux applied, and what the operator made of it",
                             reports=(OSError,))
    options.host_root(status)
    status.add_argument("--kubeconfig", type=Path, help="the cluster Flux runs in (default: $KUBECONFIG, "
                        f"else {K3S_KUBECONFIG} on a server node, else ~/.kube/config)")
    status.add_argument("--flux-namespace", default="flux-system", help="where Flux's objects are")
    show = options.command(gitops, "server-config", _server_config,
                           "print the server's files as config.yaml renders them")
    options.host_root(show)
