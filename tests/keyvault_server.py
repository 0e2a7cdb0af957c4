"""A local HTTPS stand-in for the Azure Key Vault data plane, for testing ppml through the real Azure SDK.

No official Key Vault emulator exists (Azurite covers Storage only), and this machine has no network. So the
tests run the unmodified ``azure-keyvault-keys`` / ``azure-keyvault-secrets`` / ``azure-identity`` packages
against this small server, which implements the documented data-plane REST contract with real cryptography
(``cryptography``'s RSA-OAEP and AES key wrap). It is a test helper, not a Key Vault: no access policies, no
soft delete, no paging beyond one page, keys and secrets live in memory.

What it implements (any ``api-version``; JSON bodies; binary values as unpadded base64url):

====================================================  ===================================================
request                                               behaviour
====================================================  ===================================================
any request without ``Authorization: Bearer …``        ``401`` + ``WWW-Authenticate: Bearer authorization=…,
                                                      resource="https://vault.azure.net"`` (the SDK's
                                                      challenge discovery)
``POST /keys/{name}/create``                          new key (``RSA``/``RSA-HSM`` 2048/3072/4096,
                                                      ``oct-HSM`` 128/192/256) or a new version of it
``POST /keys/{name}/rotate``                          new version with the same type and size
``GET /keys/{name}/{version}``                        key bundle (public JWK only; empty version = latest)
``PATCH /keys/{name}/{version}``                      update attributes (``enabled``)
``GET /keys``, ``GET /keys/{name}/versions``          one page of key / version items
``POST /keys/{name}/{version}/wrapkey|unwrapkey``     ``RSA-OAEP`` (SHA-1), ``RSA-OAEP-256``, ``A128KW``,
``POST /keys/{name}/{version}/encrypt|decrypt``       ``A192KW``, ``A256KW`` → ``{"kid", "value"}``
``PUT /secrets/{name}``, ``GET /secrets/{name}/{v}``  set / get secrets (empty version = latest)
unknown key / version / secret                        ``404`` ``KeyNotFound`` / ``SecretNotFound``
====================================================  ===================================================

Switches for error tests (all thread-safe): :meth:`KeyVaultServer.deny` answers ``403 Forbidden`` for one
permission (``("keys", "unwrapKey")``, ``("secrets", "get")``…) with Key Vault's access-policy message naming
the caller's ``appid``/``oid``; a disabled key version answers ``403`` with inner code ``KeyDisabled``;
:meth:`KeyVaultServer.throttle` answers ``429`` with ``Retry-After`` for the next N requests (or for ever).

Also here, so that the command line can be tested exactly as it runs in production (vault *names*,
``DefaultAzureCredential``, challenge-resource verification on):

* :class:`IdentityEndpoint`: the App Service managed-identity token endpoint (``IDENTITY_ENDPOINT`` +
  ``IDENTITY_HEADER``), which ``DefaultAzureCredential`` uses without any network; the tokens it issues are
  tied to the requesting client id, which then appears in 403 messages as Key Vault would show it.
* :class:`ConnectProxy`: an HTTPS proxy (``HTTPS_PROXY``) that tunnels ``CONNECT <name>.vault.azure.net:443``
  to this server (its certificate carries ``*.vault.azure.net``, signed by the test CA) and answers ``502``
  for vault names it does not know, as a proxy does for a name that does not resolve. Nothing leaves the
  loopback interface.

:func:`make_pki` creates the test CA and the server certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``,
``DNS:*.vault.azure.net``, ``DNS:*.managedhsm.azure.net``) in a folder with ``cryptography``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import selectors
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.x509.oid import NameOID

__all__ = ["make_pki", "Pki", "KeyVaultServer", "StaticTokenCredential", "IdentityEndpoint", "ConnectProxy",
           "TENANT_ID", "keyvault_session", "keyvault", "azure_identity_env"]

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
_KEY_OPS = ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
_RSA_TYPES = ("RSA", "RSA-HSM")
_OCT_TYPES = ("oct", "oct-HSM")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


# -- test PKI -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_path: Path
    cert_path: Path
    key_path: Path


def make_pki(folder: Path, *, addresses: Sequence[str] = ()) -> Pki:
    """A throw-away CA and a server certificate for loopback and ``*.vault.azure.net`` in ``folder``; the
    certificate also names the IP ``addresses`` (hosts of a test network)."""
    import ipaddress

    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ppml test CA (keyvault_server)")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names = [x509.DNSName("localhost"), x509.DNSName("*.vault.azure.net"), x509.DNSName("*.managedhsm.azure.net"),
             *(x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", *addresses))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return pki


# -- credentials ----------------------------------------------------------------------------------------------


class StaticTokenCredential:
    """An ``azure.core.credentials.TokenCredential`` returning one fixed token (what library tests pass)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs):
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    def close(self) -> None:
        pass


# -- the vault's state -----------------------------------------------------------------------------------------


@dataclass
class _KeyVersion:
    version: str
    kty: str
    size: int
    material: object  # RSAPrivateKey or bytes
    created: int
    enabled: bool = True
    key_ops: list[str] = field(default_factory=lambda: list(_KEY_OPS))


@dataclass
class _SecretVersion:
    version: str
    value: str
    content_type: str | None
    created: int
    enabled: bool = True


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.inner, self.headers = status, code, message, inner, headers or {}


def _not_found(kind: str, name: str, version: str = "") -> _HttpError:
    what = "A key" if kind == "keys" else "A secret"
    code = "KeyNotFound" if kind == "keys" else "SecretNotFound"
    ver = f" and version '{version}'" if version else ""
    return _HttpError(404, code, f"{what} with (name/id) {name}{ver} was not found in this key vault. If you recently "
                                 "deleted this key you may be able to recover it using the correct recovery command.")


class KeyVaultServer:
    """The vault: keys and secrets in memory, the switches, and the HTTPS listener.

    Use as a context manager or call :meth:`start` / :meth:`stop`. :attr:`url` is
    ``https://127.0.0.1:PORT``; clients need ``connection_verify=pki.ca_path`` and, because a loopback host
    never matches the challenge resource ``vault.azure.net``, ``verify_challenge_resource=False`` (or they go
    through :class:`ConnectProxy` with a real-looking vault name).
    """

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self._lock = threading.RLock()
        self.keys: dict[str, list[_KeyVersion]] = {}
        self.secrets: dict[str, list[_SecretVersion]] = {}
        self._denied: set[tuple[str, str]] = set()
        self._throttle_left: int | None = 0  # None = for ever
        self._throttle_after = "0"
        self.throttled = 0
        self.identities: dict[str, dict[str, str]] = {}  # token -> {"appid", "oid"}
        self.requests: list[dict[str, object]] = []
        self._httpd: _TlsHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._clock = 0

    # -- lifecycle

    def start(self) -> KeyVaultServer:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert_path, self.pki.key_path)
        self._httpd = _TlsHttpServer(("127.0.0.1", 0), _VaultHandler, context, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="keyvault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> KeyVaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not running"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- switches

    def deny(self, kind: str, permission: str) -> None:
        """Answer 403 for ``permission`` (``"unwrapKey"``, ``"get"``…) on ``kind`` (``"keys"``/``"secrets"``)."""
        with self._lock:
            self._denied.add((kind, permission))

    def allow_all(self) -> None:
        with self._lock:
            self._denied.clear()

    def throttle(self, count: int | None, retry_after: str = "0.01") -> None:
        """Answer 429 (with ``Retry-After``) to the next ``count`` authenticated requests; ``None`` = for ever."""
        with self._lock:
            self._throttle_left = count
            self._throttle_after = retry_after

    def set_enabled(self, name: str, enabled: bool, version: str | None = None) -> None:
        with self._lock:
            for entry in self.keys[name]:
                if version is None or entry.version == version:
                    entry.enabled = enabled

    def reset(self) -> None:
        """Forget every key, secret, switch and logged request (between tests sharing one server)."""
        with self._lock:
            self.keys.clear()
            self.secrets.clear()
            self._denied.clear()
            self._throttle_left = 0
            self.throttled = 0
            self.requests.clear()

    def register_token(self, token: str, appid: str, oid: str | None = None) -> None:
        with self._lock:
            self.identities[token] = {"appid": appid, "oid": oid or str(uuid.uuid5(uuid.NAMESPACE_URL, appid))}

    def rsa_private_key(self, name: str, version: str | None = None):
        """The private key of a key version (tests use its public half to build BigDL-style wrapped keys)."""
        return self._version("keys", name, version or "").material

    # -- state helpers

    def _now(self) -> int:
        # strictly increasing "created" times, so versions sort in creation order as in Key Vault
        with self._lock:
            self._clock = max(self._clock + 1, int(time.time()))
            return self._clock

    def _version(self, kind: str, name: str, version: str):
        with self._lock:
            versions = (self.keys if kind == "keys" else self.secrets).get(name)
            if not versions:
                raise _not_found(kind, name)
            if not version:
                return versions[-1]
            for entry in versions:
                if entry.version == version:
                    return entry
            raise _not_found(kind, name, version)

    def _new_key(self, name: str, kty: str, size: int | None, key_ops: list[str] | None) -> _KeyVersion:
        if kty in _RSA_TYPES:
            size = size or 2048
            if size not in (2048, 3072, 4096):
                raise _HttpError(400, "BadParameter", f"Invalid key size {size} for an RSA key.")
            material: object = rsa.generate_private_key(public_exponent=65537, key_size=size)
        elif kty in _OCT_TYPES:
            size = size or 256
            if size not in (128, 192, 256):
                raise _HttpError(400, "BadParameter", f"Invalid key size {size} for an oct key.")
            material = os.urandom(size // 8)
        else:
            raise _HttpError(400, "BadParameter", f"Key type '{kty}' is not supported.")
        entry = _KeyVersion(uuid.uuid4().hex, kty, size, material, self._now(),
                            key_ops=list(key_ops) if key_ops else list(_KEY_OPS))
        with self._lock:
            self.keys.setdefault(name, []).append(entry)
        return entry

    # -- JSON shapes

    @staticmethod
    def _attributes(created: int, enabled: bool) -> dict[str, object]:
        return {"enabled": enabled, "created": created, "updated": created,
                "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90}

    def _key_bundle(self, host: str, name: str, entry: _KeyVersion) -> dict[str, object]:
        jwk: dict[str, object] = {"kid": f"https://{host}/keys/{name}/{entry.version}", "kty": entry.kty,
                                  "key_ops": entry.key_ops}
        if entry.kty in _RSA_TYPES:
            numbers = entry.material.public_key().public_numbers()  # type: ignore[attr-defined]
            jwk.update(n=_b64url(_int_bytes(numbers.n)), e=_b64url(_int_bytes(numbers.e)))
        return {"key": jwk, "attributes": self._attributes(entry.created, entry.enabled), "tags": {}}

    def _secret_bundle(self, host: str, name: str, entry: _SecretVersion) -> dict[str, object]:
        bundle: dict[str, object] = {"value": entry.value, "id": f"https://{host}/secrets/{name}/{entry.version}",
                                     "attributes": self._attributes(entry.created, entry.enabled), "tags": {}}
        if entry.content_type:
            bundle["contentType"] = entry.content_type
        return bundle

    # -- crypto

    @staticmethod
    def _crypt(entry: _KeyVersion, alg: str, value: bytes, forward: bool) -> bytes:
        if entry.kty in _RSA_TYPES and alg in ("RSA-OAEP", "RSA-OAEP-256"):
            digest = hashes.SHA1() if alg == "RSA-OAEP" else hashes.SHA256()
            oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
            private = entry.material
            if forward:
                return private.public_key().encrypt(value, oaep)  # type: ignore[attr-defined]
            return private.decrypt(value, oaep)  # type: ignore[attr-defined]
        if entry.kty in _OCT_TYPES and alg in ("A128KW", "A192KW", "A256KW"):
            if int(alg[1:4]) != entry.size:
                raise _HttpError(400, "BadParameter", f"Algorithm {alg} does not match the key size.")
            key = entry.material
            return aes_key_wrap(key, value) if forward else aes_key_unwrap(key, value)  # type: ignore[arg-type]
        raise _HttpError(400, "BadParameter", f"Algorithm '{alg}' is not supported by key type {entry.kty}.")

    # -- dispatch

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict[str, str], object]:
        """Route one request; returns (status, extra headers, JSON document or None)."""
        host = headers.get("Host", f"127.0.0.1:{self.port}")
        auth = headers.get("Authorization", "")
        record: dict[str, object] = {"method": method, "path": path, "authorized": auth.startswith("Bearer ")}
        with self._lock:
            self.requests.append(record)
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return 401, {"WWW-Authenticate": f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", '
                                             'resource="https://vault.azure.net"'}, \
                {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}
        token = auth[7:].strip()
        identity = self.identities.get(token, {"appid": "00000000-0000-0000-0000-00000000a11c",
                                               "oid": "00000000-0000-0000-0000-0000000000b0"})
        with self._lock:
            if self._throttle_left is None or self._throttle_left > 0:
                if self._throttle_left is not None:
                    self._throttle_left -= 1
                self.throttled += 1
                raise _HttpError(429, "Throttled", "Request was not processed because too many requests were "
                                                   "received. Reason: VaultRequestTypeLimitReached",
                                 headers={"Retry-After": self._throttle_after})
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            raise _HttpError(400, "BadParameter", "The request body is not valid JSON.") from None
        parts = urlsplit(path).path.split("/")[1:]
        vault_name = host.split(".")[0] if "." in host.split(":")[0] and not host[0].isdigit() else host

        def check(kind: str, permission: str) -> None:
            record["op"] = f"{kind}/{permission}"
            with self._lock:
                denied = (kind, permission) in self._denied
            if denied:
                raise _HttpError(
                    403, "Forbidden",
                    f"The user, group or application 'appid={identity['appid']};oid={identity['oid']};"
                    f"iss=https://sts.windows.net/{TENANT_ID}/' does not have {kind} {permission} permission on "
                    f"key vault '{vault_name};location=westeurope'. For help resolving this issue, please see "
                    "https://go.microsoft.com/fwlink/?linkid=2125287",
                    inner="AccessDenied")

        def enabled(entry: _KeyVersion, operation: str) -> _KeyVersion:
            if not entry.enabled:
                raise _HttpError(403, "Forbidden", f"Operation {operation} is not allowed on a disabled key.",
                                 inner="KeyDisabled")
            return entry

        if parts[0] == "keys":
            if len(parts) == 1 or (len(parts) == 2 and not parts[1]):
                if method == "GET":
                    check("keys", "list")
                    with self._lock:
                        items = [{"kid": f"https://{host}/keys/{n}",
                                  "attributes": self._attributes(v[-1].created, v[-1].enabled)}
                                 for n, v in sorted(self.keys.items())]
                    return 200, {}, {"value": items, "nextLink": None}
            name = parts[1]
            if len(parts) == 3 and parts[2] == "create" and method == "POST":
                check("keys", "create")
                entry = self._new_key(name, str(document.get("kty", "")), document.get("key_size"),
                                      document.get("key_ops"))
                return 200, {}, self._key_bundle(host, name, entry)
            if len(parts) == 3 and parts[2] == "rotate" and method == "POST":
                check("keys", "rotate")
                latest = self._version("keys", name, "")
                entry = self._new_key(name, latest.kty, latest.size, latest.key_ops)
                return 200, {}, self._key_bundle(host, name, entry)
            if len(parts) == 3 and parts[2] == "versions" and method == "GET":
                check("keys", "list")
                with self._lock:
                    versions = list(self.keys.get(name, []))
                if not versions:
                    raise _not_found("keys", name)
                items = [{"kid": f"https://{host}/keys/{name}/{v.version}",
                          "attributes": self._attributes(v.created, v.enabled)} for v in versions]
                return 200, {}, {"value": items, "nextLink": None}
            if len(parts) in (2, 3) and method == "GET":
                check("keys", "get")
                entry = enabled(self._version("keys", name, parts[2] if len(parts) == 3 else ""), "get")
                return 200, {}, self._key_bundle(host, name, entry)
            if len(parts) == 3 and method == "PATCH":
                check("keys", "update")
                entry = self._version("keys", name, parts[2])
                if "enabled" in document.get("attributes", {}):
                    entry.enabled = bool(document["attributes"]["enabled"])
                return 200, {}, self._key_bundle(host, name, entry)
            if len(parts) == 4 and method == "POST" and parts[3] in ("wrapkey", "unwrapkey", "encrypt", "decrypt"):
                operation = {"wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}.get(parts[3], parts[3])
                check("keys", operation)
                entry = enabled(self._version("keys", name, parts[2]), operation)
                try:
                    value = _unb64url(str(document["value"]))
                    alg = str(document["alg"])
                except (KeyError, ValueError, TypeError):
                    raise _HttpError(400, "BadParameter", "Property 'alg' and 'value' are required.") from None
                try:
                    result = self._crypt(entry, alg, value, forward=operation in ("wrapKey", "encrypt"))
                except (ValueError, InvalidUnwrap):
                    raise _HttpError(400, "BadParameter", f"Failed to {operation}: the value is invalid "
                                                          "for this key.") from None
                return 200, {}, {"kid": f"https://{host}/keys/{name}/{entry.version}", "value": _b64url(result)}
        if parts[0] == "secrets" and len(parts) >= 2:
            name = parts[1]
            if method == "PUT" and len(parts) == 2:
                check("secrets", "set")
                if not isinstance(document.get("value"), str):
                    raise _HttpError(400, "BadParameter", "Property 'value' is required.")
                entry = _SecretVersion(uuid.uuid4().hex, document["value"], document.get("contentType"), self._now())
                with self._lock:
                    self.secrets.setdefault(name, []).append(entry)
                return 200, {}, self._secret_bundle(host, name, entry)
            if method == "GET" and len(parts) in (2, 3):
                check("secrets", "get")
                entry = self._version("secrets", name, parts[2] if len(parts) == 3 else "")
                return 200, {}, self._secret_bundle(host, name, entry)
        raise _HttpError(400, "BadParameter", f"The request {method} {urlsplit(path).path} is not supported "
                                              "by this test server.")


class _TlsHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, context: ssl.SSLContext, vault: KeyVaultServer) -> None:
        super().__init__(address, handler)
        self.context = context
        self.vault = vault

    def finish_request(self, request, client_address) -> None:
        # the TLS handshake runs in the connection's own thread, so a stalled client never blocks the others
        request.settimeout(10)
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


class _VaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms delayed-ACK stalls
    server: _TlsHttpServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, headers, document = self.server.vault.handle(self.command, self.path, self.headers, body)
        except _HttpError as exc:
            status, headers = exc.status, exc.headers
            document = {"error": {"code": exc.code, "message": exc.message,
                                  **({"innererror": {"code": exc.inner}} if exc.inner else {})}}
        payload = json.dumps(document).encode() if document is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-ms-keyvault-service-version", "1.9.0.0")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


# -- App Service managed identity endpoint ---------------------------------------------------------------------


class IdentityEndpoint:
    """The managed-identity token endpoint of Azure App Service, on plain HTTP loopback.

    Point ``IDENTITY_ENDPOINT`` at :attr:`url` and ``IDENTITY_HEADER`` at :attr:`secret`, and
    ``DefaultAzureCredential`` (its ``ManagedIdentityCredential``) gets tokens here. Each token is registered
    with ``vault`` for the requesting client id, so 403 messages name that identity.
    """

    def __init__(self, vault: KeyVaultServer) -> None:
        self.vault = vault
        self.secret = "identity-header-" + uuid.uuid4().hex
        self.issued: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                if self.headers.get("X-IDENTITY-HEADER") != owner.secret:
                    status, document = 401, {"error": "invalid_request", "error_description": "bad header"}
                else:
                    client_id = query.get("client_id") or "system-assigned"
                    token = "mi-token-" + uuid.uuid4().hex
                    owner.vault.register_token(token, client_id)
                    owner.issued.append({"client_id": client_id, "resource": query.get("resource", ""),
                                         "token": token})
                    status, document = 200, {"access_token": token, "expires_on": str(int(time.time()) + 3600),
                                             "resource": query.get("resource", ""), "token_type": "Bearer",
                                             "client_id": client_id}
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         name="identity-endpoint", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/msi/token"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- HTTPS proxy for real-looking vault names ------------------------------------------------------------------


class ConnectProxy:
    """An ``HTTPS_PROXY`` that tunnels ``CONNECT <name>.vault.azure.net:443`` to ``vault`` (loopback only).

    Vault names not in :attr:`names` get ``502 Bad Gateway``, as a proxy answers for a host that does not
    resolve; every other target is refused the same way. Tunnels end when either side closes or the proxy stops.
    """

    _SUFFIXES = (".vault.azure.net", ".managedhsm.azure.net")

    def __init__(self, vault: KeyVaultServer, names: tuple[str, ...] = ("kv1",)) -> None:
        self.vault = vault
        self.names = set(names)
        self._stopping = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._tunnel(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="connect-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _accepts(self, target: str) -> bool:
        host, _, port = target.rpartition(":")
        host = host.lower()
        suffix = next((s for s in self._SUFFIXES if host.endswith(s)), None)
        return port == "443" and suffix is not None and host[: -len(suffix)] in self.names

    def _tunnel(self, client: socket.socket) -> None:
        client.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk or len(head) > 16384:
                return
            head += chunk
        request_line, _, rest = head.partition(b"\r\n")
        extra = rest.partition(b"\r\n\r\n")[2]
        method, _, target = request_line.decode("latin-1").partition(" ")
        target = target.rpartition(" ")[0]
        if method != "CONNECT" or not self._accepts(target):
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        upstream = socket.create_connection(("127.0.0.1", self.vault.port), timeout=10)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if extra:
                upstream.sendall(extra)
            with selectors.DefaultSelector() as selector:
                selector.register(client, selectors.EVENT_READ, upstream)
                selector.register(upstream, selectors.EVENT_READ, client)
                deadline = time.monotonic() + 120
                while not self._stopping.is_set() and time.monotonic() < deadline:
                    for key, _ in selector.select(timeout=0.2):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
        except OSError:
            return
        finally:
            upstream.close()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()


# -- pytest fixtures (import them into a test module to use them) ---------------------------------------------


@pytest.fixture(scope="session")
def keyvault_session(tmp_path_factory):
    """One server per test process (key generation and TLS set-up are the slow parts), plus the
    managed-identity endpoint and the proxy; all stopped at the end."""
    pki = make_pki(tmp_path_factory.mktemp("keyvault-pki"))
    server = KeyVaultServer(pki).start()
    identity = IdentityEndpoint(server)
    proxy = ConnectProxy(server, names=("kv1", "kv2"))
    server.identity_endpoint, server.proxy = identity, proxy  # type: ignore[attr-defined]
    yield server
    proxy.stop()
    identity.stop()
    server.stop()


@pytest.fixture
def keyvault(keyvault_session) -> KeyVaultServer:
    """The shared server, emptied before and after the test."""
    keyvault_session.reset()
    yield keyvault_session
    keyvault_session.reset()


@pytest.fixture
def azure_identity_env(keyvault) -> dict[str, str]:
    """Environment under which unmodified production code reaches ``https://kv1.vault.azure.net`` here.

    ``DefaultAzureCredential`` gets its token from the App Service managed-identity endpoint
    (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``) for client id ``AZURE_CLIENT_ID``; ``HTTPS_PROXY`` tunnels to
    the server, whose certificate the test CA (``REQUESTS_CA_BUNDLE``) signs. Other Azure variables are
    removed so that no other credential is tried.
    """
    return {
        "HTTPS_PROXY": keyvault.proxy.url,
        "NO_PROXY": "127.0.0.1,localhost",
        "REQUESTS_CA_BUNDLE": str(keyvault.pki.ca_path),
        "IDENTITY_ENDPOINT": keyvault.identity_endpoint.url,
        "IDENTITY_HEADER": keyvault.identity_endpoint.secret,
        "AZURE_CLIENT_ID": "5e1f3c2a-9b7d-4e8f-a1c0-d2b3e4f5a6b7",
    }
