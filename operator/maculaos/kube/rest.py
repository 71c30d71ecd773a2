"""A small Kubernetes REST client: plain JSON over the standard library's http.client, for the node agent
and the operator.

Why not the generated `kubernetes` client: in its current versions every API class builds a pydantic
validator per method and loads hundreds of model modules, about 30 MiB of RSS in a process that must stay
under 60 MB on small nodes. The agent and the operator need a few dozen calls on plain JSON (list, watch,
get, create, patch, replace, delete), in-cluster or kubeconfig credentials (certificates or a token), and
nothing else. Every request is counted (`KubeClient.requests`), so benchmarks can report a process's API
load without reading the API server's metrics. Why http.client and a pool of our own rather than urllib3:
the operator has http.client loaded anyway (aiohttp imports urllib.request), and urllib3 cost another
1-1.6 MiB of RSS in each process for what is here a few dozen lines.

Also here: the merge-patch helpers and the Event body and poster, shared by the agent and the operator.
"""

from __future__ import annotations

import atexit
import base64
import copy
import hashlib
import http.client
import json
import os
import select
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml

from maculaos.api import GROUP, VERSION
from maculaos.api.times import now_rfc3339
from maculaos.errors import MaculaosError

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
#: Events about cluster-scoped objects live here, as the kubelet's Node events do.
EVENT_NAMESPACE = "default"
#: Where a pod finds its service account's token, CA and namespace.
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How often a token file is read again (bound service account tokens are rotated by the kubelet).
TOKEN_REFRESH_SECONDS = 60.0


class ApiError(MaculaosError):
    """The API server answered with an error status (its Status message, when it sent one)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}" + (f": {message}" if message else ""))
        self.status, self.reason, self.message = status, reason, message


class ConfigError(MaculaosError):
    """No usable credentials: the message says what is missing or unsupported."""


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_file: str | None = None
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None

    @classmethod
    def load(cls) -> Credentials:
        """In-cluster credentials in a pod, else $KUBECONFIG (its first file) or ~/.kube/config."""
        in_pod = cls.in_cluster()
        if in_pod is not None:
            return in_pod
        configured = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        return cls.from_kubeconfig(Path(configured) if configured else Path.home() / ".kube" / "config")

    @classmethod
    def in_cluster(cls, account: Path = SERVICE_ACCOUNT) -> Credentials | None:
        """The pod's service account, or None outside a pod."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port or not (account / "token").exists():
            return None
        host = f"[{host}]" if ":" in host else host
        return cls(server=f"https://{host}:{port}", ca_file=str(account / "ca.crt"),
                   token_file=str(account / "token"))

    @classmethod
    def from_kubeconfig(cls, path: Path, context: str | None = None) -> Credentials:
        """The current (or the named) context of a kubeconfig: certificates, a token or a token file.
        Exec plugins and auth providers are not supported (the agent runs in-cluster)."""
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        name = context or config.get("current-context")
        ctx = _named(config, "contexts", name, path).get("context") or {}
        cluster = _named(config, "clusters", ctx.get("cluster"), path).get("cluster") or {}
        user = _named(config, "users", ctx.get("user"), path).get("user") or {} if ctx.get("user") else {}
        if "exec" in user or "auth-provider" in user:
            raise ConfigError(f"kubeconfig {path}: user {ctx.get('user')!r} uses an exec plugin or auth provider; "
                              "give the agent certificates or a token")
        base = path.parent
        return cls(server=str(cluster.get("server") or ""),
                   ca_file=_file(base, cluster, "certificate-authority"),
                   insecure=bool(cluster.get("insecure-skip-tls-verify")),
                   cert_file=_file(base, user, "client-certificate"),
                   key_file=_file(base, user, "client-key"),
                   token=user.get("token"), token_file=_file(base, user, "tokenFile"))


def _named(config: Mapping[str, Any], section: str, name: str | None, path: Path) -> Mapping[str, Any]:
    for entry in config.get(section) or []:
        if entry.get("name") == name:
            return dict(entry)
    raise ConfigError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")


_DATA_DIR: list[Path] = []  # a private folder for certificates given inline (ssl loads them from files)


def _file(base: Path, section: Mapping[str, Any], key: str) -> str | None:
    """The section's file for key (relative to the kubeconfig), or its `<key>-data` written to a 0600 file."""
    if section.get(key):
        return str(base / str(section[key]))
    data = section.get(f"{key}-data")
    if not data:
        return None
    if not _DATA_DIR:
        _DATA_DIR.append(Path(tempfile.mkdtemp(prefix="maculaos-kube-")))
        atexit.register(shutil.rmtree, _DATA_DIR[0], True)
    target = _DATA_DIR[0] / f"{key}-{hashlib.sha256(str(data).encode()).hexdigest()[:16]}"  # one file per value
    target.write_bytes(base64.b64decode(data))
    target.chmod(0o600)
    return str(target)


class _Pool:
    """Keep-alive connections to one server: taken for a request, given back when its answer was read
    whole and the server keeps the connection open; at most `size` kept idle."""

    def __init__(self, server: str, context: ssl.SSLContext, size: int) -> None:
        url = urllib.parse.urlsplit(server)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._https else 80)
        self._context = context
        self._size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection (and whether it was used before), its socket timeout set to timeout."""
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if _open(conn) and conn.sock is not None:
                    conn.sock.settimeout(timeout)
                    return conn, True
                conn.close()
        conn = (http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
                if self._https else http.client.HTTPConnection(self._host, self._port, timeout=timeout))
        conn.connect()
        if conn.sock is not None:
            # http.client writes the headers and the body separately: with Nagle's algorithm the body
            # would wait for the server's delayed ACK of the headers (40 ms), as urllib3 also avoids.
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()


def _open(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection is still usable: one with something to read has been closed by the
    server (or sent what nobody asked for)."""
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0) if conn.sock is not None else ([True], [], [])
    except (OSError, ValueError):
        return False
    return not readable


#: Errors of a reused keep-alive connection the server closed before it read our request: sent again once,
#: on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class KubeClient:
    """JSON requests to one API server over a small connection pool (watches hold a connection each)."""

    def __init__(self, credentials: Credentials, headers: Mapping[str, str] | None = None,
                 timeout: float = 30.0, connections: int = 12, user_agent: str = "maculaos-agent") -> None:
        if not credentials.server.startswith("https://") and not credentials.server.startswith("http://"):
            raise ConfigError(f"API server URL {credentials.server!r} is not http(s)")
        self.credentials = credentials
        self.server = credentials.server.rstrip("/")
        self._prefix = urllib.parse.urlsplit(self.server).path  # a server URL may have a path (a proxy)
        self.timeout = timeout
        #: Requests made so far (watches included), for benchmarks and the operator's rollout log.
        self.requests = 0
        self._headers = {"Accept": "application/json", "User-Agent": user_agent, **(headers or {})}
        self._token: tuple[float, str | None] = (0.0, credentials.token)
        self._token_lock = threading.Lock()
        context = ssl.create_default_context(cafile=credentials.ca_file)
        if credentials.insecure:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if credentials.cert_file:
            context.load_cert_chain(credentials.cert_file, credentials.key_file)
        self._pool = _Pool(self.server, context, connections)

    def _auth(self) -> dict[str, str]:
        if self.credentials.token_file:
            with self._token_lock:
                read_at, token = self._token
                if time.monotonic() - read_at > TOKEN_REFRESH_SECONDS or token is None:
                    token = Path(self.credentials.token_file).read_text().strip()
                    self._token = (time.monotonic(), token)
        else:
            token = self._token[1]
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _target(self, path: str, query: Mapping[str, Any] | None) -> str:
        params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (query or {}).items()
                  if v is not None}
        return self._prefix + path + (f"?{urllib.parse.urlencode(params)}" if params else "")

    def _send(self, method: str, target: str, body: bytes | None, headers: dict[str, str],
              timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """The connection and the response (status and headers read, the body not yet)."""
        while True:
            conn, reused = self._pool.take(timeout)
            try:
                conn.request(method, target, body=body, headers=headers)
                return conn, conn.getresponse()
            except _STALE:
                conn.close()
                if not reused:
                    raise
            except BaseException:
                conn.close()
                raise

    def _finish(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.will_close or not response.isclosed():
            conn.close()
        else:
            self._pool.give(conn)

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
                content_type: str = "application/json", timeout: float | None = None) -> dict[str, Any]:
        """One request; the answer's JSON. Raises ApiError on an error status, OSError (timeouts too) or
        http.client.HTTPException when the server cannot be reached or breaks off."""
        self.requests += 1
        headers = {**self._headers, **self._auth()}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), content_type
        conn, response = self._send(method, self._target(path, query), data, headers, timeout or self.timeout)
        try:
            payload = response.read()
        finally:
            self._finish(conn, response)
        if response.status >= HTTPStatus.BAD_REQUEST:
            raise _error(response.status, response.reason or "", payload)
        return dict(json.loads(payload)) if payload else {}

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def items(self, path: str, **query: Any) -> list[dict[str, Any]]:
        """The items of one list request (no paging: our collections are read whole, as the agent does)."""
        return list(self.get(path, **query).get("items") or [])

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: the API server refuses it with 409 when body's metadata.resourceVersion is stale."""
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Mapping[str, Any], content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.request("DELETE", path, body)

    def watch(self, path: str, **query: Any) -> Iterator[dict[str, Any]]:
        """The events of one watch request (`timeoutSeconds` in query ends it server-side), as they come."""
        self.requests += 1
        headers = {**self._headers, **self._auth()}
        ends_in = float(query.get("timeoutSeconds") or 300)
        conn, response = self._send("GET", self._target(path, {**query, "watch": True}), None, headers,
                                    self.timeout)
        try:
            if conn.sock is not None:  # connected within self.timeout; events may be minutes apart
                conn.sock.settimeout(ends_in + self.timeout)
            if response.status >= HTTPStatus.BAD_REQUEST:
                raise _error(response.status, response.reason or "", response.read())
            pending = bytearray()
            while chunk := response.read1(64 * 1024):
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[:end + 1]
                    if line.strip():
                        yield dict(json.loads(line))
        finally:  # left mid-stream, the connection cannot be reused: _finish closes it
            self._finish(conn, response)


def _error(status: int, reason: str, data: bytes) -> ApiError:
    try:
        message = str(json.loads(data).get("message") or "")
    except (ValueError, AttributeError):
        message = data[:200].decode(errors="replace")
    return ApiError(status, reason, message)


def resource_path(api_version: str, plural: str, name: str = "", namespace: str = "", subresource: str = "") -> str:
    """The REST path of a collection or an object, e.g. ("v1", "nodes", "n1", subresource="status")."""
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def object_path(plural: str, name: str = "", subresource: str = "") -> str:
    """The REST path of one of the MaculaOS kinds (cluster-scoped) or of its collection."""
    return resource_path(f"{GROUP}/{VERSION}", plural, name, subresource=subresource)


def event_body(obj: Mapping[str, Any], type_: str, reason: str, message: str, component: str,
               host: str | None = None) -> dict[str, Any]:
    """A core/v1 Event about obj (cluster-scoped objects' Events go to EVENT_NAMESPACE)."""
    meta = obj["metadata"]
    now = now_rfc3339()
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": EVENT_NAMESPACE},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                               "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": component, **({"host": host} if host else {})},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}


def post_event(kube: KubeClient, obj: Mapping[str, Any], type_: str, reason: str, message: str,
               component: str, host: str | None = None) -> None:
    """A core/v1 Event about obj (cluster-scoped: in EVENT_NAMESPACE)."""
    kube.create(resource_path("v1", "events", namespace=EVENT_NAMESPACE),
                event_body(obj, type_, reason, message, component, host))


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns old into new; empty when they are equal."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif before != value or key not in old:
            patch[key] = copy.deepcopy(value)
    return patch


def apply_merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 applied to a copy of target."""
    out = copy.deepcopy(dict(target))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            before = out.get(key)
            out[key] = apply_merge_patch(before if isinstance(before, Mapping) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out
