"""docker/Dockerfile and the Gramine manifest template, parsed and checked (no Docker engine runs here)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy_checks import assert_checkov_clean

dockerfile_parse = pytest.importorskip("dockerfile_parse")
jinja2 = pytest.importorskip("jinja2")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
_SECRET_NAMES = re.compile(r"secret|password|passwd|token|key|credential", re.IGNORECASE)


@pytest.fixture(scope="module")
def instructions() -> list[dict]:
    parser = dockerfile_parse.DockerfileParser(path=str(DOCKERFILE))
    return parser.structure


def test_multi_stage_pinned_bases(instructions):
    bases = [i["value"].split()[0] for i in instructions if i["instruction"] == "FROM"]
    assert len(bases) >= 3  # build, runtime, sgx
    for base in bases:
        if base in ("runtime",):
            continue  # a stage of this file
        name, _, tag = base.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", tag) or "@sha256:" in base, base
    for instruction in instructions:
        if instruction["instruction"] == "RUN" and "apt-get install" in instruction["value"]:
            packages = [w for w in instruction["value"].split() if re.match(r"^[a-z0-9.+-]+=", w)]
            listed = re.findall(r"--no-install-recommends ((?:[a-z0-9.+-]+=\S+\s*\\?\s*)+)", instruction["value"])
            assert packages and listed, instruction["value"]
    constraints = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    pins = [line for line in constraints if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    assert any(line.startswith("pyspark==") for line in pins)


def test_non_root_and_nothing_secret(instructions):
    from ppml.deploy import image

    users = [i["value"] for i in instructions if i["instruction"] == "USER"]
    assert users[-1] == f"{image.USER_ID}:{image.GROUP_ID}"  # the last stage's user
    stages = "\n".join(i["content"] for i in instructions).split("\nFROM ")
    for stage in stages[1:]:
        if stage.split("\n", 1)[0].endswith(" AS build"):
            continue  # the build stage is not shipped: only its virtual environment is copied out
        stage_users = re.findall(r"^USER (\S+)", stage, re.MULTILINE)
        assert stage_users and stage_users[-1] != "root" and not stage_users[-1].startswith("0"), stage[:60]
    for instruction in instructions:
        if instruction["instruction"] in ("ENV", "ARG", "LABEL"):
            assert not _SECRET_NAMES.search(instruction["value"]), instruction["value"]
    signing = next(i["value"] for i in instructions if "gramine-sgx-sign" in i["value"])
    assert "--mount=type=secret,id=enclave-key" in signing  # the signing key never enters a layer


def test_layout_matches_the_deployment_code(instructions):
    from ppml.deploy import image

    text = DOCKERFILE.read_text()
    entrypoint = next(i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT")
    assert image.ENTRYPOINT in entrypoint
    assert f"python -m venv {image.VENV}" in text and f"SPARK_HOME={image.SPARK_HOME}" in text
    assert image.APP_SCRIPT.startswith(image.VENV + "/lib/python3.11/")
    assert all(i["value"].startswith("python:3.11.") for i in instructions
               if i["instruction"] == "FROM" and i["value"].startswith("python:"))
    assert image.GRAMINE_DIR in text and image.GRAMINE_DIR in (ROOT / "docker" / "entrypoint.sh").read_text()
    assert image.SKR_EVIDENCE in text
    subprocess.run(["bash", "-n", str(ROOT / "docker" / "entrypoint.sh")], check=True)


def test_dockerfile_passes_checkov():
    assert_checkov_clean(DOCKERFILE, "dockerfile")


def test_gramine_manifest_template_renders_a_production_enclave():
    """Rendered as gramine-manifest does (Jinja2 with a gramine object and -D values), the manifest is TOML
    that measures the code and allows no debugging."""
    from ppml.deploy import image

    class Gramine:
        libos = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"

        @staticmethod
        def runtimedir() -> str:
            return "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"

    template = (ROOT / "src" / "ppml" / "deploy" / "gramine" / "ppml.manifest.template").read_text()
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        gramine=Gramine, log_level="error", enclave_size="16G", max_threads=256, isv_prod_id=1, isv_svn=1,
        arch_libdir="/lib/x86_64-linux-gnu", java_home="/usr/lib/jvm/java-17-openjdk-amd64", venv=image.VENV,
        spark_home=image.SPARK_HOME)
    manifest = tomllib.loads(rendered)
    assert manifest["sgx"]["debug"] is False and manifest["loader"]["log_level"] == "error"
    assert manifest["sgx"]["remote_attestation"] == "dcap"
    trusted = manifest["sgx"]["trusted_files"]
    assert "file:/opt/ppml/" in trusted and "file:/usr/lib/jvm/java-17-openjdk-amd64/" in trusted
    assert not any(f.startswith("file:" + image.GRAMINE_DIR) for f in trusted)  # the manifest is not in its own hash
    assert "insecure__use_host_env" not in rendered  # only named variables come in
    allowed = manifest["sgx"]["allowed_files"]
    assert "file:/etc/ppml/" in allowed and not any(f.startswith("file:/opt/ppml") for f in allowed)


def test_entrypoint_runs_a_driver_as_spark_on_kubernetes_starts_it(tmp_path):
    """``entrypoint.sh driver ARGS`` as Spark's driver pod runs it: spark-submit in client mode, bound to the
    pod address; here with the installed pyspark and a local master."""
    pyspark = pytest.importorskip("pyspark")
    app = tmp_path / "app.py"
    app.write_text("import sys\nfrom pyspark.sql import SparkSession\n"
                   "spark = SparkSession.builder.getOrCreate()\n"
                   "print('SUM', spark.range(10).selectExpr('sum(id)').first()[0],\n"
                   "      spark.conf.get('spark.driver.bindAddress'), sys.argv[1:])\n"
                   "spark.stop()\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SPARK_HOME": str(Path(pyspark.__file__).parent),
           "SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), "driver", "--master", "local[1]",
                           "--conf", "spark.ui.enabled=false", str(app), "a", "b"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SUM 45 127.0.0.1 ['a', 'b']" in done.stdout
