"""Spark sessions with ppml's secure defaults: :func:`secure_session`.

Every session gets shuffle and spill encryption, redaction of ppml settings and Spark's Python filter
pushdown. RPC is authenticated and encrypted (AES-GCM) on clusters, where it crosses a network, and in
local mode too, where Spark makes up the secret itself: it costs nothing there and keeps Spark from
warning that I/O encryption keys would be visible on a wire that does not exist. ``local-cluster``
masters (executor processes on loopback, Spark's test mode) are left as they are: Spark needs a shared
secret for them and warns, truthfully, when their RPC is not encrypted.

When the session starts its own JVM, the driver logs through ppml's ``log4j2.properties`` unless logging
is configured already, in the Spark configuration folder or in ``spark.driver.extraJavaOptions``: Spark's
own defaults, without Hadoop's notice that its optional native library is missing, without Spark's notices
about broadcast marks ppml sets (see :mod:`ppml.spark.sizing`) where they cannot be used, and without the
notice that another application holds the web UI's port.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from ppml.errors import PpmlInsecureWarning

__all__ = ["RPC_DEFAULTS", "SECURE_DEFAULTS", "added_settings", "secure_session", "session_master", "warn_insecure"]

REDACTION = "(?i)secret|password|token|access[.]?key|ppml"
SECURE_DEFAULTS = {
    "spark.io.encryption.enabled": "true",
    "spark.io.encryption.keySizeBits": "256",
    "spark.redaction.regex": REDACTION,
    "spark.sql.redaction.options.regex": "(?i)url|ppml|key|secret|password",
    "spark.sql.python.filterPushdown.enabled": "true",
}
RPC_DEFAULTS = {
    "spark.authenticate": "true",
    "spark.network.crypto.enabled": "true",
    "spark.network.crypto.cipher": "AES/GCM/NoPadding",
}
LOG_CONFIG = Path(__file__).with_name("log4j2.properties")
_IN_PROCESS = re.compile(r"local(\[[^\]]*\])?")
_JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def _in_process(master: str) -> bool:
    """Whether ``master`` runs the executors inside the driver's JVM (``local``, ``local[N]``, ``local[*, F]``)."""
    return _IN_PROCESS.fullmatch(master) is not None


def _over_network(master: str) -> bool:
    """Whether executors talk to the driver over a network (every master but the ``local`` ones)."""
    return not master.startswith("local")


def _conf_dir() -> Path | None:
    """The Spark configuration folder spark-submit reads: ``$SPARK_CONF_DIR``, else ``$SPARK_HOME/conf``."""
    if os.environ.get("SPARK_CONF_DIR"):
        return Path(os.environ["SPARK_CONF_DIR"])
    return Path(os.environ["SPARK_HOME"], "conf") if os.environ.get("SPARK_HOME") else None


def _spark_defaults() -> dict[str, str]:
    """``spark-defaults.conf`` of the configuration folder (a Java properties file), if there is one."""
    folder = _conf_dir()
    path = folder / "spark-defaults.conf" if folder else None
    if path is None or not path.is_file():
        return {}
    settings = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = re.split(r"\s*[=:\s]\s*", line.strip(), maxsplit=1)
        if len(parts) == 2 and not parts[0].startswith(("#", "!")):
            settings[parts[0]] = parts[1]
    return settings


def _jvm_running() -> bool:
    """Whether this process already talks to a JVM (an earlier session, or spark-submit started Python)."""
    return SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ


def session_master(options: Mapping[str, str]) -> str:
    """The master a session built with ``options`` runs on, found the way PySpark finds it.

    The builder's ``spark.master``; else the running SparkContext's; else the one the running JVM was
    started with (spark-submit's ``--master``); else the one PySpark will start its JVM with:
    ``--master`` in ``$PYSPARK_SUBMIT_ARGS``, ``spark.master`` in ``spark-defaults.conf``, ``$MASTER``,
    and finally spark-submit's default ``local[*]``.
    """
    if options.get("spark.master"):
        return options["spark.master"]
    active = SparkContext._active_spark_context
    if active is not None:
        return active.master
    if _jvm_running():
        return SparkConf().get("spark.master", "local[*]")
    args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    for index, arg in enumerate(args):
        if arg == "--master" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--master="):
            return arg.partition("=")[2]
    return _spark_defaults().get("spark.master") or os.environ.get("MASTER") or "local[*]"


def _logging_options(options: Mapping[str, str]) -> dict[str, str]:
    """``spark.driver.extraJavaOptions`` pointing log4j at ppml's configuration, when nothing else does.

    Only a JVM that is yet to start reads it; options already set (by the builder or in
    ``spark-defaults.conf``) are kept in front of it.
    """
    if _jvm_running():
        return {}
    folder = _conf_dir()
    if folder is not None and folder.is_dir() and any(folder.glob("log4j2*")):
        return {}
    given = options.get(_JAVA_OPTIONS) or _spark_defaults().get(_JAVA_OPTIONS, "")
    if "log4j" in given:
        return {}
    # A file: URL has no spaces, which Spark would otherwise split the option string at.
    return {_JAVA_OPTIONS: f"{given} -Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}".strip()}


def warn_insecure(conf: Mapping[str, str], master: str) -> None:
    """Warn (:class:`~ppml.errors.PpmlInsecureWarning`) for each protection ``conf`` turns off on ``master``."""
    expected = {**SECURE_DEFAULTS, **(RPC_DEFAULTS if _over_network(master) else {})}
    for key in ("spark.io.encryption.enabled", "spark.authenticate", "spark.network.crypto.enabled"):
        if key in expected and str(conf.get(key, expected[key])).lower() != "true":
            warnings.warn(f"{key} is off: shuffle, spill or RPC traffic of this session is not protected",
                          PpmlInsecureWarning, stacklevel=3)
    cipher = conf.get("spark.network.crypto.cipher")
    if _over_network(master) and cipher and "GCM" not in cipher.upper():
        warnings.warn(f"spark.network.crypto.cipher is {cipher}: Spark's RPC is then not authenticated encryption",
                      PpmlInsecureWarning, stacklevel=3)


def added_settings(options: Mapping[str, str]) -> dict[str, str]:
    """The settings :func:`secure_session` adds to a builder's ``options``: ppml's defaults for what they leave
    unset, RPC protection on every master but ``local-cluster``, and the driver's logging configuration."""
    master = session_master(options)
    defaults = {**SECURE_DEFAULTS, **(RPC_DEFAULTS if _in_process(master) or _over_network(master) else {})}
    return {**{key: value for key, value in defaults.items() if key not in options}, **_logging_options(options)}


def secure_session(builder: SparkSession.Builder | None = None, *, auth_secret_file: str | None = None) -> SparkSession:
    """``builder.getOrCreate()`` with ppml's secure defaults for every setting the builder leaves unset.

    Parameters
    ----------
    builder
        The session to build (default: ``SparkSession.builder``). Settings it makes win over ppml's.
    auth_secret_file
        File holding the cluster's ``spark.authenticate.secret`` (standalone clusters).

    Returns
    -------
    SparkSession
        The session; an already running one gets only the settings Spark can still change.
    """
    builder = builder or SparkSession.builder
    # Python workers must run the interpreter that has ppml installed, not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    given = dict(getattr(builder, "_options", {}))
    for key, value in added_settings(given).items():
        builder = builder.config(key, value)
    if auth_secret_file and "spark.authenticate.secret" not in given:
        secret = Path(auth_secret_file).read_text(encoding="utf-8").strip()
        builder = builder.config("spark.authenticate.secret", secret)
    warn_insecure(given, session_master(given))
    return builder.getOrCreate()
