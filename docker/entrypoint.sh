#!/bin/bash
# Spark's container contract on Kubernetes, for the ppml image (pyspark ships no entry point of its own):
#   driver ARGS...  the driver pod: spark-submit in client mode, bound to the pod's address
#   executor        an executor pod: the executor backend, from the SPARK_* variables the driver sets
#   anything else   run as given (e.g. ppml broker serve --config ...)
# With PPML_GRAMINE=sgx (sgx profile) the process starts inside the signed Gramine enclave instead.
set -euo pipefail

SPARK_HOME=${SPARK_HOME:?the image sets SPARK_HOME}

run() {
    if [ "${PPML_GRAMINE:-}" = "sgx" ]; then
        # the manifest's entry point is this shell; the enclave measures it and everything it loads
        exec gramine-sgx /opt/ppml-gramine/ppml "$@"
    fi
    exec "$@"
}

case "${1:-}" in
    driver)
        shift
        run "$SPARK_HOME/bin/spark-submit" --deploy-mode client \
            --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:?set by Spark}" "$@"
        ;;
    executor)
        # Spark passes the executor's JVM options as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ... in order.
        java_opts=()
        while IFS= read -r name; do
            java_opts+=("${!name}")
        done < <(compgen -v SPARK_JAVA_OPT_ | sort -t_ -k4 -n)
        run "$JAVA_HOME/bin/java" "${java_opts[@]}" -Xms"$SPARK_EXECUTOR_MEMORY" -Xmx"$SPARK_EXECUTOR_MEMORY" \
            -cp "${SPARK_CONF_DIR:-/opt/spark/conf}:$SPARK_HOME/jars/*" \
            org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
            --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" --cores "$SPARK_EXECUTOR_CORES" \
            --app-id "$SPARK_APPLICATION_ID" --hostname "$SPARK_EXECUTOR_POD_IP" \
            --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" --podName "$SPARK_EXECUTOR_POD_NAME"
        ;;
    *)
        run "$@"
        ;;
esac
