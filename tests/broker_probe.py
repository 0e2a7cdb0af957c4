"""Programs the cluster tests run on a host to ask the key broker for a key as an executor does.

Both read the broker's URL, CA and attester from the host's ``PPML_BROKER_*`` environment (what
``netcluster.Cluster.env`` sets) and print one JSON object on stdout.

``release DATA_KEY_FILE --at T [--times N]``
    Import everything, wait until the wall-clock time ``T`` (so that processes started on several hosts ask
    at once), then unwrap the file's data key through :class:`ppml.keys.broker_client.BrokerKms` ``N`` times,
    forgetting the released key in between, as ``N`` fresh executor processes would. Prints the seconds each
    release took, the key id, and the client's request count.

``stale-nonce DATA_KEY_FILE --wait S``
    Take a nonce, hold it ``S`` seconds, then ask for the key with it; print the broker's answer, then unwrap
    the key normally (a fresh nonce) and print its id. With ``S`` beyond the broker's nonce lifetime the first
    request is refused with ``403 nonce``: freshness is judged on the broker's clock, whatever this host's is.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import warnings

from ppml.errors import PpmlInsecureWarning
from ppml.keys.broker_client import clear_releases, release_counters
from ppml.keys.datakey_file import DataKeyFile
from ppml.keys.settings import KeySettings


def release(data_key: str, at: float, times: int) -> dict[str, object]:
    wrapped = DataKeyFile.load(data_key).envelope[0]
    broker = KeySettings().broker()
    time.sleep(max(0.0, at - time.time()))
    seconds, key_ids = [], set()
    for _ in range(times):
        clear_releases()
        started = time.perf_counter()
        key_ids.add(broker.unwrap(wrapped).key_id)
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "key_ids": sorted(key_ids), "requests": release_counters().get("requests", 0)}


def stale_nonce(data_key: str, wait: float) -> dict[str, object]:
    import httpx

    from ppml.attest.evidence import binding_digest
    from ppml.attest.simulated import SimulatedAttester
    from ppml.keys.broker_protocol import NONCE_PATH, RELEASE_PATH, EphemeralKey, b64, unb64

    wrapped = DataKeyFile.load(data_key).envelope[0]
    context = ssl.create_default_context(cafile=os.environ["PPML_BROKER_CA"])
    with httpx.Client(base_url=os.environ["PPML_BROKER_URL"], verify=context, timeout=30) as http:
        nonce = unb64(http.post(NONCE_PATH).json()["nonce"], what="nonce")
        time.sleep(wait)
        ephemeral = EphemeralKey()
        claims = json.loads(os.environ["PPML_BROKER_ATTESTER_SETTINGS"])["claims"]
        evidence = SimulatedAttester(claims).attest(binding_digest(nonce, ephemeral.public_bytes))
        answer = http.post(RELEASE_PATH, json={"nonce": b64(nonce), "public_key": b64(ephemeral.public_bytes),
                                                "evidence": evidence.to_json(), "keys": [wrapped.to_json()]})
    key = KeySettings().broker().unwrap(wrapped)
    return {"status": answer.status_code, "error": answer.json().get("error", {}).get("code"), "key_id": key.key_id,
            "local_time": time.time()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ask the key broker for a key as an executor does.")
    commands = parser.add_subparsers(dest="command", required=True)
    first = commands.add_parser("release")
    first.add_argument("data_key")
    first.add_argument("--at", type=float, required=True, help="wall-clock time (epoch seconds) to start at")
    first.add_argument("--times", type=int, default=1, help="releases, one after another")
    second = commands.add_parser("stale-nonce")
    second.add_argument("data_key")
    second.add_argument("--wait", type=float, required=True, help="seconds to hold the nonce")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", PpmlInsecureWarning)  # simulated attestation warns by design
    if args.command == "release":
        result = release(args.data_key, args.at, args.times)
    else:
        result = stale_nonce(args.data_key, args.wait)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
