"""Cross-process invalidation of the authorisation caches (tokens, clearances).

Each worker process caches validated access tokens and callers' clearances so that a FHIR
request does not pay a database round trip for them. A revocation or clearance change made in
*any* process (another gunicorn worker, another host, the CLI) must still take effect at once:
once the revoking call has returned, no worker may accept the token. The protocol:

- every process that checks tokens keeps one :class:`Listener` per database: a daemon thread
  holding a dedicated connection that ``LISTEN``s on :data:`CHANNEL`;
- the changing transaction calls :func:`announce`, which queues ``NOTIFY rev:<process>:<n>``;
  PostgreSQL delivers it only if and when that transaction commits;
- a listener that hears an announcement bumps its process's *generation* number (and bumps it on
  every reconnect too), then answers ``ack:<process>:<n>:<its backend pid>``;
- after the commit the revoking code calls :func:`settle`, which waits until every listener that
  was connected when the change was announced (``pg_stat_activity``) has acknowledged, or has
  gone, or has been silent long enough that its own process no longer trusts it;
- a cache entry remembers the generation it was read under and is used only while
  :meth:`Listener.trusted` says that generation is current, the listener has proved its
  connection recently and nothing is waiting unread on its socket.

So the revoking call returns only after every worker has stopped trusting what it cached.
Revocations are rare; they pay a few milliseconds for this. SQLite has no notification channel,
so there the caches are not trusted at all (the lookups they would save are in-process file
reads). docs/decisions/0013-smart-gaps.md, section 4.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import select
import socket
import threading
import time
import weakref
from datetime import datetime

from sqlalchemy import URL, Connection, Engine, text

log = logging.getLogger(__name__)

CHANNEL = "results_repo_auth"
APPLICATION_NAME = "results-repo auth-cache listener"  # how operators spot it in pg_stat_activity
PING_S = 5.0  # a listener proves its connection alive this often
LIVE_FOR_S = 2 * PING_S + 1  # a listener that has not for this long is not trusted by its process
_ACK_KEEP = 256  # acknowledgements remembered per listener (announcements of this process)

_process: tuple[int, str] = (0, "")


def process_id() -> str:
    """Names this process in announcements (hosts share pids; a forked worker gets its own)."""
    global _process
    if _process[0] != os.getpid():
        _process = (os.getpid(), f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}")
    return _process[1]


_announced = threading.local()  # this thread's pending announcement, for settle()
_numbers = itertools.count(1)


def announce(conn: Connection) -> None:
    """Inside a transaction that revokes tokens or changes clearances: tell every process once
    it has committed (``NOTIFY`` is delivered at commit, never on rollback); the caller calls
    :func:`settle` after the commit. No-op on SQLite."""
    if conn.dialect.name != "postgresql":
        return
    listener = listener_for(conn.engine)
    if listener is not None:
        listener.wait_ready(2.0)  # the CLI: hear the acknowledgements of this change
    number = next(_numbers)
    at = conn.execute(text("SELECT clock_timestamp() FROM pg_notify(:channel, :payload)"),
                      {"channel": CHANNEL, "payload": f"rev:{process_id()}:{number}"}).scalar_one()
    _announced.mark = (conn.engine, listener, number, at)


def settle(timeout_s: float = LIVE_FOR_S + 1) -> None:
    """After the announcing transaction has committed: return once every listener connected at
    announcement time has acknowledged it (or disconnected, or -- hung -- stopped being trusted
    by its own process after ``LIVE_FOR_S``). Typically 1-3 ms. No-op when nothing was
    announced in this thread."""
    mark = getattr(_announced, "mark", None)
    _announced.mark = None
    if mark is None:
        return
    engine, listener, number, at = mark
    if listener is None or not listener.connected:
        time.sleep(0.05)  # cannot hear acknowledgements: give delivery (~50 us) a wide margin
        return
    deadline = time.monotonic() + timeout_s
    waiting = _listening_sessions(engine, at)
    recheck = time.monotonic() + 0.1
    while True:
        waiting -= listener.acks_for(number)
        if not waiting:
            return
        now = time.monotonic()
        if now >= deadline:
            log.warning("%d auth-cache listener(s) did not acknowledge a revocation within %.0f s; "
                        "their processes stop trusting their caches on their own", len(waiting), timeout_s)
            return
        if now >= recheck:  # drop sessions that have gone since
            waiting &= _listening_sessions(engine, at)
            recheck = now + 0.1
        time.sleep(0.0005)


def _listening_sessions(engine: Engine, before: datetime) -> set[int]:
    """Backend pids of the listeners on this database whose sessions began before ``before``
    (a later one bumped its generation when it connected, so it owes no acknowledgement)."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        rows = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :app "
                                 "AND datname = current_database() AND backend_start < :before"),
                            {"app": APPLICATION_NAME, "before": before})
        return {r[0] for r in rows}


class Listener:
    """One per (process, database): the thread that turns notifications into generations."""

    def __init__(self, engine: Engine) -> None:
        args, kwargs = engine.dialect.create_connect_args(_database_of(engine))
        self._connect_args = (args, {**kwargs, "autocommit": True, "application_name": APPLICATION_NAME,
                                     "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5})
        self.generation = 0
        self.backend_pid = 0  # the listening session (pg_stat_activity), 0 when not connected
        self._acks: dict[int, set[int]] = {}  # announcement number -> listener pids that heard it
        self._to_ack: list[str] = []
        self._fd = -1
        self._reading = False  # set while the thread consumes its socket
        self._live_until = 0.0  # monotonic; 0 = not connected
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="auth-invalidation", daemon=True)
        self._thread.start()

    # -- request side -------------------------------------------------------------------
    def trusted(self, generation: int) -> bool:
        """May a cache entry read under ``generation`` be used now?"""
        if generation != self.generation or self._reading or time.monotonic() > self._live_until:
            return False
        fd = self._fd
        if fd < 0:
            return False
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
            pending = poller.poll(0)
        except (OSError, ValueError):
            return False
        # A notification (or a closed socket) not yet read by the thread: the cache may be stale.
        return not pending and generation == self.generation

    @property
    def connected(self) -> bool:
        return self._fd >= 0 and time.monotonic() <= self._live_until

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the listener has connected once (the first requests of a worker simply do
        not use the caches until then)."""
        return self._ready.wait(timeout)

    def acks_for(self, number: int) -> set[int]:
        return set(self._acks.get(number, ()))

    def stop(self) -> None:
        self._stop.set()

    # -- the thread -----------------------------------------------------------------------
    def _heard(self, payload: str | bytes | None) -> None:
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", "replace")
        kind, _, rest = (payload or "").partition(":")
        if kind == "ack":  # ack:<process>:<number>:<listener pid>
            process, number, pid = rest.rsplit(":", 2) if rest.count(":") >= 2 else ("", "", "")
            if process == process_id() and number.isdigit() and pid.isdigit():
                self._acks.setdefault(int(number), set()).add(int(pid))
                while len(self._acks) > _ACK_KEEP:
                    self._acks.pop(min(self._acks))
            return
        self.generation += 1  # an announcement (or anything unexpected): distrust the caches
        if kind == "rev":
            self._to_ack.append(rest)

    def _on_notify(self, notify) -> None:  # noqa: ANN001 - psycopg Notify, during the ping
        self._heard(notify.payload)

    def _run(self) -> None:
        import psycopg

        delay = 0.5
        while not self._stop.is_set():
            try:
                args, kwargs = self._connect_args
                with psycopg.connect(*args, **kwargs) as conn:
                    conn.add_notify_handler(self._on_notify)
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.generation += 1  # anything cached before we listened is suspect
                    self._fd = conn.fileno()
                    self.backend_pid = conn.info.backend_pid
                    self._live_until = time.monotonic() + LIVE_FOR_S
                    self._ready.set()
                    delay = 0.5
                    try:
                        self._serve(conn)
                    finally:
                        # Before the socket closes: its fd number can be reused at once by
                        # another connection, which trusted() would then poll instead.
                        self._live_until = 0.0
                        self._fd = -1
            except Exception as exc:  # noqa: BLE001 - any failure: distrust caches, reconnect
                log.warning("auth cache invalidation listener lost its connection (%s); "
                            "token and clearance caches are bypassed until it reconnects",
                            type(exc).__name__)
            finally:
                self._live_until = 0.0
                self._fd = -1
                self.backend_pid = 0
                self.generation += 1
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def _serve(self, conn) -> None:  # noqa: ANN001
        pgconn = conn.pgconn
        next_ping = time.monotonic() + PING_S
        while not self._stop.is_set():
            readable, _, _ = select.select([self._fd], [], [], max(0.0, next_ping - time.monotonic()))
            if readable:
                self._reading = True
                try:
                    pgconn.consume_input()  # raises when the connection is gone
                    while (notify := pgconn.notifies()) is not None:
                        self._heard(notify.extra)
                    if pgconn.status != 0:  # CONNECTION_OK
                        raise ConnectionError("listener connection is bad")
                finally:
                    self._reading = False
            if self._to_ack:
                self._acknowledge(conn)
            if time.monotonic() >= next_ping:
                self._reading = True  # the ping may read a notification (the handler hears it)
                try:
                    conn.execute("SELECT 1")
                finally:
                    self._reading = False
                self._live_until = time.monotonic() + LIVE_FOR_S
                next_ping = time.monotonic() + PING_S

    def _acknowledge(self, conn) -> None:  # noqa: ANN001
        """Tell the announcing processes that this one has stopped trusting its caches (the
        generation was bumped when the announcement was heard, before this)."""
        self._reading = True
        try:
            while self._to_ack:
                rest = self._to_ack.pop(0)
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"ack:{rest}:{self.backend_pid}"))
        finally:
            self._reading = False


def _database_of(engine: Engine) -> URL:
    """The database alone: notifications are database-wide, so one listener serves every
    engine on it whatever its options (search_path schemas in the tests)."""
    return engine.url.set(query={})


_listeners: dict[tuple[int, str], Listener] = {}
_listeners_lock = threading.Lock()
# engine -> (pid, its listener): the answer for an engine seen before, per process; an engine
# that is gone drops out.
_by_engine: weakref.WeakKeyDictionary[Engine, tuple[int, Listener]] = weakref.WeakKeyDictionary()


def listener_for(engine: Engine) -> Listener | None:
    """This process's listener for ``engine``'s database (started on first use; a forked
    gunicorn worker starts its own), or None where there is no channel (SQLite)."""
    if engine.dialect.name != "postgresql":
        return None
    pid = os.getpid()
    hit = _by_engine.get(engine)
    if hit is not None and hit[0] == pid:
        return hit[1]  # (rendering the URL below costs more than the rest of a cache check)
    key = (pid, _database_of(engine).render_as_string(hide_password=False))
    found = _listeners.get(key)
    if found is None:
        with _listeners_lock:
            found = _listeners.get(key)
            if found is None:
                found = _listeners[key] = Listener(engine)
    _by_engine[engine] = (pid, found)
    return found


def generation_of(engine: Engine) -> tuple[Listener | None, int]:
    """(listener, its current generation) to stamp a cache entry with, before the lookup."""
    listener = listener_for(engine)
    return listener, (listener.generation if listener is not None else -1)
