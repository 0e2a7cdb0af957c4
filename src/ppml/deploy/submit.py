"""The ``spark-submit`` plan for a job: command line, environment, secret-bearing properties, pod templates.

The plan runs the installed pyspark's own ``spark-submit`` with ppml's secure defaults:

* ``spark.authenticate`` with a secret that never appears on a command line: in local mode Spark generates
  it in memory; a standalone cluster's shared secret goes into a properties file of mode 0600 that only
  ``spark-submit`` reads; on Kubernetes driver and executors read it from the deployment's Secret, mounted as
  a file (``spark.authenticate.secret.{driver,executor}.file``), so it is in no pod spec either;
* RPC encryption with AES-GCM (authenticated) and AES-256 encryption of shuffle and spill files;
* redaction of secrets and of ppml's settings in the UI and event logs;
* ppml's key settings (no secrets: passphrases by source) as ``spark.ppml.keys.*`` for ``PPMLContext``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ppml.deploy import image
from ppml.deploy.bigdl import SgxFlags, map_bigdl_conf, map_sgx_flags, refuse_secret_conf
from ppml.deploy.masters import Master
from ppml.deploy.profiles import SGX_EPC
from ppml.errors import ConfigError, UsageError
from ppml.keys import secure_files
from ppml.keys.settings import KeySettings

__all__ = ["SubmitRequest", "SubmitPlan", "plan_submit", "KEY_CONF_PREFIX", "spark_submit", "PPML_APP"]

#: Spark settings carrying ppml's key settings to ``PPMLContext`` (``spark.ppml.keys.azureVault``...).
KEY_CONF_PREFIX = "spark.ppml.keys."
#: The application name that means "run a ppml command as the Spark application".
PPML_APP = "ppml"
_REDACTED = "<redacted>"
_SECURE = {
    "spark.authenticate": "true",
    "spark.network.crypto.enabled": "true",
    "spark.network.crypto.cipher": "AES/GCM/NoPadding",
    "spark.io.encryption.enabled": "true",
    "spark.io.encryption.keySizeBits": "256",
    "spark.redaction.regex": "(?i)secret|password|token|access[.]?key|ppml",
}
# Settings ppml owns for the job's security: a --conf that weakens one is refused rather than obeyed.
_PROTECTED = ("spark.authenticate", "spark.network.crypto.enabled", "spark.io.encryption.enabled")


def spark_submit() -> Path:
    """The installed pyspark's ``bin/spark-submit``."""
    try:
        import pyspark
    except ImportError:
        raise ConfigError("ppml submit needs pyspark", hint="pip install 'ppml[spark]'") from None
    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


@dataclass(frozen=True)
class SubmitRequest:
    """What the user asked for (flags of ``ppml submit``), before any mapping."""

    master: Master
    app: str
    app_args: tuple[str, ...] = ()
    deploy_mode: str = "client"
    name: str | None = None
    conf: tuple[str, ...] = ()
    main_class: str | None = None
    jars: str | None = None
    py_files: str | None = None
    driver_memory: str | None = None
    executor_memory: str | None = None
    driver_cores: str | None = None
    executor_cores: str | None = None
    num_executors: str | None = None
    total_executor_cores: str | None = None
    verbose: bool = False
    keys: KeySettings = field(default_factory=KeySettings)
    insecure_simple: bool = False
    auth_secret_file: str | None = None
    deployment: tuple[Path, dict[str, Any]] | None = None
    k8s_ca_cert: str | None = None
    k8s_token_file: str | None = None
    sgx: SgxFlags = field(default_factory=SgxFlags)
    driver_template: str | None = None
    executor_template: str | None = None


@dataclass
class SubmitPlan:
    """The command to run and what it needs. ``properties`` hold secrets; everything else is printable."""

    argv: list[str]
    env: dict[str, str]
    properties: dict[str, str]
    secret_properties: frozenset[str]
    templates: dict[str, dict[str, Any]]
    notes: list[str]
    spark_creates: list[str]

    def describe(self) -> dict[str, Any]:
        """The plan with secrets redacted: what ``--dry-run`` prints."""
        return {"command": list(self.argv), "environment": dict(self.env),
                "properties_file": {k: (_REDACTED if k in self.secret_properties else v)
                                    for k, v in self.properties.items()},
                "pod_templates": self.templates, "spark_creates": self.spark_creates, "mapped": self.notes}

    def write_files(self, folder: Path) -> list[str]:
        """Write the properties file (0600) and pod templates into ``folder``; returns the final argv."""
        argv = list(self.argv)
        for role, template in self.templates.items():
            path = folder / f"{role}-template.yaml"
            path.write_text(yaml.safe_dump(template, sort_keys=False))
            argv = [a.replace(f"@{role}-template@", str(path)) for a in argv]
        if self.properties:
            path = folder / "spark-secret.properties"
            secure_files.write_private(path, "".join(f"{k}={_escape(v)}\n" for k, v in self.properties.items())
                                       .encode())
            argv = [a.replace("@properties@", str(path)) for a in argv]
        return argv


    def run(self) -> int:
        """Run ``spark-submit`` (its output passes through) and return its exit code.

        The properties file and pod templates live in a private temporary folder for the run only.
        """
        import os
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ppml-submit-") as tmp:
            os.chmod(tmp, 0o700)
            argv = self.write_files(Path(tmp))
            return subprocess.run(argv, env={**os.environ, **self.env}, check=False).returncode


def _escape(value: str) -> str:
    """A value as java.util.Properties reads it back unchanged."""
    return "".join(f"\\{c}" if c in "\\:=#! " else c for c in value).replace("\n", "\\n")


def _conf_pairs(items: tuple[str, ...]) -> dict[str, str]:
    conf: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--conf {item!r} is not KEY=VALUE")
        conf[key.strip()] = value.strip()
    return conf


def _read_secret_file(path: str, *, flag: str) -> str:
    try:
        secure_files.check_private(path, what=f"{flag} file")
        value = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path} does not exist") from None
    if not value:
        raise ConfigError(f"{flag} {path} is empty")
    return value


def plan_submit(request: SubmitRequest) -> SubmitPlan:
    """Check the request and build the plan; any problem is an error naming the flag or setting at fault."""
    master = request.master
    if request.deploy_mode not in ("client", "cluster"):
        raise UsageError(f"--deploy-mode {request.deploy_mode!r}: choose client or cluster")
    python_app = request.app == PPML_APP or request.app.endswith(".py")
    if master.kind == "local" and request.deploy_mode == "cluster":
        raise UsageError("--deploy-mode cluster needs a spark:// or k8s:// master (local mode has no cluster)")
    if master.kind == "standalone" and request.deploy_mode == "cluster" and python_app:
        raise UsageError("Spark runs Python applications on standalone clusters in client mode only",
                         hint="drop --deploy-mode cluster (the driver then runs here)")
    if request.app.endswith(".jar") and not request.main_class:
        raise UsageError(f"{request.app}: a jar application needs --class MAIN")
    conf = _conf_pairs(request.conf)
    for key, value in conf.items():
        refuse_secret_conf(key, value)
        if key in _PROTECTED and value.lower() != "true":
            raise UsageError(f"--conf {key}={value} would turn off a protection ppml submit always applies",
                             hint="ppml keeps RPC authenticated and encrypted and shuffle files encrypted")
        if key.startswith(KEY_CONF_PREFIX):
            raise UsageError(f"--conf {key}: give key settings with ppml's own options (--kms, --vault ...)")
    conf, keys, notes = map_bigdl_conf(conf, request.keys, insecure_simple=request.insecure_simple)
    profile = request.deployment[1].get("tee") if request.deployment else None
    sgx_conf, epc, sgx_notes = map_sgx_flags(request.sgx, master_kind=master.kind, profile=profile,
                                             driver_memory=request.driver_memory,
                                             executor_memory=request.executor_memory)
    notes += sgx_notes
    settings: dict[str, str] = dict(_SECURE)
    settings.update({f"{KEY_CONF_PREFIX}{k}": v for k, v in keys.to_options().items()})
    env = {"SPARK_HOME": str(spark_submit().parent.parent), "PYSPARK_PYTHON": sys.executable}
    properties: dict[str, str] = {}
    templates: dict[str, dict[str, Any]] = {}
    spark_creates: list[str] = []
    if master.kind == "local":
        if request.auth_secret_file:
            raise UsageError("--auth-secret-file is for spark:// masters and Kubernetes client mode: in local mode "
                             "Spark makes a fresh secret in memory")
        env["SPARK_LOCAL_IP"] = "127.0.0.1"  # nothing leaves the machine in local mode
        settings["spark.pyspark.python"] = sys.executable
    elif master.kind == "standalone":
        if not request.auth_secret_file:
            raise UsageError("a spark:// master needs --auth-secret-file FILE: the cluster's shared "
                             "spark.authenticate secret (mode 0600)",
                             hint="standalone masters and workers must run with the same secret")
        properties["spark.authenticate.secret"] = _read_secret_file(request.auth_secret_file,
                                                                    flag="--auth-secret-file")
        settings["spark.pyspark.python"] = sys.executable
    else:
        settings.update(_kubernetes_settings(request, epc, templates, notes))
        spark_creates = (["the driver pod (from the driver template)", "its ConfigMap of Spark settings",
                          "its headless Service", "a NetworkPolicy admitting only the application's executors"]
                         if request.deploy_mode == "cluster" else [])
        spark_creates.append("executor pods (from the executor template), created by the driver")
        if request.deploy_mode == "cluster":
            env.pop("PYSPARK_PYTHON")
        else:
            settings["spark.pyspark.driver.python"] = sys.executable  # the driver runs here, executors in pods
    for option, value in (("spark.driver.memory", request.driver_memory),
                          ("spark.executor.memory", request.executor_memory)):
        if value and option not in sgx_conf:
            settings[option] = value
    settings.update(sgx_conf)
    for key, value in conf.items():
        if key in settings and key in _SECURE and settings[key] != value and key not in _PROTECTED:
            notes.append(f"--conf {key}={value} replaces ppml's default {settings[key]}")
        settings[key] = value
    argv = [str(spark_submit()), "--master", master.url, "--deploy-mode", request.deploy_mode]
    for flag, value in (("--name", request.name), ("--class", request.main_class), ("--jars", request.jars),
                        ("--py-files", request.py_files), ("--driver-cores", request.driver_cores),
                        ("--executor-cores", request.executor_cores), ("--num-executors", request.num_executors),
                        ("--total-executor-cores", request.total_executor_cores)):
        if value:
            argv += [flag, value]
    if request.verbose:
        argv.append("--verbose")
    if properties:
        argv += ["--properties-file", "@properties@"]
    for key, value in settings.items():
        argv += ["--conf", f"{key}={value}"]
    argv += [_app_resource(request), *request.app_args]
    return SubmitPlan(argv, env, properties, frozenset(properties), templates, notes, spark_creates)


def _app_resource(request: SubmitRequest) -> str:
    if request.app != PPML_APP:
        return request.app
    if request.master.kind == "k8s" and request.deploy_mode == "cluster":
        return image.app_resource()
    from importlib.resources import files

    return str(files("ppml.cli") / "spark_app.py")


def _kubernetes_settings(request: SubmitRequest, epc: dict[str, str], templates: dict[str, dict[str, Any]],
                         notes: list[str]) -> dict[str, str]:
    """Spark settings for a ``k8s://`` master from the rendered deployment (``ppml deploy render``)."""
    if request.deployment is None:
        raise UsageError("a k8s:// master needs --deployment DIR: the folder 'ppml deploy render' wrote (namespace, "
                         "image, pod templates, the authentication Secret)")
    root, deployment = request.deployment
    cluster = request.deploy_mode == "cluster"
    if cluster:
        auth_driver = deployment["auth_file"]
    else:
        auth_driver = request.auth_secret_file or str(root / "spark" / "spark-auth.secret")
        _read_secret_file(auth_driver, flag="--auth-secret-file")
    settings = {
        "spark.kubernetes.namespace": deployment["namespace"],
        "spark.kubernetes.container.image": deployment["image"],
        # a tag names what the registry holds now: fetch it every time rather than trust a node's cache
        "spark.kubernetes.container.image.pullPolicy": "Always",
        "spark.kubernetes.authenticate.driver.serviceAccountName": deployment["service_account"],
        "spark.kubernetes.authenticate.executor.serviceAccountName": deployment["service_account"],
        "spark.kubernetes.driver.podTemplateContainerName": deployment["containers"]["driver"],
        "spark.kubernetes.executor.podTemplateContainerName": deployment["containers"]["executor"],
        "spark.authenticate.secret.driver.file": auth_driver,
        "spark.authenticate.secret.executor.file": deployment["auth_file"],
        # CPU limits as well as requests, so that no Spark pod runs unbounded
        "spark.kubernetes.driver.limit.cores": request.driver_cores or "1",
        "spark.kubernetes.executor.limit.cores": request.executor_cores or "1",
        "spark.pyspark.python": image.PYTHON,
    }
    if request.k8s_ca_cert:
        settings["spark.kubernetes.authenticate.submission.caCertFile"] = request.k8s_ca_cert
    if request.k8s_token_file:
        _read_secret_file(request.k8s_token_file, flag="--k8s-token-file")
        settings["spark.kubernetes.authenticate.submission.oauthTokenFile"] = request.k8s_token_file
    for role, given in (("driver", request.driver_template), ("executor", request.executor_template)):
        path = Path(given) if given else root / "spark" / f"{role}-template.yaml"
        if given:
            notes.append(f"--{role}-template {given} → spark.kubernetes.{role}.podTemplateFile (replaces the "
                         "deployment's template: keep its security settings)")
        if role in epc or not given:
            template = _load_template(path, flag=f"--{role}-template" if given else "--deployment")
            if role in epc:
                _set_epc(template, deployment["containers"][role], epc[role])
            templates[role] = template
            settings[f"spark.kubernetes.{role}.podTemplateFile"] = f"@{role}-template@"
        else:
            settings[f"spark.kubernetes.{role}.podTemplateFile"] = str(path)
    return settings


def _load_template(path: Path, *, flag: str) -> dict[str, Any]:
    try:
        template = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{flag}: the pod template {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag}: {path} is not YAML ({exc})") from None
    if not isinstance(template, dict) or template.get("kind") != "Pod":
        raise ConfigError(f"{flag}: {path} is not a Pod")
    return template


def _set_epc(template: dict[str, Any], container_name: str, size: str) -> None:
    for entry in template.get("spec", {}).get("containers", []):
        if entry.get("name") == container_name:
            resources = entry.setdefault("resources", {})
            for part in ("requests", "limits"):
                resources.setdefault(part, {})[SGX_EPC] = size
            return
    raise ConfigError(f"the pod template has no container {container_name!r} to give sgx.intel.com/epc")

