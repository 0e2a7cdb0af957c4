"""``ppml demo``: the whole round trip on the embedded defaults, explained as it runs."""

from __future__ import annotations

import csv
import hashlib
import random
import time
from pathlib import Path
from typing import Annotated

import typer

from ppml.cli._common import JsonOpt, demo_keys, emit_json, err
from ppml.errors import IntegrityError
from ppml.io import files, rotation
from ppml.io.storage import locate

_NATIONS = ["ALGERIA", "ARGENTINA", "BRAZIL", "CANADA", "EGYPT", "FRANCE", "GERMANY", "INDIA", "JAPAN", "KENYA"]


def _generate(folder: Path, rows: int) -> None:
    """Two CSV tables, deterministic for a given row count."""
    rng = random.Random(rows)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "customers.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["custkey", "name", "nation", "acctbal", "phone"])
        for key in range(1, rows // 10 + 1):
            writer.writerow([key, f"Customer#{key:09d}", rng.choice(_NATIONS), f"{rng.uniform(-999, 9999):.2f}",
                             f"{rng.randint(10, 34)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"])
    with open(folder / "orders.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["orderkey", "custkey", "status", "totalprice", "orderdate", "comment"])
        for key in range(1, rows + 1):
            writer.writerow([key, rng.randint(1, max(1, rows // 10)), rng.choice("FOP"),
                             f"{rng.uniform(800, 500000):.2f}",
                             f"199{rng.randint(2, 8)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                             rng.choice(["quickly final", "furiously regular", "carefully ironic"]) + " requests"])


def _digest_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Working folder for the demo.")] = Path("demo"),
    rows: Annotated[int, typer.Option("--rows", min=10, help="Orders to generate.")] = 200_000,
    as_json: JsonOpt = False,
) -> None:
    """Run the end-to-end demo: key store, keys, encrypt a data set, inspect, verify, decrypt, rotate.

    Re-running reuses the key store and data set already in --dir.

    **Example**: `ppml demo --dir /tmp/ppml-demo --rows 50000`
    """
    steps: list[dict[str, object]] = []

    def step(text: str, **facts: object) -> None:
        steps.append({"step": text, **facts})
        if not as_json:
            err.print(f"[bold cyan]{len(steps):>2}.[/] {text}")

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    keys, record, key = demo_keys(directory, "default", directory / "data-key.json", step)
    ring = keys.keyring()

    plain = directory / "plain"
    if not (plain / "orders.csv").exists():
        _generate(plain, rows)
    sizes = {p.name: p.stat().st_size for p in plain.iterdir()}
    step(f"Plaintext data set in {plain}: " + ", ".join(f"{n} ({s / 1e6:.1f} MB)" for n, s in sorted(sizes.items())))

    encrypted = directory / "encrypted"
    report = files.encrypt(str(plain), str(encrypted), key=key, envelope=record.envelope, force=True)
    step(f"Encrypted {report.files} files ({report.bytes / 1e6:.1f} MB) into {encrypted} with {report.mode} "
         f"in {report.seconds:.2f} s.", seconds=round(report.seconds, 3))

    info = files.describe(locate(str(encrypted / "orders.csv.ppml")))
    step(f"Inspected orders.csv.ppml without any key: format {info.format}, segment size "
         f"{info.facts['segment_size']}, data key wrapped by {', '.join(w.reference for w in info.envelope)}.")

    checked = files.verify(str(encrypted), keyring=ring)
    bad = [d for d in checked.details if not d["ok"]]
    step(f"Verified every segment of {checked.files} files: {'all authentic' if not bad else f'{len(bad)} FAILED'}.")

    with files.open_decrypted(str(encrypted / "orders.csv.ppml"), keyring=ring) as reader:
        reader.seek(reader.size // 2)
        reader.readline()
        middle_row = reader.readline().decode().strip()
    step(f"Random access: read one row from the middle of orders.csv.ppml, decrypting only its segment: "
         f"{middle_row[:40]}…")

    decrypted = directory / "decrypted"
    back = files.decrypt(str(encrypted), str(decrypted), keyring=ring, force=True)
    same = _digest_tree(plain) == _digest_tree(decrypted)
    step(f"Decrypted into {decrypted} in {back.seconds:.2f} s; SHA-256 of every file matches the original: "
         f"{'yes' if same else 'NO'}.", round_trip=same)

    kms = keys.primary()
    kms.rotate_key("default")
    rewrapped = rotation.rewrap(str(encrypted), keyring=ring, backend=kms, key_name="default")
    usage = rotation.key_usage(rotation.scan(str(encrypted)))
    step(f"Rotated local:default and re-wrapped {rewrapped.files} file headers in place (no re-encryption); "
         "files per key version: " + ", ".join(f"{r}: {n}" for r, n in sorted(usage.items())) + ".")

    ok = same and not bad
    total = time.perf_counter() - started
    if as_json:
        emit_json("demo", {"ok": ok, "seconds": round(total, 3), "steps": steps})
    else:
        err.print(f"[bold {'green' if ok else 'red'}]{'Round trip proven' if ok else 'Round trip FAILED'}[/] "
                  f"in {total:.1f} s. Everything is in {directory}.")
    if not ok:
        raise typer.Exit(IntegrityError.exit_code)
