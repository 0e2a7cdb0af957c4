#!/usr/bin/env python3
"""Throughput and memory of ppml's ``aes_gcm_stream`` format, side by side with its ceilings.

One run measures, on the same machine and the same data:

1. raw AES-256-GCM from ``cryptography`` (``AESGCM`` over 1 MiB buffers, in memory): the ceiling;
2. the Python API: :class:`~ppml.crypto.gcm_stream.EncryptingWriter` over an open file (1 MiB writes)
   and :class:`~ppml.crypto.gcm_stream.DecryptingReader` (``read(1 MiB)`` and ``readinto`` of a
   preallocated 1 MiB buffer), on a local file that is warm in the page cache;
3. the CLI: ``ppml encrypt`` / ``ppml decrypt`` as subprocesses on the same file, with a throw-away key
   store and data key made by ``ppml keys init`` / ``ppml keys data-key``;
4. plain file I/O (read, and read+write copy, 1 MiB chunks): the I/O baseline;
5. peak RSS of an API encrypt and an API decrypt, each in a child process, for several file sizes.

MB, GB and MB/s are decimal (10^6, 10^9 bytes); GiB/MiB are binary. Throughput counts plaintext bytes.
Write legs end at ``close()`` (no fsync unless ``--fsync``); ``os.sync()`` runs, untimed, before every
timed run so that no leg pays for the write-back of the previous one.

Usage::

    .venv/bin/python benchmarks/crypto_throughput.py                      # 1 GiB, memory at 1 GiB
    .venv/bin/python benchmarks/crypto_throughput.py --memory-sizes 1,2   # add the 2 GiB memory leg
    .venv/bin/python benchmarks/crypto_throughput.py --size-gib 0.25 --repeat 1 --memory-sizes 0.25  # quick
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB
HERE = Path(__file__).resolve().parent
DATA_ROOT = HERE / "_data"
PPML = Path(sys.executable).with_name("ppml")
RSS_TARGET_MB = 200.0
DECRYPT_TARGET_MBPS = 2000.0


# ---------------------------------------------------------------------------------------------------
# helpers


def _proc_status(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in bytes; None where unavailable."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _resident(path: Path) -> str:
    """How much of ``path`` is in the page cache, via util-linux ``fincore`` when installed."""
    if not shutil.which("fincore"):
        return "unknown (fincore not installed)"
    try:
        res = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", str(path)],
                             capture_output=True, text=True, check=True).stdout.split()
        resident, size = int(res[0]), int(res[1])
        return f"{resident / size:.0%} resident ({resident:,} of {size:,} bytes)" if size else "empty file"
    except (subprocess.CalledProcessError, ValueError, IndexError) as exc:
        return f"unknown ({exc})"


def _cmd(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine_info() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
        accel = [f for f in ("aes", "pclmulqdq", "vaes", "vpclmulqdq", "avx2", "avx512f", "sha_ni") if f in flags]
    except OSError:
        accel = []
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    return {
        "nproc": _cmd("nproc"),
        "cpu": cpu,
        "cpu_flags": " ".join(accel),
        "ram": ram,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


@dataclass
class Leg:
    """One measured operation: repeated runs of (wall seconds, CPU seconds)."""

    name: str
    kind: str  # "encrypt", "decrypt" or "io": which raw AES-GCM figure it is compared with
    nbytes: int
    threads: int = 1
    runs: list[tuple[float, float]] = field(default_factory=list)
    peak_rss: int | None = None
    note: str = ""

    def best(self) -> tuple[float, float]:
        return min(self.runs)

    def mbps(self, wall: float | None = None) -> float:
        return self.nbytes / (wall if wall is not None else self.best()[0]) / 1e6

    def median_mbps(self) -> float:
        return self.nbytes / statistics.median(w for w, _ in self.runs) / 1e6

    def cpu_use(self) -> float:
        wall, cpu = self.best()
        return cpu / wall if wall else 0.0


def timed(leg: Leg, repeat: int, run, before=None) -> Leg:
    for _ in range(repeat):
        if before:
            before()
        os.sync()
        cpu0, t0 = time.process_time(), time.perf_counter()
        run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        leg.runs.append((wall, cpu))
        print(f"  {leg.name}: {leg.mbps(wall):,.0f} MB/s ({wall:.3f} s, CPU {cpu / wall:.0%})", file=sys.stderr)
    return leg


# ---------------------------------------------------------------------------------------------------
# the operations (shared by the in-process legs and the memory children)


def api_encrypt(src: Path, dst: Path, key, envelope, segment_size: int, fsync: bool = False) -> int:
    from ppml.crypto.gcm_stream import EncryptingWriter

    total = 0
    with open(src, "rb") as reader, open(dst, "wb") as raw:
        with EncryptingWriter(raw, key, envelope, segment_size=segment_size) as writer:
            while chunk := reader.read(CHUNK):
                writer.write(chunk)
                total += len(chunk)
        if fsync:
            os.fsync(raw.fileno())
    return total


def api_decrypt_read(src: Path, key, out: Path | None = None, fsync: bool = False) -> int:
    from ppml.crypto.gcm_stream import DecryptingReader

    total = 0
    with open(src, "rb") as raw, DecryptingReader(raw, key, name=str(src)) as reader:
        if out is None:
            while chunk := reader.read(CHUNK):
                total += len(chunk)
        else:
            with open(out, "wb") as sink:
                while chunk := reader.read(CHUNK):
                    sink.write(chunk)
                    total += len(chunk)
                if fsync:
                    sink.flush()
                    os.fsync(sink.fileno())
    return total


def api_decrypt_readinto(src: Path, key, digest=None) -> int:
    from ppml.crypto.gcm_stream import DecryptingReader

    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    with open(src, "rb") as raw, DecryptingReader(raw, key, name=str(src)) as reader:
        while n := reader.readinto(buffer):
            if digest is not None:
                digest.update(view[:n])
            total += n
    return total


def open_key(keystore: Path, data_key: Path):
    """The data key and its envelope, unwrapped through the key store like any ppml user would."""
    from ppml.keys.keyring import KeyRing
    from ppml.keys.local import LocalKms

    ring = KeyRing([LocalKms(keystore)])  # passphrase from $PPML_KEYSTORE_PASSWORD
    record, key = ring.open_data_key_file(str(data_key))
    return key, record.envelope


def child_main(spec: dict) -> None:
    """Run one API operation in this (child) process; print timings and peak RSS as JSON."""
    key, envelope = open_key(Path(spec["keystore"]), Path(spec["data_key"]))
    setup_peak = _proc_status("VmHWM")
    reset = _reset_peak_rss()
    baseline = _proc_status("VmRSS")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    if spec["op"] == "encrypt":
        nbytes = api_encrypt(Path(spec["src"]), Path(spec["dst"]), key, envelope, spec["segment_size"])
    else:
        nbytes = api_decrypt_read(Path(spec["src"]), key)
    seconds = time.perf_counter() - t0
    print(json.dumps({"bytes": nbytes, "seconds": seconds, "setup_peak": setup_peak, "reset": reset,
                      "baseline_rss": baseline, "op_peak": _proc_status("VmHWM") if reset else None,
                      "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}))


def run_measured(argv: list[str], env: dict[str, str], stdout_path: Path) -> tuple[float, object, str]:
    """Run a subprocess; return (wall seconds, its own rusage, stdout). Raises on a non-zero exit."""
    with open(stdout_path, "wb") as out, tempfile.TemporaryFile() as errf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=errf)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            errf.seek(0)
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{errf.read().decode(errors='replace')}")
    return wall, usage, stdout_path.read_text()


# ---------------------------------------------------------------------------------------------------
# the benchmark


def raw_aesgcm(nbytes: int, repeat: int) -> list[Leg]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    plain = os.urandom(CHUNK)
    sealed = aead.encrypt(nonce, plain, None)
    out_plain, out_sealed = bytearray(len(plain)), bytearray(len(sealed))
    count = -(-nbytes // CHUNK)
    total = count * CHUNK

    def loop(fn):
        def run():
            for _ in range(count):
                fn()
        return run

    legs = [
        timed(Leg("raw AESGCM.encrypt, 1 MiB buffers (in memory)", "encrypt", total), repeat,
              loop(lambda: aead.encrypt(nonce, plain, None))),
        timed(Leg("raw AESGCM.decrypt, 1 MiB buffers (in memory)", "decrypt", total), repeat,
              loop(lambda: aead.decrypt(nonce, sealed, None))),
    ]
    if hasattr(aead, "encrypt_into"):  # cryptography >= 45: no allocation per call
        legs += [
            timed(Leg("raw AESGCM.encrypt_into, reused buffer", "encrypt", total), repeat,
                  loop(lambda: aead.encrypt_into(nonce, plain, None, out_sealed))),
            timed(Leg("raw AESGCM.decrypt_into, reused buffer", "decrypt", total), repeat,
                  loop(lambda: aead.decrypt_into(nonce, sealed, None, out_plain))),
        ]
    return legs


def make_plaintext(path: Path, nbytes: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = nbytes
        while left:
            chunk = os.urandom(min(CHUNK, left))
            handle.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    os.sync()
    return digest.hexdigest()


def plain_read(src: Path) -> int:
    total = 0
    with open(src, "rb") as handle:
        while chunk := handle.read(CHUNK):
            total += len(chunk)
    return total


def plain_copy(src: Path, dst: Path, fsync: bool = False) -> int:
    total = 0
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            total += len(chunk)
        if fsync:
            writer.flush()
            os.fsync(writer.fileno())
    return total


def cli_leg(name: str, kind: str, nbytes: int, repeat: int, argv: list[str], env: dict[str, str], dst: Path,
            work: Path) -> Leg:
    leg = Leg(name, kind, nbytes)
    internal = []
    peaks = []
    for _ in range(repeat):
        _unlink(dst)
        os.sync()
        wall, usage, stdout = run_measured(argv, env, work / "cli-stdout.json")
        cpu = usage.ru_utime + usage.ru_stime
        leg.runs.append((wall, cpu))
        peaks.append(usage.ru_maxrss * 1024)
        report = json.loads(stdout)
        if report["bytes"] != nbytes:
            raise RuntimeError(f"{name}: processed {report['bytes']} bytes, expected {nbytes}")
        internal.append(report["seconds"])
        print(f"  {name}: {leg.mbps(wall):,.0f} MB/s wall ({wall:.3f} s; in-process {report['seconds']:.3f} s, "
              f"CPU {cpu / wall:.0%}, peak RSS {usage.ru_maxrss / 1024:.0f} MiB)", file=sys.stderr)
    leg.peak_rss = max(peaks)
    leg.note = (f"wall time of the subprocess, incl. interpreter start-up, imports and the Argon2id key-store "
                f"unlock; the file operation alone (the `seconds` of its --json report, key already unwrapped): "
                f"{nbytes / min(internal) / 1e6:,.0f} MB/s")
    return leg


def memory_leg(size_gib: float, work: Path, env: dict[str, str], keystore: Path, data_key: Path,
               segment_size: int, reuse: tuple[Path, str] | None) -> dict:
    nbytes = int(size_gib * GiB)
    if reuse is not None:
        src, _ = reuse
    else:
        src = work / f"mem-{size_gib:g}GiB.bin"
        print(f"  generating {nbytes:,} bytes for the {size_gib:g} GiB memory leg", file=sys.stderr)
        make_plaintext(src, nbytes)
    enc = work / f"mem-{size_gib:g}GiB.ppml"
    result = {"size_gib": size_gib, "bytes": nbytes}
    for op, in_path, out_path in (("encrypt", src, enc), ("decrypt", enc, None)):
        spec = {"op": op, "src": str(in_path), "dst": str(out_path) if out_path else None,
                "keystore": str(keystore), "data_key": str(data_key), "segment_size": segment_size}
        os.sync()
        _, usage, stdout = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                                        env, work / "child-stdout.json")
        report = json.loads(stdout)
        if report["bytes"] != nbytes:
            raise RuntimeError(f"memory leg {op}: processed {report['bytes']} bytes, expected {nbytes}")
        result[op] = {**report, "ru_maxrss": usage.ru_maxrss * 1024, "mbps": nbytes / report["seconds"] / 1e6}
        op_peak = f"{report['op_peak'] / 1e6:.0f} MB" if report["op_peak"] else "n/a"
        print(f"  {op} {size_gib:g} GiB in a child: peak RSS {usage.ru_maxrss * 1024 / 1e6:.0f} MB "
              f"(during the stream: {op_peak}), {result[op]['mbps']:,.0f} MB/s", file=sys.stderr)
    _unlink(enc)
    if reuse is None:
        _unlink(src)
    return result


def fmt_mb(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:,.0f} MB"


def render(info: dict, args, legs: list[Leg], memory: list[dict], checks: list[tuple[str, bool]],
           warm: dict[str, str], setup: dict[str, float]) -> str:
    raw = {leg.kind: leg for leg in legs if leg.name.startswith("raw AESGCM.") and "_into" not in leg.name}
    copy = next(leg for leg in legs if leg.name.startswith("plain copy"))
    starved = min((leg for leg in legs if not leg.name.startswith("CLI")), key=Leg.cpu_use)
    contention = ("Every in-process leg had a core to itself (CPU use ≥ 90%)." if starved.cpu_use() >= 0.9 else
                  f"Other work competed for the CPU ({starved.name} got {starved.cpu_use():.0%} of a core): "
                  "the figures are pessimistic and noisy.")
    lines = [
        f"Machine: {info['nproc']} CPU(s), {info['cpu']} ({info['cpu_flags']}), {info['ram']} RAM, "
        f"Linux {info['kernel']}, Python {info['python']}, cryptography {info['cryptography']} "
        f"({info['openssl']}), {info['date']}",
        "",
        f"Load average (1, 5, 15 min) at start: {info['loadavg_start']}; at end: {info['loadavg_end']} "
        "(this benchmark's own I/O adds to it). " + contention,
        "",
        f"File: {args.size_bytes:,} bytes of random data on local disk, segment preset {args.segment}; "
        f"best of {args.repeat} run(s) (median in brackets). Page cache before the timed reads: "
        + "; ".join(f"{name} {state}" for name, state in warm.items()) + ".",
        "",
        "| operation | MB/s | MB/s per core | CPU use | × raw AES-GCM | × plain copy | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for leg in legs:
        base = raw.get(leg.kind)
        ratio = "—" if base is None or any(leg is r for r in raw.values()) else f"{leg.mbps() / base.mbps():.2f}"
        vs_copy = "—" if leg is copy else f"{leg.mbps() / copy.mbps():.2f}"
        lines.append(
            f"| {leg.name} | {leg.mbps():,.0f} ({leg.median_mbps():,.0f}) | {leg.mbps() / leg.threads:,.0f} | "
            f"{leg.cpu_use():.0%} | {ratio} | {vs_copy} | {fmt_mb(leg.peak_rss)} |"
        )
    notes = [f"* {leg.name}: {leg.note}" for leg in legs if leg.note]
    if notes:
        lines += ["", *notes]
    lines += [
        "",
        "Every ppml leg runs on one thread (the API is single-threaded; the CLI runs one file inline), so MB/s per "
        "core = MB/s. CPU use = CPU seconds / wall seconds of the best run. × raw AES-GCM compares with "
        "AESGCM.encrypt or .decrypt over 1 MiB buffers. Key setup (untimed): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in setup.items()) + ".",
    ]
    if memory:
        lines += [
            "",
            "Peak RSS of an API encrypt (file → EncryptingWriter → file) and decrypt "
            "(DecryptingReader.read(1 MiB)) in a child process. *whole process* = ru_maxrss (interpreter, "
            "imports, and the Argon2id key-store unlock, 64 MiB); *streaming* = VmHWM reset just before the "
            "operation (/proc/self/clear_refs), i.e. the process's peak while the file streams.",
            "",
            "| file size | operation | MB/s | peak RSS, whole process | peak RSS, streaming | RSS before streaming "
            "| minor page faults while streaming |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for entry in memory:
            for op in ("encrypt", "decrypt"):
                r = entry[op]
                lines.append(f"| {entry['size_gib']:g} GiB | {op} | {r['mbps']:,.0f} | {fmt_mb(r['ru_maxrss'])} | "
                             f"{fmt_mb(r['op_peak'])} | {fmt_mb(r['baseline_rss'])} | {r['minor_faults']:,} |")
    lines += ["", "Checks:", *[f"* {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1.0, help="size of the test file in GiB (default 1.0)")
    parser.add_argument("--segment", default="AES256_GCM_HKDF_1MB", help="segment preset (default %(default)s)")
    parser.add_argument("--workdir", type=Path, help="directory on the disk to test; the data goes into a fresh "
                                                     "temp dir inside it (default: benchmarks/_data, gitignored)")
    parser.add_argument("--keep", action="store_true", help="keep the data files afterwards")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per leg; the best is reported (default 3)")
    parser.add_argument("--memory-sizes", default="1", help="comma-separated file sizes in GiB for the peak-RSS "
                                                           "legs, e.g. 1,2 (default 1; empty to skip)")
    parser.add_argument("--fsync", action="store_true", help="fsync output files inside the timed region")
    parser.add_argument("--json", type=Path, help="also write the raw results to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return 0

    from ppml.crypto.gcm_stream import SEGMENT_PRESETS

    if args.segment not in SEGMENT_PRESETS:
        parser.error(f"--segment must be one of {', '.join(SEGMENT_PRESETS)}")
    segment_size = SEGMENT_PRESETS[args.segment]
    args.size_bytes = int(args.size_gib * GiB)
    memory_sizes = [float(s) for s in args.memory_sizes.split(",") if s.strip()]
    parent = args.workdir or DATA_ROOT
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="crypto-throughput-", dir=parent))  # fresh: nothing of yours is touched
    print(f"work dir: {work}", file=sys.stderr)

    info = machine_info()
    legs: list[Leg] = []
    checks: list[tuple[str, bool]] = []
    warm: dict[str, str] = {}
    setup: dict[str, float] = {}
    memory: list[dict] = []
    nbytes = args.size_bytes
    src, copy_dst = work / "plain.bin", work / "copy.bin"
    api_enc, api_out = work / "api.ppml", work / "api-decrypted.bin"
    cli_enc, cli_out = work / "cli.ppml", work / "cli-decrypted.bin"
    keystore, data_key = work / "keystore.json", work / "data-key.json"
    env = {**os.environ, "PPML_KEYSTORE": str(keystore), "PPML_KEYSTORE_PASSWORD": secrets.token_urlsafe(24)}
    os.environ.update(PPML_KEYSTORE=env["PPML_KEYSTORE"], PPML_KEYSTORE_PASSWORD=env["PPML_KEYSTORE_PASSWORD"])
    ok = False
    try:
        print("raw AES-GCM (in memory)", file=sys.stderr)
        legs += raw_aesgcm(nbytes, args.repeat)

        print(f"generating {nbytes:,} bytes of random plaintext", file=sys.stderr)
        original = make_plaintext(src, nbytes)
        _sha256_file(src)  # read it once: the timed reads find it warm in the page cache

        print("key store and data key through the CLI", file=sys.stderr)
        for name, argv in (("ppml keys init", [str(PPML), "keys", "init", "--json"]),
                           ("ppml keys data-key", [str(PPML), "keys", "data-key", "--out", str(data_key), "--json"])):
            wall, _, _ = run_measured(argv, env, work / "cli-stdout.json")
            setup[name] = wall
        t0 = time.perf_counter()
        key, envelope = open_key(keystore, data_key)
        setup["in-process key-store unlock + unwrap"] = time.perf_counter() - t0

        print("I/O baseline", file=sys.stderr)
        warm["plaintext"] = _resident(src)
        legs.append(timed(Leg("plain read, 1 MiB read()", "io", nbytes), args.repeat, lambda: plain_read(src)))
        legs.append(timed(Leg("plain copy, 1 MiB read() + write()", "io", nbytes), args.repeat,
                          lambda: plain_copy(src, copy_dst, args.fsync), before=lambda: _unlink(copy_dst)))

        print("Python API", file=sys.stderr)
        legs.append(timed(Leg("API encrypt: file → EncryptingWriter → file", "encrypt", nbytes), args.repeat,
                          lambda: api_encrypt(src, api_enc, key, envelope, segment_size, args.fsync),
                          before=lambda: _unlink(api_enc)))
        legs.append(timed(Leg("API encrypt: file → EncryptingWriter → /dev/null", "encrypt", nbytes), args.repeat,
                          lambda: api_encrypt(src, Path(os.devnull), key, envelope, segment_size)))
        warm["ciphertext"] = _resident(api_enc)
        legs.append(timed(Leg("API decrypt: DecryptingReader.read(1 MiB)", "decrypt", nbytes), args.repeat,
                          lambda: api_decrypt_read(api_enc, key)))
        legs.append(timed(Leg("API decrypt: DecryptingReader.readinto(1 MiB buffer)", "decrypt", nbytes),
                          args.repeat, lambda: api_decrypt_readinto(api_enc, key)))
        legs.append(timed(Leg("API decrypt: DecryptingReader.read(1 MiB) → file", "decrypt", nbytes), args.repeat,
                          lambda: api_decrypt_read(api_enc, key, api_out, args.fsync),
                          before=lambda: _unlink(api_out)))

        print("CLI", file=sys.stderr)
        legs.append(cli_leg("CLI: ppml encrypt", "encrypt", nbytes, args.repeat,
                            [str(PPML), "encrypt", str(src), str(cli_enc), "--data-key", str(data_key),
                             "--segment", args.segment, "--json"], env, cli_enc, work))
        legs.append(cli_leg("CLI: ppml decrypt", "decrypt", nbytes, args.repeat,
                            [str(PPML), "decrypt", str(cli_enc), str(cli_out), "--data-key", str(data_key), "--json"],
                            env, cli_out, work))

        print("correctness", file=sys.stderr)
        digest = hashlib.sha256()
        api_decrypt_readinto(api_enc, key, digest)
        checks.append(("SHA-256 of the API-encrypted file decrypted by DecryptingReader == original",
                       digest.hexdigest() == original))
        checks.append(("SHA-256 of the API decrypt → file output == original", _sha256_file(api_out) == original))
        checks.append(("SHA-256 of the CLI-decrypted file == original", _sha256_file(cli_out) == original))
        digest = hashlib.sha256()
        api_decrypt_readinto(cli_enc, key, digest)
        checks.append(("SHA-256 of the CLI-encrypted file decrypted by DecryptingReader == original",
                       digest.hexdigest() == original))
        checks.append(("plain copy == original", _sha256_file(copy_dst) == original))
        for path in (copy_dst, api_out, cli_out, cli_enc):
            if not args.keep:
                _unlink(path)

        if memory_sizes:
            print("peak RSS in child processes", file=sys.stderr)
        for size in memory_sizes:
            reuse = (src, original) if int(size * GiB) == nbytes else None
            memory.append(memory_leg(size, work, env, keystore, data_key, segment_size, reuse))

        decrypt_api = {leg.name: leg.mbps() for leg in legs
                       if leg.name.startswith("API decrypt: DecryptingReader.read") and "file" not in leg.name}
        decrypt_api.update({f"fresh child process, {entry['size_gib']:g} GiB": entry["decrypt"]["mbps"]
                            for entry in memory})
        slowest = min(decrypt_api, key=decrypt_api.get)
        checks.append((f"target: API decrypt ≥ {DECRYPT_TARGET_MBPS:,.0f} MB/s per core, in this process (read, "
                       f"readinto) and in fresh child processes (slowest: {slowest}, {decrypt_api[slowest]:,.0f} MB/s)",
                       decrypt_api[slowest] >= DECRYPT_TARGET_MBPS))
        if memory:
            peak = max(entry[op]["ru_maxrss"] for entry in memory for op in ("encrypt", "decrypt"))
            checks.append((f"target: peak RSS < {RSS_TARGET_MB:.0f} MB at every size "
                           f"(whole child process, largest {peak / 1e6:.0f} MB)", peak < RSS_TARGET_MB * 1e6))
            if len(memory) > 1:
                def peaks(entry: dict) -> list[int]:
                    return [entry[op]["op_peak"] or entry[op]["ru_maxrss"] for op in ("encrypt", "decrypt")]
                small, large = memory[0], memory[-1]
                growth = max(b - a for a, b in zip(peaks(small), peaks(large)))
                checks.append((f"target: peak RSS does not grow with file size ({small['size_gib']:g} → "
                               f"{large['size_gib']:g} GiB: streaming peak changes by at most {growth / 1e6:+.1f} MB)",
                               growth < 16 * MiB))

        info["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        table = render(info, args, legs, memory, checks, warm, setup)
        print(table)
        if args.json:
            args.json.write_text(json.dumps({
                "machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "setup": setup, "warm": warm,
                "legs": [{"name": leg.name, "kind": leg.kind, "bytes": leg.nbytes, "runs": leg.runs,
                          "best_mbps": leg.mbps(), "median_mbps": leg.median_mbps(), "peak_rss": leg.peak_rss,
                          "note": leg.note} for leg in legs],
                "memory": memory, "checks": checks}, indent=2))
        ok = all(passed for what, passed in checks if not what.startswith("target"))
    finally:
        if args.keep:
            secret = work / "keystore-passphrase.txt"  # the throw-away key store stays usable
            secret.touch(mode=0o600)
            secret.write_text(env["PPML_KEYSTORE_PASSWORD"] + "\n")
            print(f"kept {work} (key store passphrase in {secret.name})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
