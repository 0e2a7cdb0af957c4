"""``ppml submit``: run a Spark application with ppml's security settings, locally, on a standalone cluster or
on Kubernetes, accepting ``bigdl-ppml-submit.sh``'s flags."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.markup import escape

from ppml.cli._common import JsonOpt, emit_json, err, out
from ppml.cli.options import KubernetesTarget, key_options, kubernetes_options
from ppml.keys.settings import KeySettings

__all__ = ["register", "submit_request", "run_request"]

_SPARK = "Spark"
_BIGDL = "BigDL (bigdl-ppml-submit.sh)"


def _opt(flag: str, help_text: str, panel: str = _SPARK, metavar: str = "VALUE"):
    return Annotated[Optional[str], typer.Option(flag, metavar=metavar, rich_help_panel=panel, help=help_text)]


def submit_request(master: str, app: str, app_args: list[str], *, keys: KeySettings, kube: KubernetesTarget,
                   **fields):
    """A :class:`~ppml.deploy.submit.SubmitRequest` from command-line values."""
    from ppml.deploy.masters import parse_master
    from ppml.deploy.submit import SubmitRequest

    return SubmitRequest(master=parse_master(master), app=app, app_args=tuple(app_args), keys=keys,
                         deployment=kube.loaded(), k8s_ca_cert=kube.k8s_ca_cert,
                         k8s_token_file=kube.k8s_token_file, **fields)


def run_request(request, *, dry_run: bool, as_json: bool) -> None:
    """Plan ``request``; print the plan (``dry_run``) or run it, exiting with spark-submit's exit code."""
    from ppml.deploy.submit import plan_submit
    from ppml.errors import UsageError

    if as_json and not dry_run:
        raise UsageError("--json prints the plan: give it with --dry-run (a run passes the application's own output "
                         "through)")
    plan = plan_submit(request)
    if dry_run:
        if as_json:
            emit_json("submit.plan", plan.describe())
        else:
            _print_plan(plan)
        return
    for note in plan.notes:
        err.print(f"ppml: {escape(note)}")
    code = plan.run()
    if code:
        raise typer.Exit(code)


def _print_plan(plan) -> None:
    described = plan.describe()
    out.print("# spark-submit command (the properties file and pod templates are written to a private folder "
              "for the run)")
    out.print(escape(shlex.join(described["command"])))
    if described["environment"]:
        out.print("\n# environment")
        for name, value in described["environment"].items():
            out.print(escape(f"{name}={value}"))
    if described["properties_file"]:
        out.print("\n# properties file (mode 0600)")
        for name, value in described["properties_file"].items():
            out.print(escape(f"{name}={value}"))
    for role, template in described["pod_templates"].items():
        out.print(f"\n# {role} pod template")
        out.print(escape(yaml.safe_dump(template, sort_keys=False)).rstrip())
    if described["spark_creates"]:
        out.print("\n# Spark's submission client and driver create: " + "; ".join(described["spark_creates"]))
    for note in described["mapped"]:
        out.print(escape(f"# mapped: {note}"))


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(submit)


@key_options
@kubernetes_options
def submit(
    app: Annotated[str, typer.Argument(metavar="APP", help="The application: a .py or .jar file (local:// for "
                                                           "one in the image), or 'ppml' to run a ppml command.")],
    keys: KeySettings,
    kube: KubernetesTarget,
    app_args: Annotated[Optional[list[str]], typer.Argument(metavar="[APP ARGS]...",
                                                            help="Arguments of the application.")] = None,
    master: Annotated[str, typer.Option("--master", metavar="URL", rich_help_panel=_SPARK,
                                        help="local[*], spark://HOST:PORT or k8s://https://HOST:PORT.")] = "local[*]",
    deploy_mode: Annotated[str, typer.Option("--deploy-mode", metavar="MODE", rich_help_panel=_SPARK,
                                             help="client (driver here) or cluster.")] = "client",
    name: _opt("--name", "Application name.") = None,
    conf: Annotated[Optional[list[str]], typer.Option("--conf", metavar="KEY=VALUE", rich_help_panel=_SPARK,
                                                      help="Spark setting (repeatable); secrets are refused.")] = None,
    main_class: _opt("--class", "Main class of a jar application.", metavar="CLASS") = None,
    jars: _opt("--jars", "Comma-separated jars.", metavar="JARS") = None,
    py_files: _opt("--py-files", "Comma-separated .py/.zip files.", metavar="FILES") = None,
    driver_memory: _opt("--driver-memory", "Driver memory (BigDL: the container's).", metavar="SIZE") = None,
    executor_memory: _opt("--executor-memory", "Executor memory (BigDL: the container's).", metavar="SIZE") = None,
    driver_cores: _opt("--driver-cores", "Driver cores.", metavar="N") = None,
    executor_cores: _opt("--executor-cores", "Cores per executor.", metavar="N") = None,
    num_executors: _opt("--num-executors", "Number of executors (k8s).", metavar="N") = None,
    total_executor_cores: _opt("--total-executor-cores", "Total cores (standalone).", metavar="N") = None,
    verbose: Annotated[bool, typer.Option("--verbose", rich_help_panel=_SPARK, help="spark-submit --verbose.")] = False,
    auth_secret_file: Annotated[Optional[Path], typer.Option(
        "--auth-secret-file", metavar="FILE", envvar="PPML_SPARK_AUTH_SECRET_FILE", rich_help_panel=_SPARK,
        help="The cluster's spark.authenticate secret (0600): spark:// masters; k8s client mode.")] = None,
    sgx_enabled: _opt("--sgx-enabled", "true: run in the deployment's SGX profile.", _BIGDL, "BOOL") = None,
    sgx_log_level: _opt("--sgx-log-level", "Gramine log level (fixed in the measured manifest).", _BIGDL,
                        "LEVEL") = None,
    sgx_driver_memory: _opt("--sgx-driver-memory", "Driver enclave size → EPC request.", _BIGDL, "SIZE") = None,
    sgx_driver_jvm_memory: _opt("--sgx-driver-jvm-memory", "Driver heap → spark.driver.memory.", _BIGDL,
                                "SIZE") = None,
    sgx_executor_memory: _opt("--sgx-executor-memory", "Executor enclave size → EPC request.", _BIGDL,
                              "SIZE") = None,
    sgx_executor_jvm_memory: _opt("--sgx-executor-jvm-memory", "Executor heap → spark.executor.memory.", _BIGDL,
                                  "SIZE") = None,
    driver_template: _opt("--driver-template", "Driver pod template (replaces the deployment's).", _BIGDL,
                          "FILE") = None,
    executor_template: _opt("--executor-template", "Executor pod template (replaces the deployment's).", _BIGDL,
                            "FILE") = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit APP to Spark with authentication, AES-GCM RPC encryption, encrypted shuffle files and ppml's key
    settings; bigdl-ppml-submit.sh's flags and spark.bigdl.kms.* settings are mapped, and the mapping shown.

    No secret is ever a command-line value: a standalone cluster's secret goes to spark-submit in a 0600
    properties file, and Kubernetes pods read theirs from the deployment's Secret as a file.

    **Examples**

    * `ppml submit --master local[2] report.py enc/ out/`
    * `ppml submit --master spark://head:7077 --auth-secret-file spark.secret ppml tpch run enc out
      aes_gcm_stream aes_gcm_stream --data-key dk.json --check`
    * `ppml submit --master k8s://https://aks-api:443 --deploy-mode cluster --deployment deploy/ --sgx-enabled
      true --sgx-executor-memory 16g ppml tpch run abfs://data/tpch abfs://data/out aes_gcm_stream aes_gcm_stream`
    * `ppml submit --master k8s://https://aks-api:443 --deployment deploy/ --dry-run job.py`
    """
    from ppml.deploy.bigdl import SgxFlags

    request = submit_request(
        master, app, app_args or [], keys=keys, kube=kube, deploy_mode=deploy_mode, name=name,
        conf=tuple(conf or ()), main_class=main_class, jars=jars, py_files=py_files, driver_memory=driver_memory,
        executor_memory=executor_memory, driver_cores=driver_cores, executor_cores=executor_cores,
        num_executors=num_executors, total_executor_cores=total_executor_cores, verbose=verbose,
        insecure_simple=keys.insecure_allow_simple_kms,
        auth_secret_file=str(auth_secret_file) if auth_secret_file else None,
        sgx=SgxFlags(sgx_enabled, sgx_log_level, sgx_driver_memory, sgx_driver_jvm_memory, sgx_executor_memory,
                     sgx_executor_jvm_memory),
        driver_template=driver_template, executor_template=executor_template)
    run_request(request, dry_run=kube.dry_run, as_json=as_json)
