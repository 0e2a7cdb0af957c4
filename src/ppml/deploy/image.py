"""The container image's layout: where ppml, Spark and the entry point live inside it.

``docker/Dockerfile`` builds exactly this layout (a test reads the Dockerfile and checks that they agree), so
pod templates and ``spark-submit`` can name paths inside the image without guessing.
"""

from __future__ import annotations

__all__ = ["USER_ID", "GROUP_ID", "VENV", "PYTHON", "SPARK_HOME", "APP_SCRIPT", "ENTRYPOINT", "GRAMINE_DIR",
           "SKR_EVIDENCE", "app_resource"]

#: The unprivileged user and group every container runs as.
USER_ID = 10001
GROUP_ID = 10001
#: The virtual environment holding ppml with its Spark, Azure and attestation extras.
VENV = "/opt/ppml/venv"
PYTHON = f"{VENV}/bin/python"
_SITE = f"{VENV}/lib/python3.11/site-packages"
#: Spark as installed by the pyspark package (its bin/ and jars/).
SPARK_HOME = f"{_SITE}/pyspark"
#: The Python file that runs a ppml command as a Spark application (``ppml submit ... ppml tpch run ...``).
APP_SCRIPT = f"{_SITE}/ppml/cli/spark_app.py"
#: Spark's container contract (``driver ARGS`` / ``executor``), implemented by docker/entrypoint.sh.
ENTRYPOINT = "/opt/ppml/bin/entrypoint.sh"
#: The signed Gramine manifest and signature of the sgx profile.
GRAMINE_DIR = "/opt/ppml-gramine"
#: Prints MAA evidence obtained through the confidential-containers attestation sidecar (coco profile).
SKR_EVIDENCE = "/opt/ppml/bin/skr-maa-evidence"


def app_resource() -> str:
    """The ``local://`` URL of :data:`APP_SCRIPT`, as cluster-mode ``spark-submit`` names a file in the image."""
    return f"local://{APP_SCRIPT}"
