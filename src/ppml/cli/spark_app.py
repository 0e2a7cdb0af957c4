"""Runs a ppml command as a Spark application: ``spark-submit spark_app.py tpch run IN OUT ...``.

``ppml submit ... ppml tpch run ...`` names this file as the application; in the container image it is
``local://`` + :data:`ppml.deploy.image.APP_SCRIPT`. The command then finds the Spark settings that
``spark-submit`` gave the JVM (master, authentication, encryption) and builds its session from them.
"""

import sys

from ppml.cli.main import main

if __name__ == "__main__":
    main(sys.argv[1:])
