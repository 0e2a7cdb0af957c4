"""Taking ppml to a cluster: Spark submission, Kubernetes/AKS objects, TEE node pools, Azure set-up steps.

Nothing here prints or talks to a cluster: functions return plans (a ``spark-submit`` command line, Kubernetes
objects as dictionaries, ``az`` command lines) that the command line shows, writes or runs.

* :mod:`ppml.deploy.masters`: the Spark master URLs ppml submits to (``local``, ``spark://``, ``k8s://``).
* :mod:`ppml.deploy.profiles`: TEE profiles (``none``, ``sgx``, ``cvm``, ``coco``) and what each adds to pods.
* :mod:`ppml.deploy.pods`: hardened containers and Spark's driver and executor pod templates.
* :mod:`ppml.deploy.cluster`: namespace, RBAC, network policies, the Spark authentication Secret and the
  Key Vault SecretProviderClass.
* :mod:`ppml.deploy.broker`: the key broker as a Deployment, Service and PodDisruptionBudget.
* :mod:`ppml.deploy.render`: all of it for one namespace and profile, written to a folder.
* :mod:`ppml.deploy.bigdl`: ``bigdl-ppml-submit.sh`` flags and ``spark.bigdl.kms.*`` settings, mapped.
* :mod:`ppml.deploy.submit`: the ``spark-submit`` plan for a job.
* :mod:`ppml.deploy.azure`: the Azure set-up as ``az`` command lines.
* :mod:`ppml.deploy.image`: the container image's layout, shared with ``docker/Dockerfile``.
"""
