"""Generate TPC-H ``.tbl`` data with ``tpchgen-cli`` (dbgen-compatible output, rows end in ``|``).

``generate(scale, out_dir)`` writes the eight tables as ``<out_dir>/<table>.tbl`` and records what it
wrote in a small marker file (:data:`MARKER`); a later call with the same scale reuses that output.
Generation happens in a staging folder inside ``out_dir`` and the finished files are moved into place, so
an interrupted run never leaves half-written ``.tbl`` files behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from ppml.errors import AlreadyExistsError, ConfigError, NotFoundError, PpmlError, UsageError
from ppml.io.storage import Location, locate
from ppml.tpch.schema import TABLE_NAMES

__all__ = ["MARKER", "generate", "find_tpchgen", "read_scale", "read_marker", "require_tables",
           "keep_scale"]

#: Marker written next to the tables after a successful generation (JSON: scale, generator, files).
MARKER = ".ppml-tpch.json"
_EXE = "tpchgen-cli"
_HINT_INSTALL = "pip install tpchgen-cli"


def find_tpchgen() -> Path:
    """Path of ``tpchgen-cli``: next to this interpreter first, then the install's scripts folder, then PATH."""
    names = [_EXE + ".exe", _EXE] if os.name == "nt" else [_EXE]
    folders = [Path(sys.executable).parent]  # not resolved: a venv's bin/python is a symlink
    try:
        folders.append(Path(sysconfig.get_path("scripts")))
    except KeyError:  # pragma: no cover - exotic installs
        pass
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    found = shutil.which(_EXE)
    if found:
        return Path(found)
    raise ConfigError(f"{_EXE} is not installed (looked in {folders[0]} and on PATH)", hint=_HINT_INSTALL)


def read_marker(out_dir: str | Path) -> dict[str, object] | None:
    """The marker of a previous :func:`generate` into ``out_dir``, or ``None`` if there is none."""
    path = Path(out_dir) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PpmlError(f"cannot read TPC-H marker {path}: {exc}",
                                 hint="delete it or regenerate with force") from exc
    if not isinstance(data, dict) or not isinstance(data.get("scale"), (int, float)):
        raise PpmlError(f"TPC-H marker {path} has no scale", hint="delete it or regenerate with force")
    return data


def read_scale(out_dir: str | Path) -> float | None:
    """The scale factor recorded by :func:`generate` in ``out_dir``, or ``None`` if unknown."""
    data = read_marker(out_dir)
    return None if data is None else float(data["scale"])  # type: ignore[arg-type]


def require_tables(input_dir: str, suffix: str, *, hint: str) -> Location:
    """``input_dir`` (a folder or URL), refused unless it holds all eight ``<table><suffix>`` files."""
    source = locate(input_dir)
    names = {relative for relative, _ in source.files()}
    missing = [t for t in TABLE_NAMES if f"{t}{suffix}" not in names]
    if missing:
        raise NotFoundError(f"{input_dir} has no {', '.join(t + suffix for t in missing)}", hint=hint)
    return source


def keep_scale(source: Location, output_dir: str) -> None:
    """Record the scale of the tables in ``source`` beside their encrypted copies in ``output_dir``: Q11's
    parameter depends on it."""
    scale = read_scale(source.path) if source.is_local else None
    if scale is not None:
        with locate(output_dir).child(MARKER).open("wb") as handle:
            handle.write(json.dumps({"scale": scale, "encrypted": True}).encode())


def _complete(out_dir: Path, marker: dict[str, object]) -> bool:
    files = marker.get("files")
    if not isinstance(files, dict):
        return False
    for table in TABLE_NAMES:
        path = out_dir / f"{table}.tbl"
        if not path.is_file() or path.stat().st_size != files.get(table):
            return False
    return True


def _scale_arg(scale: float) -> str:
    return f"{scale:.10g}"


def generate(scale: float, out_dir: str | Path, *, force: bool = False,
             threads: int | None = None) -> dict[str, Path]:
    """Write the eight TPC-H tables at ``scale`` into ``out_dir`` as ``<table>.tbl``; return their paths.

    Existing complete output of the same scale (per the marker) is reused. Output of another scale, or
    ``.tbl`` files this function did not write, raise :class:`~ppml.errors.AlreadyExistsError` unless
    ``force`` is given, which regenerates. ``threads`` defaults to tpchgen-cli's (all CPUs).
    """
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise UsageError(f"scale factor must be a number, not {scale!r}") from None
    if not 0 < scale < float("inf"):
        raise UsageError(f"scale factor must be positive, not {scale!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is not a folder")
    paths = {table: out / f"{table}.tbl" for table in TABLE_NAMES}

    if not force and out.is_dir():
        marker = read_marker(out)
        if marker is not None:
            if float(marker["scale"]) == scale and _complete(out, marker):  # type: ignore[arg-type]
                return paths
            if float(marker["scale"]) != scale:  # type: ignore[arg-type]
                raise AlreadyExistsError(
                    f"{out} already holds TPC-H data at scale {marker['scale']}, not {scale:g}",
                    hint="use another folder, or force to regenerate")
            # same scale but files missing or changed: regenerate below
        else:
            existing = sorted(p.name for p in out.glob("*.tbl*"))
            if existing:
                raise AlreadyExistsError(
                    f"{out} already holds .tbl files not written by ppml ({', '.join(existing[:3])}"
                    f"{', ...' if len(existing) > 3 else ''})",
                    hint="use another folder, or force to overwrite them")

    exe = find_tpchgen()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tpchgen-", dir=out))
    try:
        cmd = [str(exe), "tbl", "--scale-factor", _scale_arg(scale), "--output-dir", str(staging),
               "--no-progress", "--quiet"]
        if threads is not None:
            cmd += ["--num-threads", str(int(threads))]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ConfigError(f"cannot run {exe}: {exc}", hint=_HINT_INSTALL) from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
            raise PpmlError(f"{_EXE} failed with exit code {proc.returncode} at scale {scale:g}"
                            + (": " + " | ".join(tail) if tail else ""),
                            hint=f"run `{' '.join(cmd)}` by hand to see its full output")
        missing = [t for t in TABLE_NAMES if not (staging / f"{t}.tbl").is_file()]
        if missing:
            raise PpmlError(f"{_EXE} did not write {', '.join(t + '.tbl' for t in missing)}",
                            hint="check the tpchgen-cli version (`tpchgen-cli --version`)")
        sizes: dict[str, int] = {}
        for table, dest in paths.items():
            src = staging / f"{table}.tbl"
            sizes[table] = src.stat().st_size
            os.replace(src, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    version = ""
    try:
        version = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                                 check=False, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # pragma: no cover - informative only
        pass
    marker_data = {"scale": scale, "generator": version or _EXE, "format": "tbl", "files": sizes}
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker_data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / MARKER)
    return paths
