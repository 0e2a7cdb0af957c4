"""Release policies: which verified evidence earns which keys.

A policy file (YAML) governs a group of primary keys and lists the evidence it accepts. Evidence must
satisfy every requirement of at least one ``allow`` rule of its own type; a type no rule names is
refused, so simulated evidence is accepted only where a policy says ``type: simulated``::

    name: tpch-analytics
    keys: ["pkcs11:hsm-token/tpch", "local:tpch*"]     # "<kms>:<key>" patterns (fnmatch)
    release_lifetime: 10m                               # how long a caller may keep a released key
    allow:
      - type: sgx
        mrenclave: [3f1e..., 9ab0...]                   # a value or a list of accepted values
        mrsigner: 83d7...
        isv_prod_id: 1
        min_isv_svn: 3
        tcb_status: [UpToDate, SWHardeningNeeded]       # default: [UpToDate]
      - type: tdx
        mrtd: ...
        rtmr1: ...
      - type: maa
        issuer: https://myattest.weu.attest.azure.net
        claims: {x-ms-attestation-type: sevsnpvm, x-ms-compliance-status: azure-compliant-cvm}
      - type: tpm
        pcrs: {sha256: {0: "a1b2...", 7: "c3d4..."}}
      - type: simulated                                 # development only: proves nothing
        claims: {app: tpch}

Debug enclaves and TDs are refused unless a rule says ``allow_debug: true``. Unknown fields are errors,
so a misspelt requirement never silently allows everything.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppml.attest.evidence import VerifiedEvidence
from ppml.errors import ConfigError, NotFoundError

__all__ = ["Policy", "Rule", "Decision", "load_policy", "load_policies", "parse_duration", "read_yaml"]

DEFAULT_LIFETIME = 15 * 60
_TCB_DEFAULT = ("UpToDate",)
_HEX_FIELDS = {
    "sgx": ("mrenclave", "mrsigner"),
    "tdx": ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam", "mrconfigid", "mrowner"),
    "maa": (),
    "tpm": (),
    "simulated": (),
}
_COMMON_FIELDS = {"type", "claims", "allow_debug"}
_TYPE_FIELDS = {
    "sgx": {*_HEX_FIELDS["sgx"], "isv_prod_id", "min_isv_svn", "tcb_status"},
    "tdx": {*_HEX_FIELDS["tdx"], "tcb_status"},
    "maa": {"issuer"},
    "tpm": {"pcrs"},
    "simulated": set(),
}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


def parse_duration(value: object, *, what: str) -> int:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"2h"`` or ``"1d"``."""
    match = _DURATION.match(str(value))
    if not match or isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration like 90s, 10m, 2h or 1d, not {value!r}")
    return int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _one_of(value: object) -> tuple[object, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _norm(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


@dataclass(frozen=True)
class Decision:
    """The outcome of checking evidence against a policy: allowed or not, and why."""

    allowed: bool
    policy: str
    reasons: tuple[str, ...]
    lifetime: int = 0

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {"decision": "allow" if self.allowed else "deny", "policy": self.policy,
                "reasons": list(self.reasons), **({"release_lifetime": self.lifetime} if self.allowed else {})}


@dataclass(frozen=True)
class Rule:
    """One accepted kind of evidence: its type and the claims it requires."""

    type: str
    requirements: Mapping[str, Any]

    def failures(self, evidence: VerifiedEvidence) -> list[str]:
        """Every requirement ``evidence`` does not meet (empty when it meets them all)."""
        claims, req, found = evidence.claims, self.requirements, []
        if claims.get("debug") and not req.get("allow_debug", False):
            found.append(f"{evidence.type} evidence comes from a debug {'enclave' if evidence.type == 'sgx' else 'TEE'}, "
                         "whose memory its host can read (allow_debug is not set)")
        for name in _HEX_FIELDS.get(self.type, ()):
            if name in req:
                self._expect(found, name, claims.get(name), req[name])
        if "isv_prod_id" in req:
            self._expect(found, "isv_prod_id", claims.get("isv_prod_id"), req["isv_prod_id"])
        if "min_isv_svn" in req and not (isinstance(claims.get("isv_svn"), int)
                                         and claims["isv_svn"] >= int(req["min_isv_svn"])):
            found.append(f"isv_svn {claims.get('isv_svn')} is below the minimum {req['min_isv_svn']}")
        if self.type in ("sgx", "tdx"):
            accepted = _one_of(req.get("tcb_status", _TCB_DEFAULT))
            if claims.get("tcb_status") not in accepted:
                found.append(f"TCB status {claims.get('tcb_status')} is not accepted (accepted: {', '.join(map(str, accepted))})")
        if "issuer" in req:
            self._expect(found, "issuer", claims.get("issuer"), req["issuer"])
        for bank, values in (req.get("pcrs") or {}).items():
            measured = (claims.get("pcrs") or {}).get(bank, {})
            for index, expected in values.items():
                self._expect(found, f"PCR {bank}:{index}", measured.get(str(index)), expected)
        for name, expected in (req.get("claims") or {}).items():
            self._expect(found, f"claim {name}", claims.get(name), expected)
        return found

    @staticmethod
    def _expect(found: list[str], name: str, actual: object, expected: object) -> None:
        accepted = _one_of(expected)
        if _norm(actual) not in {_norm(v) for v in accepted}:
            shown = "missing" if actual is None else repr(actual)
            found.append(f"{name} is {shown}, expected {'one of ' if len(accepted) > 1 else ''}"
                         f"{', '.join(repr(v) for v in accepted)}")


@dataclass(frozen=True)
class Policy:
    """A named release policy for a group of keys (see the module docstring for the file format)."""

    name: str
    keys: tuple[str, ...]
    rules: tuple[Rule, ...]
    lifetime: int = DEFAULT_LIFETIME
    source: str = field(default="", compare=False)

    def governs(self, key_reference: str) -> bool:
        """Whether this policy governs the key ``<kms>:<key>``."""
        return any(fnmatch.fnmatchcase(key_reference, pattern) for pattern in self.keys)

    def evaluate(self, evidence: VerifiedEvidence) -> Decision:
        """Allow when one rule of the evidence's type is fully met; otherwise say why each fell short."""
        rules = [r for r in self.rules if r.type == evidence.type]
        if not rules:
            accepted = sorted({r.type for r in self.rules})
            return Decision(False, self.name, (f"policy {self.name} does not accept {evidence.type} evidence "
                                               f"(it accepts: {', '.join(accepted)})",))
        reasons: list[str] = []
        for number, rule in enumerate(rules, 1):
            failures = rule.failures(evidence)
            if not failures:
                return Decision(True, self.name, (f"{evidence.type} rule {number} of policy {self.name} met",),
                                self.lifetime)
            prefix = f"{evidence.type} rule {number}: " if len(rules) > 1 else ""
            reasons.extend(prefix + failure for failure in failures)
        return Decision(False, self.name, tuple(reasons))


def _rule(raw: object, *, where: str) -> Rule:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
        raise ConfigError(f"{where}: each allow rule must be a mapping with a 'type'")
    kind = raw["type"]
    if kind not in _TYPE_FIELDS:
        raise ConfigError(f"{where}: unknown evidence type {kind!r}",
                          hint="choose one of: " + ", ".join(sorted(_TYPE_FIELDS)))
    unknown = sorted(set(raw) - _COMMON_FIELDS - _TYPE_FIELDS[kind])
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) for {kind} rules: {', '.join(unknown)}",
                          hint="allowed: " + ", ".join(sorted((_COMMON_FIELDS | _TYPE_FIELDS[kind]) - {'type'})))
    if not isinstance(raw.get("claims", {}), Mapping):
        raise ConfigError(f"{where}: 'claims' must map claim names to values")
    for name in ("isv_prod_id", "min_isv_svn"):
        if name in raw and (not isinstance(raw[name], int) or isinstance(raw[name], bool) or raw[name] < 0):
            raise ConfigError(f"{where}: {name} must be a non-negative integer, not {raw[name]!r}")
    pcrs = raw.get("pcrs", {})
    if not isinstance(pcrs, Mapping) or not all(isinstance(v, Mapping) for v in pcrs.values()):
        raise ConfigError(f"{where}: 'pcrs' must map a bank (sha256) to {{index: hex value}}")
    if kind != "simulated" and not set(raw) - {"type", "allow_debug", "tcb_status", "issuer"}:
        raise ConfigError(f"{where}: a {kind} rule must require at least one measurement or claim",
                          hint="a rule without requirements would release keys to any code in any such TEE")
    requirements = {k: v for k, v in raw.items() if k != "type"}
    return Rule(kind, requirements)


def _policy(raw: object, *, source: str) -> Policy:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"policy {source} must be a YAML mapping")
    unknown = sorted(set(raw) - {"name", "keys", "allow", "release_lifetime", "description"})
    if unknown:
        raise ConfigError(f"policy {source}: unknown field(s) {', '.join(unknown)}",
                          hint="allowed: name, keys, allow, release_lifetime, description")
    name = raw.get("name") or Path(source).stem
    keys = raw.get("keys")
    if not isinstance(keys, Sequence) or isinstance(keys, str) or not keys:
        raise ConfigError(f"policy {source}: 'keys' must list the keys it governs, e.g. [\"local:tpch\"]")
    allow = raw.get("allow")
    if not isinstance(allow, Sequence) or isinstance(allow, str) or not allow:
        raise ConfigError(f"policy {source}: 'allow' must list at least one rule")
    rules = tuple(_rule(r, where=f"policy {source}, rule {i}") for i, r in enumerate(allow, 1))
    lifetime = parse_duration(raw.get("release_lifetime", DEFAULT_LIFETIME), what=f"policy {source}: release_lifetime")
    if lifetime <= 0:
        raise ConfigError(f"policy {source}: release_lifetime must be positive")
    return Policy(str(name), tuple(str(k) for k in keys), rules, lifetime, source)


def read_yaml(path: str | Path, *, what: str) -> Any:
    """The YAML document in ``path`` (safe loader); ``what`` names the file in errors."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate one policy file."""
    return _policy(read_yaml(path, what="policy file"), source=str(path))


def load_policies(paths: Sequence[str | Path]) -> list[Policy]:
    """Policies from files and folders (every ``*.yaml``/``*.yml`` inside); names must be unique."""
    files: list[Path] = []
    for entry in map(Path, paths):
        files.extend(sorted([*entry.glob("*.yaml"), *entry.glob("*.yml")]) if entry.is_dir() else [entry])
    policies = [load_policy(f) for f in files]
    seen: dict[str, str] = {}
    for policy in policies:
        if policy.name in seen:
            raise ConfigError(f"policy name {policy.name!r} is used by both {seen[policy.name]} and {policy.source}")
        seen[policy.name] = policy.source
    return policies
