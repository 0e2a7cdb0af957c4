"""Where the attestation test vectors live, and the facts about them that tests pin.

The vectors (real SGX/TDX quotes with Intel collateral, real MAA tokens) are not copied into the
repository: ``$PPML_ATTESTATION_TESTDATA`` (default ``/work/shared/testdata/attestation``) points at them,
and its ``SOURCES.md`` says where each came from. Tests that need them are skipped when the folder is missing.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

ATTESTATION_DATA = Path(os.environ.get("PPML_ATTESTATION_TESTDATA", "/work/shared/testdata/attestation"))

requires_attestation_data = pytest.mark.skipif(
    not (ATTESTATION_DATA / "SOURCES.md").is_file(),
    reason=f"attestation test vectors not found in {ATTESTATION_DATA} (set PPML_ATTESTATION_TESTDATA)")

# Inside the validity of the SGX/TDX sample collateral (TCB info and QE identity: 2025-06-19 to 2025-07-19).
DCAP_SAMPLE_TIME = datetime(2025, 7, 15, tzinfo=timezone.utc)
# Inside the validity of the outdated TDX sample's collateral (2026-02-18 to 2026-03-20).
DCAP_OUTDATED_TIME = datetime(2026, 3, 1, tzinfo=timezone.utc)
# The 2021 MAA SGX token: nbf = iat = 2021-05-05T19:58:36Z, exp = 2021-05-06T03:58:36Z.
MAA_2021_TIME = datetime(2021, 5, 5, 22, tzinfo=timezone.utc)
MAA_2021_ISSUER = "https://sharedwus.wus.attest.azure.net"
MAA_SEVSNP_ISSUER = "https://sharedweu.weu.test.attest.azure.net"


def vector(name: str) -> Path:
    """The path of one test vector file."""
    return ATTESTATION_DATA / name
