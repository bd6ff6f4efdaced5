"""Running prepared units through the core's ``transaction()``, in one process or several.

Order independence: a unit refused only because it references something not yet loaded (422
business-rule from the core's integrity check) is kept aside and retried after everything else,
again and again while each pass loads something, so files can be given in any order.

Parallel loading (PostgreSQL only): ``workers`` writers are this process plus ``workers - 1``
spawned ones; each spawned process builds its own app and engine (an engine must never cross a
fork). This process starts loading at once, while the others are still starting (importing the
app and the models takes a second or two, a good part of a small load). Two workers writing
the same shared Organization at once make one of them lose (409 conflict or a deadlock/unique
violation from the database); such units are retried a couple of times and then handed to the
final serial pass, where nothing competes.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from app.fhir.errors import FhirError
from app.fhir.jsonutil import parse_instant, utcnow
from app.loader.files import discover, read_units
from app.loader.prepare import Prepared, prepare

if TYPE_CHECKING:
    from flask import Flask

    from app.interactions.context import FhirContext

log = logging.getLogger("results_repo.loader")

DEFAULT_BATCH_SIZE = 500
_CONCURRENCY_SQLSTATES = {"40P01", "40001", "23505"}  # deadlock, serialization, unique violation
_IMMEDIATE_RETRIES = 2


@dataclass
class Failure:
    source: str
    label: str
    resources: int
    reason: str


@dataclass
class UnitOutcome:
    """What happened to one unit. ``status`` is ok, failed or deferred."""

    source: str
    label: str
    status: str
    resources: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    by_type: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    reason: str | None = None
    prepared: Prepared | None = None  # kept only while deferred


@dataclass
class LoadSummary:
    """The result of a load, for the CLI table, ``load_demo`` callers and the benchmark."""

    files: int = 0
    bundles: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    loaded_by_type: Counter = field(default_factory=Counter)
    skipped_by_type: Counter = field(default_factory=Counter)
    failed: list[Failure] = field(default_factory=list)
    retried: int = 0
    seconds: float = 0.0
    workers: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        """Resources that got a new version (created or changed)."""
        return self.created + self.updated

    @property
    def processed(self) -> int:
        return self.created + self.updated + self.unchanged

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, o: UnitOutcome) -> None:
        self.skipped_by_type.update(o.skipped)
        if o.status == "ok":
            self.created += o.created
            self.updated += o.updated
            self.unchanged += o.unchanged
            self.loaded_by_type.update(o.by_type)
        elif o.status == "failed":
            self.failed.append(
                Failure(o.source, o.label, o.resources, o.reason or "unknown reason")
            )


# ---- one unit -----------------------------------------------------------------------------
def run_unit(ctx: FhirContext, prepared: Prepared) -> UnitOutcome:
    """Load one prepared unit in one transaction and classify the outcome."""
    out = UnitOutcome(
        prepared.source, prepared.label, "ok", prepared.resources, skipped=prepared.skipped
    )
    if prepared.error:
        out.status, out.reason = "failed", prepared.error
        return out
    if prepared.bundle is None:
        return out
    from app.interactions.bundle import transaction

    entries = len(prepared.bundle["entry"])
    if entries > ctx.max_bundle_entries:
        # The cap protects the HTTP API; an operator's file is loaded whole so it stays atomic.
        ctx = dataclasses.replace(ctx, max_bundle_entries=entries)
    for attempt in range(_IMMEDIATE_RETRIES + 1):
        started = utcnow()
        try:
            result = transaction(ctx, prepared.bundle, False)
        except FhirError as err:
            if err.status == 422 and err.code == "business-rule":
                out.status, out.reason, out.prepared = "deferred", err.diagnostics, prepared
                return out
            if err.status == 409 and err.code == "duplicate":
                # an identifier another Patient holds (app/identity): retrying cannot help
                out.status, out.reason = "failed", f"{err.status} {err.code}: {err.diagnostics}"
                return out
            if err.status == 409 and attempt < _IMMEDIATE_RETRIES:
                _backoff(attempt)
                continue
            if err.status == 409:
                out.status, out.reason, out.prepared = "deferred", err.diagnostics, prepared
                return out
            out.status, out.reason = "failed", f"{err.status} {err.code}: {err.diagnostics}"
            return out
        except DBAPIError as exc:
            if getattr(getattr(exc, "orig", None), "sqlstate", None) in _CONCURRENCY_SQLSTATES:
                if attempt < _IMMEDIATE_RETRIES:
                    _backoff(attempt)
                    continue
                out.status, out.reason, out.prepared = "deferred", _short(exc), prepared
                return out
            if isinstance(exc, OperationalError) and exc.connection_invalidated:
                raise  # the database went away: stopping beats failing every remaining unit
            log.exception("Loading %s failed in the database", prepared.label)
            out.status, out.reason = "failed", f"database error: {_short(exc)}"
            return out
        except Exception as exc:  # noqa: BLE001 - one bad unit must not stop a long load
            log.exception("Loading %s failed", prepared.label)
            out.status, out.reason = "failed", f"internal error: {_short(exc)}"
            return out
        _count(out, result.body, started)
        out.by_type = prepared.by_type
        return out
    raise AssertionError("unreachable")


def _backoff(attempt: int) -> None:
    time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _count(out: UnitOutcome, body: bytes | None, started: datetime) -> None:
    """201 is created; 200 is unchanged when lastModified predates this transaction (the core
    answered with the existing version) and updated otherwise."""
    if not body:
        return
    for entry in orjson.loads(body).get("entry", []):
        resp = entry.get("response") or {}
        if "location" not in resp:
            continue  # GET/DELETE entries
        status = str(resp.get("status", ""))
        if status.startswith("201"):
            out.created += 1
        elif status.startswith("200"):
            last = resp.get("lastModified")
            if last and parse_instant(last) < started:
                out.unchanged += 1
            else:
                out.updated += 1


# ---- many units -----------------------------------------------------------------------------
ProgressFn = Callable[[int, str], None]


def _units(path: Path, batch_size: int, enabled: frozenset[str]) -> Iterable[Prepared]:
    for raw in read_units(path, batch_size):
        yield prepare(raw, enabled)


def _run_file(ctx, path: Path, batch_size: int) -> list[UnitOutcome]:
    return [run_unit(ctx, p) for p in _units(path, batch_size, ctx.enabled_types)]


def load_paths(
    app: Flask,
    paths: Sequence[str | Path],
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    base_url: str | None = None,
    progress: ProgressFn | None = None,
) -> LoadSummary:
    """Load files and folders into the app's database; the one code path for CLI, demo and bench.

    ``progress(resources, label)`` is called as units finish (the CLI drives tqdm with it).
    Raises LoaderInputError before writing anything if a path is wrong.
    """
    from app.interactions.context import from_app

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    files = discover(paths)
    summary = LoadSummary(files=len(files))
    url = app.config["DATABASE_URL"]
    if workers > 1 and make_url(url).get_backend_name() == "sqlite":
        summary.notes.append(
            f"SQLite allows one writer at a time: using 1 worker instead of {workers}."
        )
        workers = 1
    if workers > len(files):
        summary.notes.append(
            f"Work is shared out per file: {len(files)} file(s), so {len(files)} worker(s)."
        )
    workers = max(1, min(workers, len(files)))
    summary.workers = workers
    ctx = from_app(app, base_url)
    deferred: list[UnitOutcome] = []
    t0 = time.perf_counter()

    def take(o: UnitOutcome) -> None:
        summary.bundles += 1
        if o.status == "deferred":
            deferred.append(o)
            summary.skipped_by_type.update(o.skipped)
            return
        summary.add(o)
        if progress:
            progress(o.resources, o.label)

    with app.app_context(), _gc_tuned():
        if workers == 1:
            for path in files:
                for p in _units(path, batch_size, ctx.enabled_types):
                    take(run_unit(ctx, p))
        else:
            _run_parallel(app, ctx, files, batch_size, workers, base_url, take)
        _retry_deferred(ctx, deferred, summary, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


@contextmanager
def _gc_tuned():
    """Loading allocates millions of short-lived containers (parsed JSON, models, index rows),
    and CPython's cyclic collector then re-traverses every object the process holds -- the app,
    the models, the search registry -- again and again: three quarters of the time spent parsing
    the Synthea files went to it. So, while loading: what exists now is frozen out of collection
    (``gc.freeze``) and young collections run every 50,000 allocations instead of 700. Both are
    restored afterwards; reference counting still frees almost everything at once."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], _GC_GEN0), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


_GC_GEN0 = 50_000


def _retry_deferred(
    ctx, deferred: list[UnitOutcome], summary: LoadSummary, progress: ProgressFn | None
) -> None:
    """Retry while a pass makes progress; what is left failed for the reason it last gave."""
    pending = deferred
    while pending:
        still: list[UnitOutcome] = []
        for o in pending:
            summary.retried += 1
            again = run_unit(ctx, o.prepared)  # type: ignore[arg-type]
            again.skipped = Counter()  # already counted on the first attempt
            if again.status == "deferred":
                still.append(again)
                continue
            summary.add(again)
            if progress:
                progress(again.resources, again.label)
        if len(still) == len(pending):
            for o in still:
                summary.add(dataclasses.replace(o, status="failed", prepared=None))
                if progress:
                    progress(o.resources, o.label)
            return
        pending = still


# ---- worker processes -----------------------------------------------------------------------
_WORKER: dict = {}


def _picklable_config(app) -> dict:
    simple = (str, int, float, bool, list, tuple, type(None))
    return {k: v for k, v in app.config.items() if k.isupper() and isinstance(v, simple)}


def _worker_init(config: dict, base_url: str | None) -> None:
    from app import create_app
    from app.interactions.context import from_app

    app = create_app(config)
    _WORKER["app"] = app
    _WORKER["ctx"] = from_app(app, base_url)
    gc.freeze()  # as in _gc_tuned: a worker process only loads, so for its whole life
    gc.set_threshold(max(gc.get_threshold()[0], _GC_GEN0), *gc.get_threshold()[1:])


def _worker_file(path: str, batch_size: int) -> list[UnitOutcome]:
    app, ctx = _WORKER["app"], _WORKER["ctx"]
    with app.app_context():
        return _run_file(ctx, Path(path), batch_size)


def _run_parallel(
    app, ctx, files: list[Path], batch_size: int, workers: int, base_url: str | None, take
) -> None:
    """One file per task, so a Bundle never splits across processes; spawn, not fork, so no
    worker inherits the parent's open database connections. The spawned processes take files
    from the front of the list (at most two queued each), this process from the back."""
    cfg = _picklable_config(app)
    pending = deque(files)
    helpers = workers - 1
    with ProcessPoolExecutor(
        helpers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(cfg, base_url)
    ) as pool:
        running: dict[Future, Path] = {}

        def top_up() -> None:
            while pending and len(running) < 2 * helpers:
                path = pending.popleft()
                running[pool.submit(_worker_file, str(path), batch_size)] = path

        def collect(block: bool) -> None:
            if block:
                done = wait(running, return_when=FIRST_COMPLETED).done
            else:
                done = {f for f in running if f.done()}
            for fut in done:
                path = running.pop(fut)
                try:
                    outcomes = fut.result()
                except Exception as exc:  # noqa: BLE001 - report the file, keep the rest
                    outcomes = [
                        UnitOutcome(str(path), str(path), "failed", reason=f"worker error: {_short(exc)}")
                    ]
                for o in outcomes:
                    take(o)

        top_up()
        while pending:
            for o in _run_file(ctx, pending.pop(), batch_size):
                take(o)
            collect(block=False)
            top_up()
        while running:
            collect(block=True)


# ---- the table ------------------------------------------------------------------------------
def format_summary(s: LoadSummary) -> str:
    """The end-of-run table an operator reads to know whether the load is complete."""
    lines = [
        "",
        "Load summary",
        f"  files                {s.files:>8}",
        f"  units (transactions) {s.bundles:>8}   (a Bundle or single-resource file, or an NDJSON batch)",
        f"  resources loaded     {s.loaded:>8}   (created {s.created}, updated {s.updated})",
        f"  unchanged            {s.unchanged:>8}   (already stored with identical content)",
        f"  skipped by type      {sum(s.skipped_by_type.values()):>8}",
    ]
    for t, n in sorted(s.skipped_by_type.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"      {t:<28}{n:>6}")
    lines.append(
        f"  failed units         {len(s.failed):>8}   ({sum(f.resources for f in s.failed)} resources)"
    )
    lines.append(
        f"  time                 {s.seconds:>8.1f} s  ({s.rate:,.0f} resources/s, {s.workers} worker(s)"
        + (f", {s.retried} retries" if s.retried else "")
        + ")"
    )
    if s.loaded_by_type:
        lines.append(
            "  loaded by type: "
            + ", ".join(f"{t} {n}" for t, n in sorted(s.loaded_by_type.items()))
        )
    for note in s.notes:
        lines.append(f"  note: {note}")
    if s.failed:
        lines.append("")
        lines.append("Failed (nothing from these units was stored):")
        for f in s.failed:
            lines.append(f"  {f.label} ({f.resources} resources): {f.reason}")
    return "\n".join(lines)
