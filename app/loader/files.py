"""Finding loadable files and reading them into units of work.

A *unit* is what becomes one transaction: a whole Bundle file, a single resource, or a slice of
an NDJSON file. Units are produced lazily so a 2 GB NDJSON export never sits in memory at once,
and a file that cannot be read becomes a failed unit with a reason instead of stopping the run.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

SUFFIXES = (".json", ".json.gz", ".ndjson", ".ndjson.gz")


class LoaderInputError(Exception):
    """A problem with the paths given, phrased as what the operator should do."""


@dataclass
class RawUnit:
    """One piece of input before preparation.

    ``kind`` is ``json`` (one document: a Bundle or a resource), ``ndjson`` (a list of resources)
    or ``error`` (unreadable input; ``error`` holds the reason).
    """

    source: str
    label: str
    kind: str
    body: object = None
    error: str | None = None
    first_line: int | None = None


def loadable(path: Path) -> bool:
    """Whether the name says we can read it (case-insensitive, so EXPORT.NDJSON also works)."""
    name = path.name.lower()
    return any(name.endswith(s) for s in SUFFIXES)


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively) into loadable files, in a stable order.

    Raises LoaderInputError for a path that does not exist, a file with a suffix we cannot read,
    or a run that finds nothing at all, because silently loading nothing looks like success.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    given = list(paths)
    if not given:
        raise LoaderInputError(
            "No PATH given. Pass files or folders of .json, .json.gz, .ndjson or .ndjson.gz."
        )
    for p in given:
        path = Path(p)
        if not path.exists():
            raise LoaderInputError(
                f"Path not found: {p}. Check the spelling, or give the folder that holds the files "
                f"(folders are searched recursively for {', '.join(SUFFIXES)})."
            )
        if path.is_dir():
            found = sorted(
                f for f in path.rglob("*") if f.is_file() and loadable(f) and not _ignored(f)
            )
            candidates = found
        elif loadable(path):
            candidates = [path]
        else:
            raise LoaderInputError(
                f"Cannot load {p}: the loader reads {', '.join(SUFFIXES)} files. "
                "Rename it if it holds FHIR JSON or NDJSON."
            )
        for f in candidates:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    if not out:
        raise LoaderInputError(
            f"No loadable files under {', '.join(str(p) for p in given)} (looked for {', '.join(SUFFIXES)})."
        )
    return out


def _ignored(path: Path) -> bool:
    """manifest.json files describe a data set; they are not FHIR content."""
    return path.name.lower() == "manifest.json"


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def is_ndjson(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".ndjson") or name.endswith(".ndjson.gz")


def read_units(path: Path, batch_size: int) -> Iterator[RawUnit]:
    """Yield the units of one file: one for a JSON document, ceil(lines / batch_size) for NDJSON."""
    source = str(path)
    if is_ndjson(path):
        yield from _ndjson_units(path, batch_size)
        return
    try:
        with _open(path) as fh:
            raw = fh.read()
        body = orjson.loads(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        yield RawUnit(source, source, "error", error=f"cannot read the file: {exc}")
        return
    except orjson.JSONDecodeError as exc:
        yield RawUnit(source, source, "error", error=f"not valid JSON: {exc}")
        return
    yield RawUnit(source, source, "json", body=body)


def _ndjson_units(path: Path, batch_size: int) -> Iterator[RawUnit]:
    source = str(path)
    batch: list[object] = []
    start = 1
    lineno = 0
    try:
        with _open(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    batch.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    yield RawUnit(
                        source,
                        f"{source}:{lineno}",
                        "error",
                        error=f"line {lineno} is not valid JSON: {exc}",
                    )
                    continue
                if len(batch) >= batch_size:
                    yield RawUnit(
                        source, f"{source}:{start}-{lineno}", "ndjson", body=batch, first_line=start
                    )
                    batch, start = [], lineno + 1
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        yield RawUnit(
            source,
            f"{source}:{lineno}",
            "error",
            error=f"cannot read the file after line {lineno}: {exc}",
        )
        return
    if batch:
        yield RawUnit(source, f"{source}:{start}-{lineno}", "ndjson", body=batch, first_line=start)
