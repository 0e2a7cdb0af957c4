"""ppml's parquet-java ``KmsClient``: built from source with the JDK's ``javac``, and how Spark uses it.

The client (``java/io/ppml/parquet/PpmlKmsClient.java``, a few hundred lines with no dependency beyond the
parquet and Hadoop jars that pyspark ships) is compiled against pyspark's own jars, so it always matches
the parquet-java that Spark runs. The jar's name carries a digest of the source, so a changed source is
rebuilt; it goes beside the source when that folder is writable (an editable install, a container image),
else under ``$XDG_CACHE_HOME/ppml``. ``make setup`` builds it (``python -m ppml.parquet.jvm``); a process
that finds it missing builds it when a JDK is there.

:func:`read_options` and :func:`write_options` are the Spark data source options (they go into the job's
Hadoop configuration) that make Spark's Parquet reader and writer use PME with this client: the crypto
factory, the client class, ppml's key settings as ``ppml.keys.*`` (never a secret) and the interpreter that
runs the key agent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from ppml.errors import ConfigError
from ppml.keys.settings import KeySettings

__all__ = ["client_jar", "read_options", "write_options", "CLIENT_CLASS", "CRYPTO_FACTORY", "ACCESS_TOKEN", "CACHE_SECONDS"]

CLIENT_CLASS = "io.ppml.parquet.PpmlKmsClient"
CRYPTO_FACTORY = "org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory"
ACCESS_TOKEN = "parquet.encryption.key.access.token"
_SOURCE_ROOT = Path(__file__).resolve().parent / "java"
_SOURCES = sorted(_SOURCE_ROOT.rglob("*.java"))
#: parquet-java's own KEK cache; ppml's agent caches keys for as long as their backend allows.
CACHE_SECONDS = 60


def _digest() -> str:
    digest = hashlib.sha256()
    for source in _SOURCES:
        digest.update(source.relative_to(_SOURCE_ROOT).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def _spark_jars() -> Path:
    try:
        import pyspark
    except ImportError:
        raise ConfigError("Spark's Parquet encryption needs pyspark", hint="pip install 'ppml[spark]'") from None
    return Path(pyspark.__file__).resolve().parent / "jars"


def _candidates(name: str) -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ppml" / "jars"
    return [_SOURCE_ROOT / "build" / name, cache / name]


def client_jar(*, build: bool = True) -> Path:
    """The client's jar, built first if it is missing or older than its source (needs a JDK's ``javac``)."""
    name = f"ppml-parquet-kms-{_digest()}.jar"
    for candidate in _candidates(name):
        if candidate.is_file():
            return candidate
    if not build:
        raise ConfigError(f"ppml's parquet-java key client ({name}) is not built",
                          hint="run 'make setup' or 'python -m ppml.parquet.jvm' (needs a JDK with javac)")
    javac = shutil.which("javac")
    if javac is None:
        raise ConfigError("building ppml's parquet-java key client needs a JDK's javac, which is not on PATH",
                          hint="install a JDK 17 (e.g. apt-get install openjdk-17-jdk-headless), then run "
                               "'python -m ppml.parquet.jvm'")
    with tempfile.TemporaryDirectory(prefix="ppml-jvm-") as scratch:
        classes = Path(scratch) / "classes"
        result = subprocess.run([javac, "--release", "17", "-nowarn", "-cp", str(_spark_jars() / "*"), "-d",
                                 str(classes), *map(str, _SOURCES)], capture_output=True, text=True)
        if result.returncode:
            raise ConfigError("javac could not build ppml's parquet-java key client: "
                              + (result.stderr.strip().splitlines() or ["no output"])[0],
                              hint="check that pyspark's jars and a JDK 17 are installed")
        for target in _candidates(name):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = target.with_name(f".{target.name}.{os.getpid()}")
                with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as jar:
                    jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: ppml\n\n")
                    for path in sorted(classes.rglob("*.class")):
                        jar.write(path, path.relative_to(classes).as_posix())
                os.replace(staged, target)
                return target
            except OSError:
                continue
    raise ConfigError("no writable place for ppml's parquet-java key client",
                      hint="make the package folder or $XDG_CACHE_HOME writable")


def _agent_python() -> str:
    return os.environ.get("PYSPARK_PYTHON") or sys.executable


def _access_token(python: str, settings: Mapping[str, str]) -> str:
    """parquet-java's cache key for these settings: a digest of them (which hold no secret)."""
    text = "\0".join([python, *(f"{k}={v}" for k, v in sorted(settings.items()))])
    return "ppml-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def read_options(keys: KeySettings) -> dict[str, str]:
    """Options that make Spark's Parquet reader decrypt PME files through ppml's key path."""
    settings = keys.to_options()
    options = {
        "parquet.crypto.factory.class": CRYPTO_FACTORY,
        # parquet-java caches its key client and unwrapped KEKs per access token: a token per key settings
        # keeps a reader with fewer keys from using keys that another reader's settings unwrapped
        ACCESS_TOKEN: _access_token(python := _agent_python(), settings),
        "parquet.encryption.kms.client.class": CLIENT_CLASS,
        "parquet.encryption.cache.lifetime.seconds": str(CACHE_SECONDS),
        "ppml.parquet.agent.python": python,
    }
    options.update({f"ppml.keys.{name}": value for name, value in settings.items()})
    return options


def write_options(keys: KeySettings, encryption_properties: Mapping[str, str]) -> dict[str, str]:
    """Options that make Spark's Parquet writer encrypt as ``encryption_properties`` say
    (:meth:`~ppml.parquet.settings.ParquetEncryption.hadoop_properties`)."""
    return {**read_options(keys), **encryption_properties}


if __name__ == "__main__":  # the set-up step: build the jar now, so no job waits for javac
    print(f"ppml's parquet-java key client: {client_jar()}")
