"""A local HTTPS stand-in for the Kubernetes API server, which records what Spark's submission client sends.

No Kubernetes API server can run on these machines (no container runtime, no kubelet, no etcd), so the tests
point the unmodified Spark submission client (``spark-submit --master k8s://https://127.0.0.1:PORT
--deploy-mode cluster``, which talks through the fabric8 Kubernetes client) at this server instead. It speaks
real HTTPS with a throw-away CA (:func:`keyvault_server.make_pki`), demands a bearer token, answers the calls
the client makes to start a driver and keeps every JSON body it receives, so a test can validate the driver
pod exactly as the cluster would have received it. It schedules nothing and runs nothing.

What it answers (namespaced resources of any API group: ``/api/v1/namespaces/…`` and
``/apis/GROUP/VERSION/namespaces/…``):

==========================================================  ================================================
request                                                     behaviour
==========================================================  ================================================
any request without ``Authorization: Bearer <token>``        ``401`` with a ``Status`` object
``POST …/namespaces/{ns}/{kind}``                           object recorded and echoed back with ``uid``,
                                                            ``resourceVersion`` and, for pods, a ``Pending``
                                                            status (``201``)
``PATCH …/namespaces/{ns}/{kind}/{name}``               server-side apply: recorded, echoed (``200``)
``GET …/namespaces/{ns}/{kind}/{name}``                   the recorded object, else ``404``
``DELETE …/{kind}/{name}``                                  recorded as a deletion (``200``)
anything else                                               ``404`` ``Status`` (and recorded)
==========================================================  ================================================
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from keyvault_server import Pki

__all__ = ["KubernetesApiServer", "Request"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    content_type: str
    body: dict | None


@dataclass
class _State:
    requests: list[Request] = field(default_factory=list)
    objects: dict[tuple[str, str, str], dict] = field(default_factory=dict)


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class KubernetesApiServer:
    """The recording API server on ``https://127.0.0.1:PORT``; ``token`` is the bearer token it accepts."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.token = secrets.token_urlsafe(24)
        self._state = _State()
        self._lock = threading.Lock()
        self._server: _TlsServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> KubernetesApiServer:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.pki.cert_path, self.pki.key_path)
        context.set_alpn_protocols(["http/1.1"])
        self._server = _TlsServer(("127.0.0.1", 0), _Handler, context, self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._state.requests)

    def created(self, kind: str) -> list[dict]:
        """The bodies of every ``POST`` or server-side apply of ``kind`` (``pods``, ``services``...), in order."""
        return [r.body for r in self.requests
                if r.method in ("POST", "PATCH") and r.body is not None and f"/{kind}" in r.path]

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        content_type = headers.get("Content-Type", "")
        document = None
        if body:
            # server-side apply sends application/apply-patch+yaml (JSON is valid YAML)
            document = yaml.safe_load(body.decode()) if "yaml" in content_type else json.loads(body)
        with self._lock:
            self._state.requests.append(Request(method, path, content_type, document))
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        parts = urlsplit(path).path.strip("/").split("/")
        # api/v1/namespaces/NS/KIND[/NAME] (core) or apis/GROUP/VERSION/namespaces/NS/KIND[/NAME]
        if parts[:1] == ["apis"]:
            parts = parts[2:]
        elif parts[:1] == ["api"]:
            parts = parts[1:]
        if len(parts) < 4 or parts[1] != "namespaces":
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace, kind, name = parts[2], parts[3], (parts[4] if len(parts) > 4 else None)
        with self._lock:
            if method == "POST" and name is None and document is not None:
                stored = self._store(namespace, kind, document["metadata"]["name"], document)
                return 201, stored
            if method == "PATCH" and name is not None and document is not None:
                return 200, self._store(namespace, kind, name, document)
            if method == "GET" and name is not None and (namespace, kind, name) in self._state.objects:
                return 200, self._state.objects[(namespace, kind, name)]
            if method == "DELETE" and name is not None:
                self._state.objects.pop((namespace, kind, name), None)
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        return 404, _status(404, "NotFound", f'{kind} "{name}" not found')

    def _store(self, namespace: str, kind: str, name: str, document: dict) -> dict:
        stored = json.loads(json.dumps(document))
        metadata = stored.setdefault("metadata", {})
        metadata.setdefault("namespace", namespace)
        metadata["uid"] = str(uuid.uuid4())
        metadata["resourceVersion"] = str(len(self._state.requests))
        metadata["creationTimestamp"] = "2026-01-01T00:00:00Z"
        if kind == "pods":
            stored["status"] = {"phase": "Pending"}
        self._state.objects[(namespace, kind, name)] = stored
        return stored

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        """A kubeconfig naming this server, its CA and token (mode 0600), for clients that read one."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url,
                                                      "certificate-authority": str(self.pki.ca_path)}}],
            "users": [{"name": "test", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, context: ssl.SSLContext, api: KubernetesApiServer) -> None:
        super().__init__(address, handler)
        self.context = context
        self.api = api

    def finish_request(self, request, client_address) -> None:
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _TlsServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, document = self.server.api.handle(self.command, self.path, self.headers, body)
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
