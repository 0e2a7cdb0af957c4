"""A Spark job that fails reports like any other command: ppml's own message, hint and exit code, no traceback.

The exceptions here are built as Spark hands them to the driver: a ppml error raised in a Python worker
arrives only as text, the worker's traceback quoted inside Spark's exception (and, for task failures, inside
a Java stack trace).
"""

from __future__ import annotations

from ppml.cli.main import main, spark_failure
from ppml.errors import ConfigError, KeyAccessError, PpmlError

WORKER_TRACEBACK = """Traceback (most recent call last):
  File "/src/ppml/spark/reader.py", line 50, in partitions
    files = list_files(self.options.paths, azure=self.options.storage)
  File "/src/ppml/io/storage.py", line 73, in errors
    raise translated from None
ppml.errors.ConfigError: cannot reach storage account devstoreaccount1 for abfs://tpch/enc/lineitem.tbl*: Cannot \
connect to host 10.199.0.10:10000 ssl:default (hint: check the account name, the endpoint and the network)
"""


def _spark_exception(name: str, module: str, text: str) -> Exception:
    return type(name, (Exception,), {"__module__": module})(text)


def test_a_ppml_error_inside_spark_planning_is_rebuilt():
    exc = _spark_exception("AnalysisException", "pyspark.errors.exceptions.captured",
                           "[PYTHON_DATA_SOURCE_ERROR] Failed to generate Python data source read partitions: "
                           + WORKER_TRACEBACK + " SQLSTATE: 38000")
    error = spark_failure(exc)
    assert isinstance(error, ConfigError) and error.exit_code == ConfigError.exit_code
    assert error.message.startswith("cannot reach storage account devstoreaccount1 for abfs://tpch/enc/lineitem.tbl*")
    assert error.message.endswith("ssl:default") and error.hint == "check the account name, the endpoint and the network"


def test_a_ppml_error_in_a_task_is_found_inside_the_java_stack():
    text = ("An error occurred while calling o123.save.\n: org.apache.spark.SparkException: Job aborted due to stage "
            "failure: Task 0 in stage 3.0 failed 1 times, most recent failure: Lost task 0.0 in stage 3.0 (TID 7) "
            "(10.199.0.22 executor 1): org.apache.spark.api.python.PythonException: Traceback (most recent call "
            "last):\n  File \"/src/ppml/spark/writer.py\", line 80, in write\n"
            "ppml.errors.KeyAccessError: cannot unwrap the data key of part-00000:\n  local:tpch#v1: cannot reach the "
            "key broker at https://10.199.0.11:8443 (hint: check that the broker is running)\n"
            "\n\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner."
            "scala:600)\n\nDriver stacktrace:\n\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages")
    error = spark_failure(_spark_exception("Py4JJavaError", "py4j.protocol", text))
    assert isinstance(error, KeyAccessError) and error.exit_code == 5
    assert error.message == ("cannot unwrap the data key of part-00000:\n  local:tpch#v1: cannot reach the key broker "
                             "at https://10.199.0.11:8443")
    assert error.hint == "check that the broker is running"


def test_other_spark_failures_quote_sparks_first_line_and_others_are_not_touched():
    error = spark_failure(_spark_exception("SparkConnectGrpcException", "pyspark.errors.exceptions.connect",
                                           "[INTERNAL_ERROR] the executor ran out of memory\n\tat org.apache..."))
    assert type(error) is PpmlError and error.message == "the Spark job failed: [INTERNAL_ERROR] the executor ran out of memory"
    error = spark_failure(_spark_exception("Py4JJavaError", "py4j.protocol", (
        "An error occurred while calling None.org.apache.spark.sql.classic.SparkSession.\n"
        ": java.lang.IllegalStateException: All masters are unresponsive! Giving up.\n\tat org.apache.spark...")))
    assert error.message == "the Spark job failed: java.lang.IllegalStateException: All masters are unresponsive! Giving up."
    assert spark_failure(ValueError("not Spark's")) is None


def test_the_command_line_reports_a_spark_failure_without_a_traceback(monkeypatch, capsys):
    from ppml.cli import main as cli

    def fail(*args, **kwargs):
        raise _spark_exception("AnalysisException", "pyspark.errors.exceptions.captured", WORKER_TRACEBACK)

    monkeypatch.setattr(cli, "app", fail)
    assert main(["tpch", "run"]) == ConfigError.exit_code
    printed = capsys.readouterr().err
    assert "ppml: error: cannot reach storage account devstoreaccount1" in printed
    assert "ppml: hint: check the account name" in printed and "Traceback" not in printed
