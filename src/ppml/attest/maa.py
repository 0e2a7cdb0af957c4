"""Microsoft Azure Attestation (MAA) tokens: JWTs that an attestation provider signs after checking a TEE.

Evidence
--------
``{"type": "maa", "token": "<JWT>"}``: the token MAA returned for an SGX enclave, an SEV-SNP or TDX
confidential VM, or a TPM. The verifier trusts only the signing keys it is configured with (the issuer's
JWKS, from ``https://<provider>/certs``) and never fetches keys named by the token (``jku``, ``x5u``): a
token must not choose who vouches for it.

Report data
-----------
``x-ms-sgx-ehd`` (base64url enclave-held data, whose SHA-256 the enclave's quote carried) if present, else
the runtime-data claim ``x-ms-runtime.ppml-binding`` (hex), else none.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ppml.attest.evidence import Evidence, EvidenceVerifier, VerifiedEvidence
from ppml.errors import AttestationError, ConfigError

__all__ = ["MaaVerifier", "ALGORITHMS"]

# Asymmetric algorithms only: HS* would let anyone holding the (public) verification key forge tokens.
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256"})
_EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1"}
ALGORITHMS = tuple(sorted(_RSA_ALGORITHMS | set(_EC_ALGORITHMS)))
_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_DEBUG_CLAIMS = ("x-ms-sgx-is-debuggable", "x-ms-sevsnpvm-is-debuggable", "tdx_td_attributes_debug")


def _debuggable(claims: Mapping[str, Any]) -> bool | None:
    """Whether the token says its TEE is debuggable: any known flag, at the top or under
    ``x-ms-isolation-tee`` (Azure confidential VMs); ``None`` when it says nothing."""
    scopes = [claims, claims.get("x-ms-isolation-tee")]
    found = [scope[name] for scope in scopes if isinstance(scope, Mapping) for name in _DEBUG_CLAIMS if name in scope]
    for value in found:
        if not isinstance(value, bool):
            raise AttestationError(f"the MAA token's debuggable claim is {value!r}, not true or false: refuse it")
    return any(found) if found else None


def _load_jwks(source: str | Path | Mapping[str, Any]) -> dict[str, _PublicKey]:
    """``{kid: public key}`` from a JWKS file or object; keys in ``x5c`` certificates or as ``n``/``e``, EC."""
    if isinstance(source, (str, Path)):
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a JSON document"
            raise ConfigError(f"cannot read the MAA JWKS file {source}: {reason}") from None
    keys = source.get("keys") if isinstance(source, Mapping) else None
    if not isinstance(keys, list) or not keys:
        raise ConfigError("the MAA jwks has no 'keys' list", hint="pass the JSON served at https://<provider>/certs")
    loaded: dict[str, _PublicKey] = {}
    for index, jwk in enumerate(keys):
        kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
        if not isinstance(kid, str) or not kid:
            raise ConfigError(f"MAA jwks key #{index} has no 'kid'; MAA tokens name their signing key by kid")
        try:
            if jwk.get("x5c"):
                der = base64.b64decode(jwk["x5c"][0], validate=True)
                key = x509.load_der_x509_certificate(der).public_key()
            elif jwk.get("kty") == "RSA":
                key = RSAAlgorithm.from_jwk(dict(jwk))
            elif jwk.get("kty") == "EC":
                key = ECAlgorithm.from_jwk(dict(jwk))
            else:
                raise ValueError(f"key type {jwk.get('kty')!r} is not an asymmetric signing key (RSA or EC)")
        except (ValueError, TypeError, KeyError, IndexError, binascii.Error, jwt.InvalidKeyError) as exc:
            raise ConfigError(f"MAA jwks key kid={kid!r} cannot be loaded: {exc}") from None
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise ConfigError(f"MAA jwks key kid={kid!r} is not an RSA or EC public key (a private key?): "
                              "configure the issuer's public keys only")
        if jwk.get("x5c") and jwk.get("n") and (
                not isinstance(key, rsa.RSAPublicKey)
                or RSAAlgorithm.from_jwk({**jwk, "x5c": None}).public_numbers() != key.public_numbers()):
            raise ConfigError(f"MAA jwks key kid={kid!r}: its x5c certificate and its n/e differ; fetch the jwks again")
        loaded[kid] = key
    return loaded


class MaaVerifier(EvidenceVerifier):
    """Verifies MAA tokens: signature by a configured key, algorithm, expiry and issuer.

    Parameters
    ----------
    jwks
        The issuer's signing keys: a path to a JWKS JSON file, or the JWKS object. Each key has a ``kid``
        and either an ``x5c`` certificate chain (the signing certificate first) or RSA ``n``/``e`` or EC
        ``crv``/``x``/``y``.
    issuers
        Accepted ``iss`` values (attestation provider URLs, e.g. ``https://shareduks.uks.attest.azure.net``);
        at least one. A trailing ``/`` is ignored.
    min_rsa_bits
        Smallest RSA signing key accepted (default 2048; at least 1024).
    leeway
        Clock skew in seconds allowed on ``exp`` and ``nbf`` (default 60).

    Notes
    -----
    Claims: every token claim under its own name, plus ``issuer``, ``attestation_type`` (from
    ``x-ms-attestation-type``), ``debug`` (``x-ms-sgx-is-debuggable``, ``x-ms-sevsnpvm-is-debuggable`` or
    ``tdx_td_attributes_debug``, at the top or under ``x-ms-isolation-tee``; ``None`` when the token has
    none, which policies treat as debuggable) and ``report_data`` (hex or ``None``).
    """

    type = "maa"

    def __init__(self, jwks: str | Path | Mapping[str, Any] | None = None, issuers: Sequence[str] | None = None,
                 min_rsa_bits: int = 2048, leeway: float | timedelta = 60) -> None:
        if jwks is None:
            raise ConfigError("the maa verifier needs jwks: the attestation provider's signing keys",
                              hint="download https://<provider>/certs and pass its path as jwks")
        if isinstance(issuers, str):
            issuers = [issuers]
        if not issuers or not all(isinstance(issuer, str) and issuer for issuer in issuers):
            raise ConfigError("the maa verifier needs issuers: the attestation provider URLs it accepts",
                              hint="e.g. issuers=['https://shareduks.uks.attest.azure.net']")
        if not isinstance(min_rsa_bits, int) or min_rsa_bits < 1024:
            raise ConfigError(f"min_rsa_bits={min_rsa_bits!r} is too small: use 2048 or more (1024 at the least)")
        self._keys = _load_jwks(jwks)
        self._issuers = frozenset(issuer.rstrip("/") for issuer in issuers)
        self._min_rsa_bits = min_rsa_bits
        self._leeway = leeway.total_seconds() if isinstance(leeway, timedelta) else float(leeway)

    def _verify(self, evidence: Evidence, *, at: datetime) -> VerifiedEvidence:
        token = evidence.payload.get("token")
        if not isinstance(token, str) or not token.strip():
            raise AttestationError("maa evidence lacks the field 'token' (the JWT MAA returned)")
        token = token.strip()
        key, alg, kid = self._signing_key(token)
        try:
            # Times are checked below against `at`, not the wall clock, so stored evidence can be re-verified.
            claims = jwt.decode(token, key, algorithms=[alg], options={
                "verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False,
                "verify_iss": False, "verify_sub": False, "verify_jti": False})
        except jwt.InvalidSignatureError:
            raise AttestationError(f"the MAA token's signature does not verify with key kid={kid!r}: "
                                   "the token was altered or not signed by this issuer; refuse it") from None
        except jwt.PyJWTError as exc:
            raise AttestationError(f"the MAA token cannot be decoded ({exc}): send the token exactly as "
                                   "MAA returned it") from None
        self._check_times(claims, at.timestamp())
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer.rstrip("/") not in self._issuers:
            raise AttestationError(f"the MAA token's issuer {issuer!r} is not an accepted issuer "
                                   f"({', '.join(sorted(self._issuers))}): add it to issuers only if you trust it")
        return self._verified(claims, issuer)

    def _signing_key(self, token: str) -> tuple[_PublicKey, str, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AttestationError(f"the MAA evidence token is not a JWT ({exc}): "
                                   "send the token MAA returned") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AttestationError("the MAA token is unsigned (alg none): refuse it; MAA always signs its tokens")
        if alg.upper().startswith("HS"):
            raise AttestationError(f"the MAA token uses the symmetric algorithm {alg}, which anyone with the "
                                   "public key could forge: refuse it; MAA signs with RSA or ECDSA")
        if alg not in ALGORITHMS:
            raise AttestationError(f"the MAA token's algorithm {alg!r} is not accepted "
                                   f"(accepted: {', '.join(ALGORITHMS)}): refuse it")
        if not isinstance(kid, str) or kid not in self._keys:
            raise AttestationError(f"the MAA token's signing key kid={kid!r} is not in the configured jwks: "
                                   "refresh the jwks from the issuer's /certs endpoint if the issuer rotated keys")
        key = self._keys[kid]
        if isinstance(key, rsa.RSAPublicKey):
            if alg not in _RSA_ALGORITHMS:
                raise AttestationError(f"the MAA token says {alg} but key kid={kid!r} is RSA: refuse it")
            if key.key_size < self._min_rsa_bits:
                raise AttestationError(f"the MAA token is signed with a {key.key_size}-bit RSA key (kid={kid!r}), "
                                       f"below min_rsa_bits={self._min_rsa_bits}: refuse it, or lower min_rsa_bits "
                                       "(--min-rsa-bits) only to re-check old recorded tokens")
        elif _EC_ALGORITHMS.get(alg) != key.curve.name:
            raise AttestationError(f"the MAA token says {alg} but key kid={kid!r} is EC {key.curve.name}: refuse it")
        return key, alg, kid

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise AttestationError("the MAA token has no numeric 'exp' (expiry): refuse it; MAA tokens always expire")
        if now > exp + self._leeway:
            raise AttestationError(f"the MAA token expired at {_iso(exp)} (verification time {_iso(now)}): "
                                   "attest again for a fresh token, or pass --at with the time of stored evidence")
        if nbf is not None:
            if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
                raise AttestationError("the MAA token's 'nbf' is not a number: refuse it")
            if now + self._leeway < nbf:
                raise AttestationError(f"the MAA token is not valid before {_iso(nbf)} (verification time "
                                       f"{_iso(now)}): check the clocks, or pass --at with a later time")

    def _verified(self, claims: dict[str, Any], issuer: str) -> VerifiedEvidence:
        # debug is None when the token does not say: policies then treat the TEE as debuggable.
        debug = _debuggable(claims)
        report_data = _report_data(claims)
        attestation_type = claims.get("x-ms-attestation-type")
        claims.update(issuer=issuer, attestation_type=attestation_type, debug=debug,
                      report_data=None if report_data is None else report_data.hex())
        measurement = next((f" {name.removeprefix('x-ms-')}={claims[name][:16]}…" for name in (
            "x-ms-sgx-mrenclave", "x-ms-sevsnpvm-launchmeasurement") if isinstance(claims.get(name), str)), "")
        warnings = ("maa debug mode: the host can read the TEE's memory",) if debug else ()
        return VerifiedEvidence(self.type, claims, report_data, f"maa {attestation_type} iss={issuer}{measurement}",
                                warnings=warnings)


def _report_data(claims: Mapping[str, Any]) -> bytes | None:
    ehd = claims.get("x-ms-sgx-ehd")
    if ehd is not None:
        try:
            if not isinstance(ehd, str):
                raise ValueError
            return base64.b64decode(ehd + "=" * (-len(ehd) % 4), altchars=b"-_", validate=True)
        except (ValueError, binascii.Error):
            raise AttestationError("the MAA token's x-ms-sgx-ehd is not base64url: refuse it") from None
    runtime = claims.get("x-ms-runtime")
    binding = runtime.get("ppml-binding") if isinstance(runtime, Mapping) else None
    if binding is None:
        return None
    try:
        return bytes.fromhex(binding)
    except (TypeError, ValueError):
        raise AttestationError("the MAA token's x-ms-runtime.ppml-binding is not hex: refuse it") from None
