"""SoftHSM2 tokens for tests: one token directory per test process, a fresh token per test.

Use the fixtures by importing them into a test module (tests/ is on ``sys.path``)::

    from softhsm import pkcs11_kms, pkcs11_settings, softhsm, softhsm_token  # noqa: F401

    def test_something(pkcs11_settings):
        kms = open_kms("pkcs11", **pkcs11_settings)   # {"module", "token", "pin": "file:..."}

Why one directory per process: SoftHSM2 reads ``$SOFTHSM2_CONF`` (and so its token directory) only in
``C_Initialize``, and python-pkcs11 keeps one initialized library per path and process. The session fixture
points ``SOFTHSM2_CONF`` at its own configuration for the whole session; each test then adds a token with
``softhsm2-util --init-token --free`` and calls :func:`ppml.keys.pkcs11.refresh_tokens`, because an
initialized library does not see tokens created after ``C_Initialize``. Under ``pytest -n`` every worker has
its own directory.

When softhsm2 is not installed the tests skip (``apt-get install softhsm2``; ``bash scripts/setup.sh system``
installs it), except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

SO_PIN = "so-pin-1234"


@dataclass(frozen=True)
class SoftHsm:
    """The process's SoftHSM2 set-up: its configuration file, token directory and module path."""

    root: Path
    conf: Path
    tokendir: Path
    module: str

    def init_token(self, label: str | None = None, pin: str | None = None) -> SoftHsmToken:
        """Initialize a new token (a free slot always exists) and make the loaded library see it."""
        from ppml.keys.pkcs11 import refresh_tokens

        label = label or f"t-{uuid.uuid4().hex[:12]}"
        pin = pin or f"pin-{uuid.uuid4().hex[:8]}"
        result = subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", pin],
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)}, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.fail(f"softhsm2-util --init-token failed: {result.stdout}{result.stderr}")
        pin_file = self.root / f"{label}.pin"
        pin_file.write_text(pin)
        pin_file.chmod(0o600)
        refresh_tokens(self.module)
        return SoftHsmToken(self, label, pin, pin_file)


@dataclass(frozen=True)
class SoftHsmToken:
    """One initialized token; :attr:`settings` are the keyword arguments of ``Pkcs11Kms``."""

    hsm: SoftHsm
    label: str
    pin: str
    pin_file: Path

    @property
    def settings(self) -> dict[str, str]:
        return {"module": self.hsm.module, "token": self.label, "pin": f"file:{self.pin_file}"}

    def kms(self, **overrides):
        from ppml.keys.pkcs11 import Pkcs11Kms

        return Pkcs11Kms(**{**self.settings, **overrides})


def _missing() -> str | None:
    from ppml.keys.pkcs11 import default_module

    pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed: pip install 'ppml[hsm]'")
    if shutil.which("softhsm2-util") is None or default_module() is None:
        return ("SoftHSM2 is not installed (softhsm2-util or libsofthsm2.so missing): apt-get install softhsm2, "
                "or bash scripts/setup.sh system")
    return None


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> SoftHsm:
    """This test process's SoftHSM2: ``SOFTHSM2_CONF`` points at its configuration for the whole session."""
    reason = _missing()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from ppml.keys.pkcs11 import default_module, refresh_tokens

    root = tmp_path_factory.mktemp("softhsm")
    tokendir = root / "tokens"
    tokendir.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    module = default_module()
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    refresh_tokens(module)  # a library loaded before this fixture would still read the old configuration
    try:
        yield SoftHsm(root, conf, tokendir, module)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def softhsm_token(softhsm) -> SoftHsmToken:
    """A fresh token (random label and PIN, PIN in a 0600 file) in this process's SoftHSM2."""
    return softhsm.init_token()


@pytest.fixture
def pkcs11_settings(softhsm_token) -> dict[str, str]:
    """``Pkcs11Kms`` keyword arguments for a fresh token: ``{"module", "token", "pin": "file:PATH"}``."""
    return softhsm_token.settings


@pytest.fixture
def pkcs11_kms(softhsm_token):
    """A ``Pkcs11Kms`` on a fresh token, with primary key ``default`` version 1; the key cache is cleared."""
    from ppml.keys.keyring import clear_cache

    clear_cache()
    kms = softhsm_token.kms()
    kms.create_key("default")
    yield kms
    clear_cache()
