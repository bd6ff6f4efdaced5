"""Retry of conditional writes that lost a race.

Two EPRs sending the same new patient at the same moment with ``If-None-Exist`` (or a
conditional update, or a transaction with conditional entries) both see "no match" and both
create; the identifier index lets one win and fails the other with ``IdentityConflict``. For a
conditional request the right answer is the winner's Patient, so the whole unit of work is run
again: its conditional match now finds the committed winner. Likewise two hospitals updating the
one regional Patient at once (each adding its MRN): the loser's version conflict is retried on
the new version, and both MRNs stay (app.identity.rules keeps other systems' identifiers).
A request that cannot succeed gets the same answer again on the retry (the winner is now visible
to the checks; an If-Match mismatch is a 412 before anything is written), which is its answer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from app.identity.keys import IdentityConflict
from app.storage.repository import VersionConflict

T = TypeVar("T")
ATTEMPTS = 8  # each round has a winner: enough for a burst of clients on one patient


def _is_identity_conflict(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:  # transactions re-raise entry errors ``from None``
        if isinstance(exc, (IdentityConflict, VersionConflict)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def retry_identity(run: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """``run()``, again (up to ``attempts`` in all) while it fails on an identity or version
    conflict with another writer."""
    for left in range(attempts - 1, -1, -1):
        try:
            return run()
        except Exception as exc:
            if left == 0 or not _is_identity_conflict(exc):
                raise
        time.sleep(random.uniform(0.002, 0.02))  # de-synchronise the losers a little
    raise AssertionError("unreachable")
