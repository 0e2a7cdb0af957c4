"""Shorter Azure Storage retry back-off for the processes of the test cluster (tests/netcluster.py).

The cluster's hosts put this folder on ``PYTHONPATH`` and set ``PPML_TEST_STORAGE_BACKOFF`` (seconds), so that
every Python process on them (the CLI, Spark's Python workers) imports this module at start-up. When the
Azure SDK's storage retry policy (``ExponentialRetry``) is imported, its defaults change from waiting 15 s +
3^n s before retry n (about 90 s in all before a request to a stopped storage service fails) to the given
number of seconds + 1 s. The number of retries stays the SDK's (3). Nothing is imported here until the SDK
is: processes that never reach storage pay nothing. Outside the test cluster (no variable) this does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_MODULES = ("azure.storage.blob._shared.policies", "azure.storage.blob._shared.policies_async")


def _patch(module) -> None:
    backoff = float(os.environ["PPML_TEST_STORAGE_BACKOFF"])
    retry = getattr(module, "ExponentialRetry", None)
    if retry is None or getattr(retry, "_ppml_test_backoff", False):
        return
    original = retry.__init__

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("initial_backoff", backoff)
        kwargs.setdefault("increment_base", 1)
        kwargs.setdefault("random_jitter_range", min(backoff, 1))
        original(self, *args, **kwargs)

    retry.__init__ = __init__
    retry._ppml_test_backoff = True


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the SDK's retry modules as usual, and patches each once it has run."""

    def find_spec(self, name, path, target=None):
        if name not in _MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("PPML_TEST_STORAGE_BACKOFF"):
    sys.meta_path.insert(0, _Finder())
