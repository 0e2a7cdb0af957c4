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
        rtmr2: ...
      - type: maa
        issuer: https://myattest.weu.attest.azure.net
        claims: {x-ms-attestation-type: sevsnpvm, x-ms-sevsnpvm-hostdata: 7397...}
      - type: tpm
        pcrs: {sha256: {0: "a1b2...", 7: "c3d4...", 11: "e5f6..."}}
        allow_without_tee: true                         # a TPM quote does not prove a TEE
      - type: simulated                                 # development only: proves nothing
        claims: {app: tpch}

A key governed by several policies is released only when every one of them allows it, so a broad policy
can never override a strict one. Key patterns match case-insensitively.

Debug enclaves and TDs are refused unless a rule says ``allow_debug: true``; SGX, TDX and MAA evidence
that does not say whether it is debuggable counts as debuggable. Unknown fields and empty values are
errors, and so is a rule that does not pin a workload (:data:`WORKLOAD_IDENTITY`): values that only name the
platform (an SGX signer without a product, a TDX firmware, a TPM's firmware PCRs, an MAA attestation type)
are the same for every tenant of that platform, so a slip never allows everything. A TPM quote proves the
boot chain of a machine whose TPM the configured CA certifies, not that the machine is a TEE, so ``tpm``
rules must say ``allow_without_tee: true``. Claims may be named by a dotted path into nested claims
(``x-ms-isolation-tee.x-ms-attestation-type``).
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

__all__ = ["Policy", "Rule", "Decision", "load_policy", "load_policies", "parse_duration", "read_yaml",
           "WORKLOAD_IDENTITY"]

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
_DEBUG_TYPES = ("sgx", "tdx", "maa")  # evidence that must say it is not debuggable
_TYPE_FIELDS = {
    "sgx": {*_HEX_FIELDS["sgx"], "isv_prod_id", "min_isv_svn", "tcb_status"},
    "tdx": {*_HEX_FIELDS["tdx"], "tcb_status"},
    "maa": {"issuer"},
    "tpm": {"pcrs", "allow_without_tee"},
    "simulated": set(),
}
_TDX_WORKLOAD = ("rtmr1", "rtmr2", "rtmr3", "mrconfigid")
_MAA_TDX_WORKLOAD = ("tdx_rtmr1", "tdx_rtmr2", "tdx_rtmr3", "tdx_mrconfigid")
# Per evidence type, the sets of requirements of which a rule must name at least one whole set: each set
# identifies a workload, where the values outside them can be shared by every tenant of a platform. For
# maa the names are claims (at the top of the token or under x-ms-isolation-tee); for tpm, PCR indexes.
WORKLOAD_IDENTITY: dict[str, tuple[tuple[str, ...], ...]] = {
    # MRENCLAVE is the enclave's code; MRSIGNER alone admits every enclave its signer ever built.
    "sgx": (("mrenclave",), ("mrsigner", "isv_prod_id")),
    # MRTD is the TD's firmware, shared by every TD that boots it; the RTMRs 1-3 (boot loader, kernel and
    # command line, the workload) and MRCONFIGID say what runs on it, and mean something only on that MRTD.
    "tdx": tuple(("mrtd", name) for name in _TDX_WORKLOAD),
    "maa": (("x-ms-sgx-mrenclave",), ("x-ms-sgx-mrsigner", "x-ms-sgx-product-id"),
            ("x-ms-sevsnpvm-launchmeasurement",), ("x-ms-sevsnpvm-hostdata",),
            *(("tdx_mrtd", name) for name in _MAA_TDX_WORKLOAD)),
    # PCRs 0-7 measure firmware, the same on every machine with it; 8-15 the boot loader, kernel and OS.
    # 16 and 23 can be reset by any program on the machine, so they prove nothing.
    "tpm": tuple((str(index),) for index in range(8, 16)),
}
_MAA_TEE_SCOPE = "x-ms-isolation-tee."
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


def parse_duration(value: object, *, what: str) -> int:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"2h"`` or ``"1d"``."""
    match = _DURATION.match(str(value))
    if not match or isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration like 90s, 10m, 2h or 1d, not {value!r}")
    return int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _one_of(value: object) -> tuple[object, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _claim(claims: Mapping[str, Any], name: str) -> object:
    """Claim ``name``, or a nested one by dotted path (``x-ms-isolation-tee.x-ms-attestation-type``)."""
    if name in claims:
        return claims[name]
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _same(actual: object, expected: object, *, fold_case: bool) -> bool:
    """Equal values of the same type (so ``True`` is not ``1``); hex and URLs compared case-insensitively."""
    if fold_case and isinstance(actual, str) and isinstance(expected, str):
        return actual.lower() == expected.lower()
    return type(actual) is type(expected) and actual == expected


@dataclass(frozen=True)
class Decision:
    """The outcome of checking evidence against a policy: allowed or not, and why.

    ``reasons`` name the values that fell short and what the policy expects (for the operator: the audit log,
    ``ppml broker policy check``); ``public_reasons`` name only which requirement fell short, for the caller,
    who must not learn the policy's expected values from a refusal.
    """

    allowed: bool
    policy: str
    reasons: tuple[str, ...]
    lifetime: int = 0
    public_reasons: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def public_reason(self) -> str:
        return "; ".join(self.public_reasons or self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {"decision": "allow" if self.allowed else "deny", "policy": self.policy,
                "reasons": list(self.reasons), **({"release_lifetime": self.lifetime} if self.allowed else {})}


@dataclass(frozen=True)
class Rule:
    """One accepted kind of evidence: its type and the claims it requires."""

    type: str
    requirements: Mapping[str, Any]

    def failures(self, evidence: VerifiedEvidence) -> list[tuple[str, str]]:
        """Every requirement ``evidence`` does not meet, as ``(reason, public reason)`` (empty when it meets all)."""
        claims, req, found = evidence.claims, self.requirements, []
        debug = claims.get("debug")
        if not req.get("allow_debug", False) and (debug is True or (debug is not False and self.type in _DEBUG_TYPES)):
            tee = "enclave" if evidence.type == "sgx" else "TEE"
            public = (f"{evidence.type} evidence comes from a debug TEE" if debug is True else
                      f"{evidence.type} evidence does not say whether the TEE is debuggable")
            found.append((f"{evidence.type} evidence comes from a debug {tee}, whose memory its host can read "
                          "(allow_debug is not set)" if debug is True else
                          f"{evidence.type} evidence does not say whether the TEE is debuggable, so it is treated as "
                          "debuggable (allow_debug is not set)", public))
        for name in _HEX_FIELDS.get(self.type, ()):
            if name in req:
                self._expect(found, name, claims.get(name), req[name], fold_case=True)
        if "isv_prod_id" in req:
            self._expect(found, "isv_prod_id", claims.get("isv_prod_id"), req["isv_prod_id"])
        svn = claims.get("isv_svn")
        if "min_isv_svn" in req and not (type(svn) is int and svn >= req["min_isv_svn"]):
            found.append((f"isv_svn {claims.get('isv_svn')} is below the minimum {req['min_isv_svn']}",
                          "isv_svn is below the policy's minimum"))
        if self.type in ("sgx", "tdx"):
            self._expect(found, "TCB status", claims.get("tcb_status"), req.get("tcb_status", list(_TCB_DEFAULT)))
        if "issuer" in req:
            self._expect(found, "issuer", str(claims.get("issuer", "")).rstrip("/") or None,
                         [str(v).rstrip("/") for v in _one_of(req["issuer"])], fold_case=True)
        for bank, values in (req.get("pcrs") or {}).items():
            measured = (claims.get("pcrs") or {}).get(bank, {})
            for index, expected in values.items():
                self._expect(found, f"PCR {bank}:{index}", measured.get(str(index)), expected, fold_case=True)
        for name, expected in (req.get("claims") or {}).items():
            self._expect(found, f"claim {name}", _claim(claims, name), expected)
        return found

    def checked(self, evidence: VerifiedEvidence) -> dict[str, Any]:
        """The evidence's values of every claim this rule requires: what a release was granted on."""
        claims, req = evidence.claims, self.requirements
        names = [n for n in (*_HEX_FIELDS.get(self.type, ()), "isv_prod_id", "issuer") if n in req]
        names += ["isv_svn"] if "min_isv_svn" in req else []
        names += ["tcb_status"] if self.type in ("sgx", "tdx") else []
        checked = {name: claims.get(name) for name in ("debug", *names) if claims.get(name) is not None}
        pcrs = {bank: {str(i): (claims.get("pcrs") or {}).get(bank, {}).get(str(i)) for i in values}
                for bank, values in (req.get("pcrs") or {}).items()}
        return {**checked, **({"pcrs": pcrs} if pcrs else {}),
                **{name: _claim(claims, name) for name in (req.get("claims") or {})}}

    @staticmethod
    def _expect(found: list[tuple[str, str]], name: str, actual: object, expected: object, *,
                fold_case: bool = False) -> None:
        accepted = _one_of(expected)
        if not any(_same(actual, value, fold_case=fold_case) for value in accepted):
            shown = "missing" if actual is None else repr(actual)
            found.append((f"{name} is {shown}, expected {'one of ' if len(accepted) > 1 else ''}"
                          f"{', '.join(repr(v) for v in accepted)}",
                          f"{name} is missing" if actual is None else f"{name} does not match"))


@dataclass(frozen=True)
class Policy:
    """A named release policy for a group of keys (see the module docstring for the file format)."""

    name: str
    keys: tuple[str, ...]
    rules: tuple[Rule, ...]
    lifetime: int = DEFAULT_LIFETIME
    source: str = field(default="", compare=False)

    def governs(self, key_reference: str) -> bool:
        """Whether this policy governs the key ``<kms>:<key>`` (case-insensitive: several KMSs ignore case)."""
        return any(fnmatch.fnmatchcase(key_reference.lower(), pattern.lower()) for pattern in self.keys)

    def evaluate(self, evidence: VerifiedEvidence) -> Decision:
        """Allow when one rule of the evidence's type is fully met; otherwise say why each fell short."""
        rules = [r for r in self.rules if r.type == evidence.type]
        if not rules:
            accepted = sorted({r.type for r in self.rules})
            refusal = f"policy {self.name} does not accept {evidence.type} evidence"
            return Decision(False, self.name, (f"{refusal} (it accepts: {', '.join(accepted)})",),
                            public_reasons=(refusal,))
        reasons: list[str] = []
        public: list[str] = []
        for number, rule in enumerate(rules, 1):
            failures = rule.failures(evidence)
            if not failures:
                return Decision(True, self.name, (f"{evidence.type} rule {number} of policy {self.name} met",),
                                self.lifetime, claims=rule.checked(evidence))
            prefix = f"{evidence.type} rule {number}: " if len(rules) > 1 else ""
            reasons.extend(prefix + full for full, _ in failures)
            public.extend(prefix + shown for _, shown in failures)
        return Decision(False, self.name, tuple(reasons), public_reasons=tuple(public))


def _check_value(value: object, *, where: str, strings: bool = False) -> None:
    """A required value: a non-empty string (or number/boolean for claims), or a non-empty list of them."""
    values = _one_of(value)
    allowed = (str,) if strings else (str, int, float, bool)
    if not values or not all(isinstance(v, allowed) and v != "" for v in values):
        kinds = "text" if strings else "text, a number or true/false"
        raise ConfigError(f"{where}: must be {kinds}, or a non-empty list of them, not {value!r}",
                          hint="an empty or missing value would match evidence that lacks the claim")


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
    claims = raw.get("claims", {})
    if not isinstance(claims, Mapping):
        raise ConfigError(f"{where}: 'claims' must map claim names to values")
    for name, value in claims.items():
        _check_value(value, where=f"{where}, claim {name}")
    for name in ("isv_prod_id", "min_isv_svn"):
        if name in raw and (type(raw[name]) is not int or raw[name] < 0):
            raise ConfigError(f"{where}: {name} must be a non-negative integer, not {raw[name]!r}")
    for flag in ("allow_debug", "allow_without_tee"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise ConfigError(f"{where}: {flag} must be true or false, not {raw[flag]!r}",
                              hint=f"write {flag}: false without quotes")
    for name in (*_HEX_FIELDS.get(kind, ()), "tcb_status", "issuer"):
        if name in raw:
            _check_value(raw[name], where=f"{where}, {name}", strings=True)
    pcrs = raw.get("pcrs", {})
    if not isinstance(pcrs, Mapping) or not all(isinstance(v, Mapping) for v in pcrs.values()):
        raise ConfigError(f"{where}: 'pcrs' must map a bank (sha256) to {{index: hex value}}")
    for bank, values in pcrs.items():
        for index, value in values.items():
            _check_value(value, where=f"{where}, PCR {bank}:{index}", strings=True)
    _require_workload(kind, raw, where=where)
    requirements = {k: v for k, v in raw.items() if k != "type"}
    return Rule(kind, requirements)


def _require_workload(kind: str, raw: Mapping[str, Any], *, where: str) -> None:
    """Refuse a rule that pins no whole set of :data:`WORKLOAD_IDENTITY`, and a tpm rule that does not
    accept, in so many words, that TPM evidence proves no TEE."""
    sets = WORKLOAD_IDENTITY.get(kind)
    if sets is None:
        return
    if kind == "maa":
        pinned = {name.removeprefix(_MAA_TEE_SCOPE) for name in raw.get("claims") or {}}
    elif kind == "tpm":
        pinned = {str(index) for values in (raw.get("pcrs") or {}).values() for index in values}
    else:
        pinned = {name for name in raw if raw[name] is not None}
    if not any(pinned.issuperset(names) for names in sets):
        shown = " or ".join(" with ".join(names) for names in sets)
        what = {"maa": "claims", "tpm": "a PCR among"}.get(kind, "")
        raise ConfigError(f"{where}: a {kind} rule must pin the workload: {what + ' ' if what else ''}{shown}",
                          hint="values that name only the platform are the same for every tenant on it, so the "
                               "rule would release keys to any code there (docs/broker.md, 'What each "
                               "requirement proves')")
    if kind == "tpm" and raw.get("allow_without_tee") is not True:
        raise ConfigError(f"{where}: a tpm rule must say allow_without_tee: true",
                          hint="a TPM quote proves what booted on a machine whose TPM the configured CA certifies, "
                               "not that the machine is a TEE (a cloud's vTPM CA certifies ordinary VMs too); "
                               "for confidential VMs use maa tokens, which bind the vTPM to the SEV-SNP/TDX report")


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
