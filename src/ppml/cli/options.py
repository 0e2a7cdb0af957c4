"""Option groups that several commands share, each defined once.

A group is a decorator: it adds the group's options to a command's signature (under their own heading in
``--help``) and passes the command one value built from them, e.g. ``keys: KeySettings``. Commands list
only their own options.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ppml.keys.settings import KeySettings

__all__ = ["key_options", "key_arguments", "kubernetes_options", "KubernetesTarget", "verifier_options", "VerifierChoice", "KeyNameOpt", "KeystoreOpt", "VaultOpt", "ClientIdOpt",
           "passphrase_prompt"]

KeyNameOpt = Annotated[str, typer.Option("--key-name", metavar="NAME", help="Primary key name.")]


def _option_group(param: str, options: dict[str, Any], build: Callable[..., Any]):
    """A decorator adding ``options`` (name -> ``Annotated`` type with a default) to a command and passing
    ``build(**their values)`` as the command's ``param`` argument."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)  # __signature__ is taken as it is: no strings
        own = [p for p in signature.parameters.values() if p.name != param]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
                 for name, (annotation, default) in options.items()]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in options}
            return command(*args, **{param: build(**values)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])
        return wrapper

    return decorate


# -- keys -----------------------------------------------------------------------------------------------

_KEYS = "Keys"
_KEY_OPTIONS: dict[str, Any] = {
    "kms": (Annotated[Optional[str], typer.Option(
        "--kms", metavar="NAME", envvar="PPML_KMS", rich_help_panel=_KEYS,
        help="Primary KMS: local (key store, default), azure (Key Vault) or pkcs11 (HSM).")], None),
    "keystore": (Annotated[Optional[Path], typer.Option(
        "--keystore", metavar="FILE", envvar="PPML_KEYSTORE", rich_help_panel=_KEYS,
        help="Key store [default: ~/.config/ppml/keystore.json].")], None),
    "passphrase_file": (Annotated[Optional[str], typer.Option(
        "--passphrase-file", metavar="FILE", rich_help_panel=_KEYS,
        help="Key store passphrase file ('-': stdin) [default: $PPML_KEYSTORE_PASSWORD or a prompt].")], None),
    "vault": (Annotated[Optional[str], typer.Option(
        "--vault", metavar="NAME|URL", envvar="PPML_AZURE_VAULT", rich_help_panel=_KEYS,
        help="Azure Key Vault name (kv1) or URL.")], None),
    "client_id": (Annotated[Optional[str], typer.Option(
        "--client-id", metavar="ID", envvar="AZURE_CLIENT_ID", rich_help_panel=_KEYS,
        help="Managed or workload identity that reaches Key Vault.")], None),
    "token": (Annotated[Optional[str], typer.Option(
        "--token", metavar="LABEL", envvar="PPML_PKCS11_TOKEN", rich_help_panel=_KEYS,
        help="HSM token, for --kms pkcs11 (PIN: $PPML_PKCS11_PIN).")], None),
    "bigdl_kms": (Annotated[Optional[str], typer.Option(
        "--bigdl-kms", metavar="TYPE", rich_help_panel=_KEYS,
        help="BigDL key type: plaintext, SimpleKeyManagementService or AzureKeyManagementService.")], None),
    "bigdl_key": (Annotated[Optional[str], typer.Option(
        "--bigdl-key", metavar="SOURCE", rich_help_panel=_KEYS,
        help="BigDL primary key: env:VAR or file:PATH for plaintext; else the primary-key file.")], None),
    "insecure_simple": (Annotated[bool, typer.Option(
        "--insecure-simple-kms", rich_help_panel=_KEYS,
        help="Accept SimpleKeyManagementService keys, which give NO confidentiality.")], False),
}


def _key_settings(*, kms, keystore, passphrase_file, vault, client_id, token, bigdl_kms, bigdl_key,
                  insecure_simple) -> KeySettings:
    passphrase = None
    if passphrase_file is not None:
        passphrase = "-" if passphrase_file == "-" else f"file:{passphrase_file}"
    return KeySettings(kms=kms or "local", keystore=str(keystore) if keystore else None, passphrase=passphrase,
                       azure_vault=vault, azure_client_id=client_id, pkcs11_token=token, bigdl_kms=bigdl_kms,
                       bigdl_primary_key=bigdl_key, insecure_allow_simple_kms=insecure_simple)


#: Adds the key options to a command, which receives them as ``keys: KeySettings``.
key_options = _option_group("keys", _KEY_OPTIONS, _key_settings)


def key_arguments(keys: KeySettings) -> list[str]:
    """The key options that rebuild ``keys`` in another ppml process (a Spark driver in a pod)."""
    from ppml.errors import UsageError

    if keys.passphrase and not keys.passphrase.startswith("file:"):
        raise UsageError("a passphrase from standard input cannot reach a driver on the cluster",
                         hint="give --passphrase-file PATH (a path inside the pod), or set "
                              "PPML_KEYSTORE_PASSWORD_SOURCE in the deployment's pods")
    flags = {"kms": None if keys.kms == "local" else keys.kms, "keystore": keys.keystore,
             "passphrase-file": keys.passphrase[len("file:"):] if keys.passphrase else None,
             "vault": keys.azure_vault, "client-id": keys.azure_client_id, "token": keys.pkcs11_token,
             "bigdl-kms": keys.bigdl_kms, "bigdl-key": keys.bigdl_primary_key}
    arguments = [item for name, value in flags.items() if value for item in (f"--{name}", str(value))]
    return arguments + (["--insecure-simple-kms"] if keys.insecure_allow_simple_kms else [])


# -- Kubernetes targets ----------------------------------------------------------------------------------

_K8S = "Kubernetes"
_KUBERNETES_OPTIONS: dict[str, Any] = {
    "deployment": (Annotated[Optional[Path], typer.Option(
        "--deployment", metavar="DIR", envvar="PPML_DEPLOYMENT", rich_help_panel=_K8S,
        help="Folder written by 'ppml deploy render' (for k8s:// masters).")], None),
    "k8s_ca_cert": (Annotated[Optional[Path], typer.Option(
        "--k8s-ca-cert", metavar="FILE", rich_help_panel=_K8S,
        help="CA of the API server [default: from the kubeconfig].")], None),
    "k8s_token_file": (Annotated[Optional[Path], typer.Option(
        "--k8s-token-file", metavar="FILE", rich_help_panel=_K8S,
        help="Bearer token file (0600) for the API server [default: the kubeconfig].")], None),
    "dry_run": (Annotated[bool, typer.Option(
        "--dry-run", rich_help_panel=_K8S,
        help="Print the spark-submit command and every object it would create; run nothing.")], False),
}


class KubernetesTarget:
    """The Kubernetes options as given: the rendered deployment, API credentials, dry run."""

    def __init__(self, *, deployment, k8s_ca_cert, k8s_token_file, dry_run) -> None:
        self.deployment = deployment
        self.k8s_ca_cert = str(k8s_ca_cert) if k8s_ca_cert else None
        self.k8s_token_file = str(k8s_token_file) if k8s_token_file else None
        self.dry_run = dry_run

    def loaded(self):
        """``(folder, deployment.json)`` of ``--deployment``, or ``None``."""
        if self.deployment is None:
            return None
        from ppml.deploy.render import load_deployment

        return load_deployment(self.deployment)


#: Adds the Kubernetes options to a command, which receives them as ``kube: KubernetesTarget``.
kubernetes_options = _option_group("kube", _KUBERNETES_OPTIONS, KubernetesTarget)
#: Single key options, for commands that take only one of them.
KeystoreOpt = _KEY_OPTIONS["keystore"][0]
VaultOpt = _KEY_OPTIONS["vault"][0]
ClientIdOpt = _KEY_OPTIONS["client_id"][0]


def passphrase_prompt(*, confirm: bool = False) -> Callable[[], str] | None:
    """Asks for the key store passphrase on the terminal (``None`` when there is no terminal to ask on)."""
    import sys

    if not sys.stdin.isatty():
        return None
    return lambda: typer.prompt("Key store passphrase", hide_input=True, confirmation_prompt=confirm, err=True)


# -- attestation verifiers ----------------------------------------------------------------------------

_VERIFY = "Verification"
_VERIFIER_OPTIONS: dict[str, Any] = {
    "collateral": (Annotated[Optional[Path], typer.Option(
        "--collateral", metavar="FILE", rich_help_panel=_VERIFY,
        help="sgx/tdx: collateral JSON (Intel PCS/PCCS), if the evidence has none.")], None),
    "jwks": (Annotated[Optional[Path], typer.Option(
        "--jwks", metavar="FILE", rich_help_panel=_VERIFY,
        help="maa: the provider's signing keys (JWKS from https://PROVIDER/certs).")], None),
    "issuer": (Annotated[Optional[list[str]], typer.Option(
        "--issuer", metavar="URL", rich_help_panel=_VERIFY, help="maa: an accepted issuer (repeatable).")], None),
    "min_rsa_bits": (Annotated[Optional[int], typer.Option(
        "--min-rsa-bits", metavar="BITS", rich_help_panel=_VERIFY,
        help="maa: smallest RSA signing key [default: 2048].")], None),
    "ca": (Annotated[Optional[list[Path]], typer.Option(
        "--ca", metavar="FILE", rich_help_panel=_VERIFY,
        help="tpm: a CA (PEM) trusted to issue attestation keys (repeatable).")], None),
    "at": (Annotated[Optional[str], typer.Option(
        "--at", metavar="TIME", rich_help_panel=_VERIFY,
        help="Verify as of this ISO 8601 time, e.g. 2025-07-15T00:00:00Z [default: now].")], None),
}
# Which options belong to which evidence type, so a misplaced option is an error instead of being ignored.
_OPTION_TYPES = {"collateral": ("sgx", "tdx"), "jwks": ("maa",), "issuer": ("maa",), "min_rsa_bits": ("maa",),
                 "ca": ("tpm",)}


class VerifierChoice:
    """The verifier options as given: :meth:`settings` for an evidence type, and the time to verify at."""

    def __init__(self, **given: Any) -> None:
        self.at = given.pop("at")
        self._given = given

    def settings(self, evidence_type: str) -> dict[str, Any]:
        """Verifier settings for ``evidence_type``, refusing options that do not fit it."""
        from ppml.errors import UsageError

        for name, value in self._given.items():
            if value not in (None, []) and evidence_type not in _OPTION_TYPES[name]:
                option = "--" + name.replace("_", "-")
                raise UsageError(f"{option} is for --type {' or '.join(_OPTION_TYPES[name])}, not --type "
                                 f"{evidence_type}")
        given = self._given
        settings: dict[str, Any] = {}
        if evidence_type in ("sgx", "tdx") and given["collateral"] is not None:
            settings["collateral"] = given["collateral"]
        elif evidence_type == "maa":
            if given["jwks"] is None or not given["issuer"]:
                raise UsageError("--type maa needs --jwks FILE and at least one --issuer URL",
                                 hint="download the JWKS from https://<provider>/certs; the issuer is https://<provider>")
            settings.update(jwks=given["jwks"], issuers=given["issuer"])
            if given["min_rsa_bits"] is not None:
                settings["min_rsa_bits"] = given["min_rsa_bits"]
        elif evidence_type == "tpm":
            if not given["ca"]:
                raise UsageError("--type tpm needs --ca FILE: the CA that issued the attestation key's certificate")
            settings["ca_certificates"] = list(given["ca"])
        return settings

    def time(self):
        """``--at`` as a timezone-aware time (a time without a zone is UTC), or now."""
        from datetime import datetime, timezone

        from ppml.errors import UsageError

        if self.at is None:
            return datetime.now(timezone.utc)
        try:
            at = datetime.fromisoformat(self.at.strip())
        except ValueError:
            raise UsageError(f"--at {self.at!r} is not an ISO 8601 time",
                             hint="e.g. --at 2025-07-15T00:00:00Z") from None
        return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


#: Adds the verifier options to a command, which receives them as ``verification: VerifierChoice``.
verifier_options = _option_group("verification", _VERIFIER_OPTIONS, VerifierChoice)
