"""Release policies: parsing is strict, evaluation allows exactly what a rule requires and says why not."""

from __future__ import annotations

import pytest
import yaml

from ppml.attest.evidence import VerifiedEvidence
from ppml.attest.policy import load_policies, load_policy, parse_duration
from ppml.errors import ConfigError

MRENCLAVE, MRSIGNER = "aa" * 32, "bb" * 32
SGX_POLICY = {
    "name": "analytics",
    "keys": ["pkcs11:token/tpch", "local:tpch*"],
    "release_lifetime": "10m",
    "allow": [{"type": "sgx", "mrenclave": [MRENCLAVE.upper(), "cc" * 32], "mrsigner": MRSIGNER,
               "isv_prod_id": 1, "min_isv_svn": 3, "tcb_status": ["UpToDate", "SWHardeningNeeded"]},
              {"type": "tpm", "pcrs": {"sha256": {0: "11" * 32, 7: "22" * 32, 11: "55" * 32}},
               "allow_without_tee": True},
              {"type": "maa", "issuer": "https://a.attest.azure.net",
               "claims": {"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-hostdata": "66" * 32}}],
}


def _write(tmp_path, policy, name="p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(policy))
    return path


def _sgx(**overrides) -> VerifiedEvidence:
    claims = {"mrenclave": MRENCLAVE, "mrsigner": MRSIGNER, "isv_prod_id": 1, "isv_svn": 3, "debug": False,
              "tcb_status": "UpToDate", **overrides}
    return VerifiedEvidence("sgx", claims, None, "sgx test")


@pytest.fixture
def policy(tmp_path):
    return load_policy(_write(tmp_path, SGX_POLICY))


def test_a_matching_sgx_enclave_is_allowed_with_the_release_lifetime(policy):
    decision = policy.evaluate(_sgx())
    assert decision.allowed and decision.lifetime == 600 and decision.policy == "analytics"
    assert policy.evaluate(_sgx(mrenclave="cc" * 32, tcb_status="SWHardeningNeeded", isv_svn=9)).allowed
    # An allowed release names the evidence's values of what the rule required, and nothing else it carried.
    assert policy.evaluate(_sgx(extra="x")).claims == {
        "debug": False, "mrenclave": MRENCLAVE, "mrsigner": MRSIGNER, "isv_prod_id": 1, "isv_svn": 3,
        "tcb_status": "UpToDate"}
    assert policy.evaluate(_sgx(mrenclave="dd" * 32)).claims == {}


@pytest.mark.parametrize(("claims", "reason"), [
    ({"mrenclave": "dd" * 32}, "mrenclave is 'dddd"),
    ({"mrsigner": "ee" * 32}, "mrsigner is"),
    ({"isv_prod_id": 2}, "isv_prod_id is 2"),
    ({"isv_svn": 2}, "isv_svn 2 is below the minimum 3"),
    ({"debug": True}, "debug enclave"),
    ({"tcb_status": "OutOfDate"}, "TCB status is 'OutOfDate', expected one of 'UpToDate', 'SWHardeningNeeded'"),
    ({"mrenclave": None}, "mrenclave is missing"),
])
def test_each_sgx_requirement_bites(policy, claims, reason):
    decision = policy.evaluate(_sgx(**claims))
    assert not decision.allowed and reason in decision.reason


def test_debug_is_allowed_only_when_a_rule_says_so(tmp_path):
    relaxed = {**SGX_POLICY, "allow": [{**SGX_POLICY["allow"][0], "allow_debug": True}]}
    assert load_policy(_write(tmp_path, relaxed)).evaluate(_sgx(debug=True)).allowed


def test_tpm_pcrs_and_maa_claims(policy):
    pcrs = {"sha256": {"0": "11" * 32, "7": "22" * 32, "8": "33" * 32, "11": "55" * 32}}
    allowed = policy.evaluate(VerifiedEvidence("tpm", {"pcrs": pcrs}, None, "tpm"))
    assert allowed.allowed and allowed.claims == {"pcrs": {"sha256": {k: pcrs["sha256"][k] for k in ("0", "7", "11")}}}
    changed = {"sha256": {**pcrs["sha256"], "7": "44" * 32}}
    denied = policy.evaluate(VerifiedEvidence("tpm", {"pcrs": changed}, None, "tpm"))
    assert not denied.allowed and "PCR sha256:7" in denied.reason
    maa = {"issuer": "https://a.attest.azure.net/", "x-ms-attestation-type": "sevsnpvm",
           "x-ms-sevsnpvm-hostdata": "66" * 32, "debug": False}
    assert policy.evaluate(VerifiedEvidence("maa", maa, None, "maa")).claims == {
        "debug": False, "issuer": maa["issuer"], "x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-hostdata": "66" * 32}
    wrong_issuer = policy.evaluate(VerifiedEvidence("maa", {**maa, "issuer": "https://evil"}, None, "maa"))
    assert not wrong_issuer.allowed and "issuer" in wrong_issuer.reason


def test_an_evidence_type_no_rule_names_is_refused_simulated_included(policy):
    decision = policy.evaluate(VerifiedEvidence("simulated", {}, None, "sim", simulated=True))
    assert not decision.allowed and "does not accept simulated evidence" in decision.reason


def test_key_patterns(policy):
    assert policy.governs("local:tpch") and policy.governs("local:tpch-2024") and policy.governs("pkcs11:token/tpch")
    assert not policy.governs("local:other") and not policy.governs("azure:tpch")


@pytest.mark.parametrize(("change", "message"), [
    ({"allow": [{"type": "sgx", "mrenclav": MRENCLAVE}]}, "unknown field"),
    ({"allow": [{"type": "sev", "x": 1}]}, "unknown evidence type"),
    ({"allow": [{"type": "sgx", "tcb_status": ["UpToDate"]}]}, "must pin the workload: mrenclave or mrsigner"),
    ({"allow": [{"type": "sgx", "isv_prod_id": 0, "min_isv_svn": 0}]}, "must pin the workload"),
    ({"allow": [{"type": "maa", "issuer": "https://a", "claims": {}}]}, "must pin the workload: claims"),
    ({"allow": [{"type": "tpm", "pcrs": {}}]}, "must pin the workload: a PCR among 8 or 9"),
    ({"allow": [{"type": "tpm", "pcrs": {"sha256": {}}}]}, "must pin the workload"),
    ({"allow": [{"type": "tpm", "pcrs": {"sha256": {7: None}}}]}, "PCR sha256:7: must be text"),
    ({"allow": [{"type": "maa", "claims": {"x-ms-sgx-mrenclave": None}}]}, "must be text, a number"),
    ({"allow": [{"type": "maa", "claims": {"x": []}}]}, "non-empty list"),
    ({"allow": [{"type": "maa", "claims": {"x": {"nested": 1}}}]}, "must be text, a number"),
    ({"allow": [{"type": "sgx", "mrenclave": ""}]}, "must be text"),
    ({"allow": [{"type": "sgx", "mrenclave": MRENCLAVE, "allow_debug": "false"}]}, "allow_debug must be true or false"),
    ({"allow": []}, "at least one rule"),
    ({"keys": []}, "'keys' must list"),
    ({"release_lifetime": "ten minutes"}, "duration"),
    ({"relase_lifetime": "10m"}, "unknown field"),
    ({"allow": [{"type": "tpm", "pcrs": {"sha256": ["00"]}}]}, "'pcrs' must map"),
    ({"allow": [{"type": "sgx", "mrenclave": MRENCLAVE, "min_isv_svn": "3"}]}, "non-negative integer"),
])
def test_policy_files_are_strict(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_policy(_write(tmp_path, {**SGX_POLICY, **change}))


def test_a_simulated_rule_may_stand_alone_and_duplicate_names_are_refused(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    _write(folder, {"name": "dev", "keys": ["local:*"], "allow": [{"type": "simulated"}]}, "a.yaml")
    assert [p.name for p in load_policies([folder])] == ["dev"]
    _write(folder, {"name": "dev", "keys": ["local:x"], "allow": [{"type": "simulated"}]}, "b.yml")
    with pytest.raises(ConfigError, match="used by both"):
        load_policies([folder])


def test_durations():
    assert [parse_duration(v, what="x") for v in (90, "90s", "10m", "2h", "1d")] == [90, 90, 600, 7200, 86400]
    with pytest.raises(ConfigError):
        parse_duration(True, what="x")


def test_evidence_that_does_not_say_it_is_not_debuggable_counts_as_debuggable(policy):
    maa = {"issuer": "https://a.attest.azure.net", "x-ms-attestation-type": "sevsnpvm",
           "x-ms-compliance-status": "azure-compliant-cvm"}
    decision = policy.evaluate(VerifiedEvidence("maa", maa, None, "maa"))
    assert not decision.allowed and "does not say whether the TEE is debuggable" in decision.reason
    assert not policy.evaluate(_sgx(debug=None)).allowed


def test_values_match_with_their_type_and_nested_claims_by_path(tmp_path):
    policy = load_policy(_write(tmp_path, {"name": "p", "keys": ["x:*"], "allow": [
        {"type": "maa", "claims": {"x-ms-isolation-tee.x-ms-attestation-type": "sevsnpvm", "level": 1,
                                   "x-ms-compliance-status": "azure-compliant-cvm",
                                   "x-ms-isolation-tee.x-ms-sevsnpvm-hostdata": "ab" * 32}}]}))
    claims = {"x-ms-isolation-tee": {"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-hostdata": "ab" * 32},
              "level": 1, "debug": False, "x-ms-compliance-status": "azure-compliant-cvm"}
    assert policy.evaluate(VerifiedEvidence("maa", claims, None, "maa")).allowed
    assert not policy.evaluate(VerifiedEvidence("maa", {**claims, "level": True}, None, "maa")).allowed
    wrong_case = {**claims, "x-ms-compliance-status": "AZURE-COMPLIANT-CVM"}  # only hex and URLs fold case
    assert not policy.evaluate(VerifiedEvidence("maa", wrong_case, None, "maa")).allowed
    nested = {**claims, "x-ms-isolation-tee": {**claims["x-ms-isolation-tee"], "x-ms-attestation-type": "sgx"}}
    assert "x-ms-isolation-tee.x-ms-attestation-type is 'sgx'" in policy.evaluate(
        VerifiedEvidence("maa", nested, None, "maa")).reason


def test_key_patterns_ignore_case(policy):
    assert policy.governs("LOCAL:TPCH") and policy.governs("pkcs11:TOKEN/tpch")


# The platform-only rules an attacker on the same platform would satisfy, and rules that name a workload.
PLATFORM_ONLY = {
    "sgx-mrsigner-alone": {"type": "sgx", "mrsigner": MRSIGNER, "min_isv_svn": 3},
    "tdx-mrtd-alone": {"type": "tdx", "mrtd": "aa" * 48, "mrseam": "bb" * 48},
    "tdx-rtmr0-firmware-config": {"type": "tdx", "mrtd": "aa" * 48, "rtmr0": "cc" * 48},
    "tdx-rtmr-without-mrtd": {"type": "tdx", "rtmr2": "cc" * 48},
    "maa-documented-example": {"type": "maa", "claims": {"x-ms-attestation-type": "sevsnpvm",
                                                          "x-ms-compliance-status": "azure-compliant-cvm"}},
    "maa-sgx-signer-alone": {"type": "maa", "claims": {"x-ms-sgx-mrsigner": MRSIGNER}},
    "tpm-firmware-pcrs": {"type": "tpm", "pcrs": {"sha256": {0: "11" * 32, 7: "22" * 32}}, "allow_without_tee": True},
    "tpm-resettable-pcr": {"type": "tpm", "pcrs": {"sha256": {16: "11" * 32, 23: "22" * 32}},
                           "allow_without_tee": True},
}
WORKLOAD = {
    "sgx-mrenclave": {"type": "sgx", "mrenclave": MRENCLAVE},
    "sgx-signer-and-product": {"type": "sgx", "mrsigner": MRSIGNER, "isv_prod_id": 1},
    "tdx-rtmr2": {"type": "tdx", "mrtd": "aa" * 48, "rtmr2": "cc" * 48},
    "tdx-mrconfigid": {"type": "tdx", "mrtd": "aa" * 48, "mrconfigid": "dd" * 48},
    "maa-sgx": {"type": "maa", "claims": {"x-ms-sgx-mrenclave": MRENCLAVE}},
    "maa-sevsnp-launch": {"type": "maa", "claims": {"x-ms-sevsnpvm-launchmeasurement": "ee" * 48}},
    "maa-cvm-hostdata": {"type": "maa", "claims": {"x-ms-isolation-tee.x-ms-sevsnpvm-hostdata": "ff" * 32}},
    "maa-tdx": {"type": "maa", "claims": {"tdx_mrtd": "aa" * 48, "tdx_rtmr3": "cc" * 48}},
    "tpm-os-pcr": {"type": "tpm", "pcrs": {"sha256": {7: "22" * 32, 11: "33" * 32}}, "allow_without_tee": True},
}


@pytest.mark.parametrize("rule", list(PLATFORM_ONLY))
def test_a_rule_that_pins_only_the_platform_is_refused(tmp_path, rule):
    with pytest.raises(ConfigError, match=f"a {PLATFORM_ONLY[rule]['type']} rule must pin the workload"):
        load_policy(_write(tmp_path, {**SGX_POLICY, "allow": [PLATFORM_ONLY[rule]]}))


@pytest.mark.parametrize("rule", list(WORKLOAD))
def test_a_rule_that_pins_a_workload_is_accepted(tmp_path, rule):
    assert load_policy(_write(tmp_path, {**SGX_POLICY, "allow": [WORKLOAD[rule]]})).rules[0].type == WORKLOAD[rule]["type"]


def test_a_tpm_rule_must_accept_that_a_tpm_quote_proves_no_tee(tmp_path):
    rule = {**WORKLOAD["tpm-os-pcr"]}
    del rule["allow_without_tee"]
    with pytest.raises(ConfigError, match="a tpm rule must say allow_without_tee: true"):
        load_policy(_write(tmp_path, {**SGX_POLICY, "allow": [rule]}))
    with pytest.raises(ConfigError, match="allow_without_tee must be true or false"):
        load_policy(_write(tmp_path, {**SGX_POLICY, "allow": [{**rule, "allow_without_tee": "yes"}]}))
