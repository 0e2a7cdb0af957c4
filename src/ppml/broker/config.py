"""The key broker's configuration file (YAML).

Relative paths, ``file:`` secret sources included, are relative to the file's folder.

::

    listen: {host: 0.0.0.0, port: 8443}
    tls: {certificate: tls/broker.pem, private_key: tls/broker-key.pem}   # TLS is not optional
    kms:                                   # where the primary keys are; secrets only as sources
      - {backend: pkcs11, token: ppml, pin: env:PPML_HSM_PIN}
      - {backend: local, keystore: keystore.json, passphrase: file:/run/secrets/keystore-pass}
      - {backend: azure, vault: contoso-kv}
    verifiers:                             # evidence types the broker verifies, with their settings
      sgx: {}
      maa: {jwks: maa-signing-keys.json, issuers: [https://contoso.weu.attest.azure.net]}
    policies: [policies/]                  # policy files or folders of them
    audit_log: audit/broker.jsonl
    audit_key: audit/audit-key.json        # the wrapped signing key ('ppml broker audit new-key')
    audit_heads: {sink: "az://audit-heads/broker.jsonl", interval: 10s}
    replica: broker-0                      # this replica's name in published heads (default: host name)
    workers: 2                             # serving processes of this replica (default 1)
    nonces:                                # only for several replicas behind one address
      secret: env:PPML_BROKER_NONCE_SECRET # shared by the replicas: a source, never a value
      redis: {url: "redis://redis:6379/0", password: env:REDIS_PASSWORD}
    limits: {max_request_bytes: 262144, requests_per_second: 20, burst: 40, nonce_lifetime: 60s}
    key_cache: 5m                          # how long unwrapped keys stay in the broker's memory
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ppml.attest.evidence import verifier_class
from ppml.attest.policy import Policy, load_policies, parse_duration, read_yaml
from ppml.errors import ConfigError, NotFoundError, UsageError
from ppml.keys.settings import KeySettings

__all__ = ["BrokerConfig", "Limits", "NonceSettings", "load_config"]

_TOP = {"listen", "tls", "kms", "verifiers", "policies", "audit_log", "audit_key", "audit_heads", "replica", "workers",
        "nonces", "limits", "key_cache", "verification_time"}
_DURATIONS = ("nonce_lifetime", "handshake_timeout", "header_timeout", "body_timeout", "idle_timeout")
_PATH_SETTINGS = {"keystore", "jwks", "collateral", "ca_certificates", "module", "certificate", "private_key",
                  "client_ca", "root_ca"}
_SECRET_SOURCES = {"passphrase", "pin"}


@dataclass(frozen=True)
class Limits:
    """Per-request and per-connection limits (``max_concurrency`` and the per-address cap apply per worker)."""

    max_request_bytes: int = 256 * 1024
    requests_per_second: float = 20.0
    burst: int = 40
    nonce_lifetime: int = 60
    max_concurrency: int = 256
    max_connections_per_address: int = 32
    handshake_timeout: int = 10
    header_timeout: int = 10
    body_timeout: int = 10
    idle_timeout: int = 5
    refusals_per_second: float = 2.0
    refusal_burst: int = 20

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"limits.{name} must be a positive number, not {value!r}")


@dataclass(frozen=True)
class NonceSettings:
    """Where the nonce secret and the used nonces live (defaults: random per replica, in memory)."""

    secret: str | None = None
    redis_url: str | None = None
    redis_password: str | None = None
    redis_ca: str | None = None
    memory_mib: int = 64


@dataclass(frozen=True)
class BrokerConfig:
    source: str
    host: str
    port: int
    certificate: str
    private_key: str
    client_ca: str | None
    kms: tuple[Mapping[str, Any], ...]
    verifiers: Mapping[str, Mapping[str, Any]]
    policies: tuple[Policy, ...]
    audit_log: str
    audit_key: str
    heads_sink: str | None = None
    heads_interval: int = 10
    replica: str = ""
    workers: int = 1
    nonces: NonceSettings = field(default_factory=NonceSettings)
    limits: Limits = field(default_factory=Limits)
    key_cache: int = 300
    verification_time: datetime | None = None


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    text = str(value)
    return str((base / text).resolve()) if not Path(text).expanduser().is_absolute() else str(Path(text).expanduser())


def _setting(name: str, value: Any, base: Path) -> Any:
    if value is None:
        return value
    if name in _SECRET_SOURCES and isinstance(value, str) and value.startswith("file:"):
        return "file:" + _resolve(value[len("file:"):], base)
    if name == "module" and "/" not in str(value):
        return value  # a bare library name is found through the system's library search path
    return _resolve(value, base) if name in _PATH_SETTINGS else value


def _paths(settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
    return {k: _setting(k, v, base) for k, v in settings.items()}


def _verifiers(raw: Mapping[Any, Any], *, where: str, base: Path) -> dict[str, dict[str, Any]]:
    """Verifier settings by evidence type, each under its registered spelling: evidence names its type that
    way, and the broker looks verifiers up by it."""
    verifiers: dict[str, dict[str, Any]] = {}
    for name, settings in raw.items():
        try:
            evidence_type = verifier_class(str(name)).type
        except UsageError as exc:
            raise ConfigError(f"{where}: verifiers: {exc.message}", hint=exc.hint) from None
        if evidence_type in verifiers:
            raise ConfigError(f"{where}: verifiers: {evidence_type} is named twice",
                              hint="keep one entry per evidence type")
        verifiers[evidence_type] = _paths(settings or {}, base)
    return verifiers


def _settings(cls, raw: Mapping[str, Any], *, where: str):
    try:
        return cls(**raw)
    except TypeError:
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown) or '?'}",
                          hint="allowed: " + ", ".join(cls.__dataclass_fields__)) from None


def _source(value: object, *, what: str, base: Path) -> str | None:
    """A secret source setting, checked: env:VAR, file:PATH (relative to the file) or azure-secret:VAULT/NAME."""
    if value is None:
        return None
    kind, _, rest = str(value).partition(":")
    if kind not in ("env", "file", "azure-secret") or not rest:
        raise ConfigError(f"{what} must name a secret source (env:VAR, file:PATH or azure-secret:VAULT/NAME), not a "
                          "value", hint="secrets in configuration files end up in backups and version control")
    return _setting("passphrase", str(value), base)


def _nonce_settings(raw: Mapping[str, Any], *, where: str, base: Path) -> NonceSettings:
    unknown = sorted(set(raw) - {"secret", "redis", "memory_mib"})
    if unknown:
        raise ConfigError(f"{where}: nonces: unknown field(s) {', '.join(unknown)}",
                          hint="allowed: secret, redis, memory_mib")
    redis = dict(raw.get("redis") or {})
    if set(redis) - {"url", "password", "ca"} or (redis and not str(redis.get("url", "")).startswith(
            ("redis://", "rediss://"))):
        raise ConfigError(f"{where}: nonces.redis takes url (redis:// or rediss://), password (a source) and ca")
    if "@" in str(redis.get("url", "")).split("://", 1)[-1].split("/", 1)[0]:
        raise ConfigError(f"{where}: nonces.redis.url must not carry credentials",
                          hint="give the password as nonces.redis.password: env:VAR or file:PATH")
    secret = _source(raw.get("secret"), what=f"{where}: nonces.secret", base=base)
    if redis and secret is None:
        raise ConfigError(f"{where}: nonces.redis needs nonces.secret",
                          hint="replicas that share used nonces must also share the secret that makes nonces "
                               "genuine, or each refuses the others' nonces")
    if secret is not None and not redis:
        raise ConfigError(f"{where}: nonces.secret needs nonces.redis",
                          hint="a shared secret lets every replica accept a nonce, so they must also share the "
                               "record of used ones, or a nonce used at one replica is accepted again at another; "
                               "a single replica needs neither (its workers share a random secret)")
    memory = raw.get("memory_mib", 64)
    if type(memory) is not int or memory < 1:
        raise ConfigError(f"{where}: nonces.memory_mib must be a positive whole number of MiB, not {memory!r}")
    return NonceSettings(secret, redis.get("url"),
                         _source(redis.get("password"), what=f"{where}: nonces.redis.password", base=base),
                         _resolve(redis["ca"], base) if redis.get("ca") else None, memory)


def load_config(path: str | Path) -> BrokerConfig:
    """Read and check a broker configuration file, policies included."""
    path = Path(path)
    raw = read_yaml(path, what="broker configuration")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"broker configuration {path} must be a YAML mapping")
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ConfigError(f"broker configuration {path}: unknown field(s) {', '.join(unknown)}",
                          hint="allowed: " + ", ".join(sorted(_TOP)))
    base = path.resolve().parent
    where = f"broker configuration {path}"

    tls = raw.get("tls") or {}
    if not tls.get("certificate") or not tls.get("private_key"):
        raise ConfigError(f"{where}: tls.certificate and tls.private_key are required (the broker only speaks HTTPS)",
                          hint="'ppml broker init DIR' writes a broker folder with its own TLS CA and certificate")
    tls = _paths(tls, base)
    for name in ("certificate", "private_key", "client_ca"):
        if tls.get(name) and not Path(tls[name]).is_file():
            raise NotFoundError(f"{where}: tls.{name} file {tls[name]} does not exist")

    kms = raw.get("kms") or []
    if not isinstance(kms, list) or not kms or not all(isinstance(k, Mapping) and k.get("backend") for k in kms):
        raise ConfigError(f"{where}: 'kms' must list at least one backend, e.g. [{{backend: local, keystore: ...}}]")
    KeySettings.from_backend_entries(kms, where=where)  # unknown backends and settings fail here, not at start
    verifiers = raw.get("verifiers") or {}
    if not isinstance(verifiers, Mapping) or not verifiers:
        raise ConfigError(f"{where}: 'verifiers' must name the evidence types to accept, e.g. {{sgx: {{}}}}")
    verifiers = _verifiers(verifiers, where=where, base=base)
    policy_paths = raw.get("policies") or []
    if not policy_paths:
        raise ConfigError(f"{where}: 'policies' must name policy files or folders; without them no key is released")
    policies = tuple(load_policies([_resolve(p, base) for p in policy_paths]))
    if not policies:
        raise ConfigError(f"{where}: no policy files found in {', '.join(map(str, policy_paths))}")
    if not raw.get("audit_log"):
        raise ConfigError(f"{where}: 'audit_log' is required: every release decision is recorded")

    if not raw.get("audit_key"):
        raise ConfigError(f"{where}: 'audit_key' is required: the audit log's entries are signed with it",
                          hint="make one with 'ppml broker audit new-key --config FILE --key-name NAME' and name "
                               "its file here (e.g. audit_key: audit/audit-key.json)")
    limits_raw = dict(raw.get("limits") or {})
    for name in _DURATIONS:
        if name in limits_raw:
            limits_raw[name] = parse_duration(limits_raw[name], what=f"{where}: limits.{name}")
    limits = _settings(Limits, limits_raw, where=f"{where}: limits")
    heads = dict(raw.get("audit_heads") or {})
    unknown = sorted(set(heads) - {"sink", "interval"})
    if unknown or (heads and not isinstance(heads.get("sink"), str)):
        raise ConfigError(f"{where}: audit_heads takes sink (file:PATH or an Azure path) and interval",
                          hint=f"unknown: {', '.join(unknown)}" if unknown else None)
    sink = heads.get("sink")
    if sink and sink.startswith("file:"):
        sink = "file:" + _resolve(sink[len("file:"):], base)
    workers = raw.get("workers", 1)
    if type(workers) is not int or not 1 <= workers <= 64:
        raise ConfigError(f"{where}: workers must be a whole number from 1 to 64, not {workers!r}",
                          hint="one per core is usually right")

    at = raw.get("verification_time")
    if at is not None:
        at = at if isinstance(at, datetime) else datetime.fromisoformat(str(at).replace("Z", "+00:00"))
        at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    listen = raw.get("listen") or {}
    return BrokerConfig(
        source=str(path),
        host=str(listen.get("host", "127.0.0.1")),
        port=int(listen.get("port", 8443)),
        certificate=tls["certificate"],
        private_key=tls["private_key"],
        client_ca=tls.get("client_ca"),
        kms=tuple(_paths(k, base) for k in kms),
        verifiers=verifiers,
        policies=policies,
        audit_log=_resolve(raw["audit_log"], base),
        audit_key=_resolve(raw["audit_key"], base),
        heads_sink=sink,
        heads_interval=parse_duration(heads.get("interval", 10), what=f"{where}: audit_heads.interval") or 1,
        replica=str(raw.get("replica") or socket.gethostname())[:128],
        workers=workers,
        nonces=_nonce_settings(raw.get("nonces") or {}, where=where, base=base),
        limits=limits,
        key_cache=parse_duration(raw.get("key_cache", 300), what=f"{where}: key_cache"),
        verification_time=at,
    )
