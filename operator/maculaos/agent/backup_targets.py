"""From a Backup's target to the restic repositories of one node, with credentials resolved from Secrets.

One repository per node (a sub-path named after the node), so nodes never contend for one repository's
locks and a node's retention can only ever touch its own snapshots. Mesh targets get one repository per
peer the operator assigned (status.meshPeers), all with the mesh target's one credentialsSecretRef.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from maculaos.api.backup import BackupSpec
from maculaos.api.common import SecretKeyRef
from maculaos.errors import MaculaosError
from maculaos.host.paths import in_host_root
from maculaos.host.restic import Repository, local_repository, rest_repository, s3_repository

#: Resolves a Secret key to its (decoded) value; raises TargetError when it cannot, SecretUnavailable when
#: the API server did not answer.
SecretReader = Callable[[SecretKeyRef], str]


class TargetError(MaculaosError):
    """The target cannot be used as configured; the message names the field."""


class SecretUnavailable(MaculaosError):
    """A Secret could not be read because the API server did not answer just now (down, restarting,
    overloaded): nothing is wrong with the target, so the work waits and tries again."""


def repositories(spec: BackupSpec, node: str, host_root: Path, read_secret: SecretReader,
                 mesh_peers: Mapping[str, Sequence[str]], this_node: str | None = None) -> list[Repository]:
    """The repositories holding node's snapshots (node may be another machine's name, for a restore onto a
    replacement). Raises TargetError when there are none to use, SecretUnavailable when a Secret cannot be
    read just now."""
    password = read_secret(spec.repository_password_secret_ref)
    target = spec.target
    if target.local is not None:
        if this_node is not None and node != this_node:
            raise TargetError(f"spec.target.local: {target.local.path} is on {node} itself; this node cannot "
                              "read another node's local repository")
        return [local_repository(in_host_root(host_root, target.local.path), password)]
    if target.rest is not None:
        credentials = _basic_auth(read_secret, target.rest.credentials_secret_ref,
                                  "spec.target.rest.credentialsSecretRef")
        return [rest_repository(f"{target.rest.url.rstrip('/')}/{node}", password, credentials)]
    if target.mesh is not None:
        peers = list(mesh_peers.get(node) or [])
        if not peers:
            raise TargetError(f"spec.target.mesh: no peers assigned to {node} yet (status.meshPeers); nodes "
                              "offer a rest-server with the os.macula.io/backup-server annotation")
        credentials = _basic_auth(read_secret, target.mesh.credentials_secret_ref,
                                  "spec.target.mesh.credentialsSecretRef")
        return [rest_repository(f"{url.rstrip('/')}/{node}", password, credentials) for url in peers]
    if target.s3 is not None:
        s3 = target.s3
        return [s3_repository(s3.endpoint, s3.bucket, s3.prefix.replace("${NODE_NAME}", node), password,
                              read_secret(s3.access_key_id_secret_ref), read_secret(s3.secret_access_key_secret_ref),
                              s3.region, s3.insecure_http)]
    raise TargetError("spec.target: set one of local, rest, mesh or s3")


def _basic_auth(read_secret: SecretReader, ref: SecretKeyRef | None, field: str) -> str | None:
    """A rest-server's user:password from the Secret key, or None when the target names none."""
    if ref is None:
        return None
    value = read_secret(ref)
    user, colon, secret = value.partition(":")
    if not colon or not user or not secret:
        raise TargetError(f"{field}: Secret {ref.namespace}/{ref.name} key {ref.key} must hold user:password "
                          "(a user of the rest-server's htpasswd)")
    return value
