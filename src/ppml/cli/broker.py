"""``ppml broker``: run the key broker, check policies against evidence, verify the audit log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from ppml.cli._common import JsonOpt, emit_json, err
from ppml.cli.options import KeystoreOpt, VerifierChoice, verifier_options

app = typer.Typer(help="The key broker: releases data keys only to attested workloads.", no_args_is_help=True)
policy_app = typer.Typer(help="Release policies.", no_args_is_help=True)
audit_app = typer.Typer(help="The broker's hash-chained audit log.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", envvar="PPML_BROKER_CONFIG", show_envvar=True,
                                         help="Broker configuration file (YAML; see docs/broker.md).")]


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Folder for broker.yaml, tls/, policies/ and audit/.")],
    key_name: Annotated[str, typer.Option("--key-name", help="Primary key in the key store whose data keys the "
                                                            "broker releases.")] = "default",
    keystore: KeystoreOpt = None,
    passphrase_source: Annotated[str, typer.Option(
        "--passphrase-source", metavar="SOURCE", show_default=False,
        help="Where the broker reads the key store passphrase: env:VAR, file:PATH or an azure-secret: source. "
             "Default: the variable PPML_KEYSTORE_PASSWORD of the broker.")
    ] = "env:PPML_KEYSTORE_PASSWORD",
    host: Annotated[Optional[list[str]], typer.Option(
        "--host", help="Name or address clients use (repeatable) [default: localhost, 127.0.0.1, this host].")] = None,
    listen: Annotated[str, typer.Option("--listen", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8443,
    simulated: Annotated[bool, typer.Option(
        "--simulated", help="Also accept simulated evidence (development only: it proves nothing).")] = False,
) -> None:
    """Create a broker folder: TLS certificates, a configuration and a release policy to edit.

    **Examples**

    * `ppml broker init broker --key-name tpch --simulated`: a development broker on 127.0.0.1:8443
    * `ppml broker init /etc/ppml-broker --key-name tpch --listen 0.0.0.0 --host broker.internal`
    """
    from ppml.broker.scaffold import create_broker_folder
    from ppml.errors import UsageError
    from ppml.keys.local import default_keystore_path

    kind, _, rest = passphrase_source.partition(":")
    if kind not in ("env", "file", "azure-secret") or not rest:
        raise UsageError(f"--passphrase-source {passphrase_source!r} is not a source the broker can read",
                         hint="env:VAR, file:PATH or azure-secret:VAULT/NAME (the broker reads it when it starts)")
    store = (keystore or default_keystore_path()).expanduser().resolve()
    made = create_broker_folder(folder, key_name=key_name, keystore=str(store),
                                passphrase=passphrase_source, hosts=host, listen=listen, port=port,
                                simulated=simulated)
    err.print(f"Created {made.config}, TLS certificates in {made.ca_certificate.parent} and the policy {made.policy}.")
    if simulated:
        err.print("[bold red]The broker accepts SIMULATED evidence: for development only.[/]")
    err.print(f"Next: edit {made.policy}, then\n  ppml broker serve --config {made.config}\n"
              f"Clients:\n  export PPML_BROKER_URL={made.url} PPML_BROKER_CA={made.ca_certificate.resolve()}\n"
              f"  export PPML_BROKER_ATTESTER={'simulated' if simulated else 'sgx-gramine'}"
              + ("\n  export PPML_BROKER_ATTESTER_SETTINGS='{\"claims\": {\"app\": \"my-job\"}}'" if simulated else ""))


@app.command()
def serve(config: ConfigOpt) -> None:
    """Serve key releases over HTTPS until interrupted (Ctrl-C or SIGTERM: in-flight requests finish)."""
    from ppml.broker.config import load_config
    from ppml.broker.server import serve as run

    settings = load_config(config)
    logging.getLogger("ppml").setLevel(min(logging.getLogger("ppml").getEffectiveLevel(), logging.INFO))
    if "simulated" in settings.verifiers:
        err.print("[bold red]ppml: warning: SIMULATED ATTESTATION IS ENABLED in this broker: simulated evidence "
                  "proves nothing. Never use this configuration with real data.[/]")
    err.print(f"ppml: key broker on https://{settings.host}:{settings.port}; "
              f"{len(settings.policies)} policies; audit log {settings.audit_log}")
    head = run(settings)
    err.print(f"ppml: key broker stopped; audit log head {head} (keep it to detect lines cut off the end: "
              f"ppml broker audit verify {settings.audit_log} --expect-head {head})")


@policy_app.command("check")
@verifier_options
def policy_check(
    policy: Annotated[Path, typer.Argument(help="Policy file (YAML).")],
    evidence: Annotated[Path, typer.Argument(help="Evidence: a JSON evidence document, a raw quote or a JWT.")],
    verification: VerifierChoice,
    evidence_type: Annotated[Optional[str], typer.Option(
        "--type", metavar="TYPE", help="sgx, tdx, maa, tpm or simulated, for raw quotes and tokens.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", metavar="FILE", help="Take verifier settings from this broker configuration.")] = None,
) -> None:
    """Say whether POLICY releases its keys to EVIDENCE, and why (exit 0 allow, 1 deny).

    The binding of the evidence to a request's nonce is checked by the broker per request, not here.
    """
    from ppml.attest.evidence import open_verifier, verifier_class
    from ppml.attest.policy import load_policy
    from ppml.cli.attest import read_evidence
    from ppml.errors import AttestationError

    if evidence_type is not None:
        evidence_type = verifier_class(evidence_type).type  # the registered spelling, as evidence has it
    rules = load_policy(policy)
    loaded = read_evidence(evidence, evidence_type)
    if config is not None:
        from ppml.broker.config import load_config

        configured = load_config(config).verifiers
        if loaded.type not in configured:
            raise AttestationError(f"the broker configuration {config} does not accept {loaded.type} evidence")
        settings = dict(configured[loaded.type])
    else:
        settings = verification.settings(loaded.type)
    when = verification.time()
    verified = open_verifier(loaded.type, **settings).verify(loaded, at=when)
    decision = rules.evaluate(verified)
    emit_json("broker.policy.check", {**decision.to_json(), "evidence": verified.to_json(),
                                      "verified_at": when.isoformat()})
    if not decision.allowed:
        raise AttestationError(f"policy {decision.policy} denies this evidence: {decision.reason}")


@audit_app.command("verify")
def audit_verify(
    log: Annotated[Path, typer.Argument(help="Audit log (JSON lines).")],
    expect_head: Annotated[Optional[str], typer.Option("--expect-head", help="The hash the log must end with "
                                                                             "(recorded when the broker stopped).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that no entry of LOG was edited, dropped, inserted or reordered (exit 4 if one was)."""
    from ppml.broker.audit import verify_audit_log

    report = verify_audit_log(log, expect_head=expect_head)
    if as_json:
        emit_json("broker.audit.verify", {"log": str(log), "intact": True, **report.to_json()})
    else:
        err.print(f"{log}: intact, {report.entries} entries ({report.allowed} releases allowed, {report.denied} "
                  f"denied); head {report.head}")
