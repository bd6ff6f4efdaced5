"""Security labels: the vocabulary, reading them from stored JSON, a Bundle's high-water mark.

A label is a ``(system, code)`` pair from ``meta.security``.  Operators and the CLI may write
the HL7 codes short: the confidentiality codes (``U L M N R V``) stand for
http://terminology.hl7.org/CodeSystem/v3-Confidentiality, any other bare code for
http://terminology.hl7.org/CodeSystem/v3-ActCode (HIV, STD, ETH, PSY, SDV, SEX ...);
``system|code`` names any other label exactly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import and_, exists, func, literal_column, not_, or_, select

from app.storage.tables import sp_token

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF_ORDER = "ULMNRV"  # unrestricted < low < moderate < normal < restricted < very restricted
# HL7 ActInformationSensitivityPolicy codes about clinical content: a resource carrying one but
# no confidentiality code counts as R (restricted) for its Bundle's high-water mark.
SENSITIVITY_CODES = frozenset({
    "ETH", "GDIS", "HIV", "MST", "SCA", "SDV", "SEX", "SPI", "BH", "COGN", "DVD", "EMOTDIS", "MH",
    "PSY", "PSYTHPN", "SUD", "STD", "TBOO", "SICKLE",
})
DEFAULT_SENSITIVE = ("R", "V", "HIV", "STD", "ETH", "PSY", "SDV", "SEX")
_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

Label = tuple[str, str]
# ``param = '_security'`` written inline: the partial index ix_sp_token_security needs it.
SECURITY_PARAM = literal_column("'_security'")


def parse_label(text: str) -> Label:
    """``R`` / ``HIV`` / ``system|code`` -> ``(system, code)``; ValueError when malformed."""
    t = text.strip()
    system, bar, code = t.rpartition("|")
    if not bar:
        code = t
        system = CONFIDENTIALITY if t in CONF_ORDER and len(t) == 1 else ACT_CODE
    if not _CODE.match(code) or (bar and (not system or any(c.isspace() for c in system) or len(system) > 255)):
        raise ValueError(f"{t[:80]!r} is not a security label (a code such as R or HIV, or system|code)")
    return system, code


def label_text(label: Label) -> str:
    """The short form where there is one (``R``, ``HIV``), else ``system|code``."""
    system, code = label
    if system == CONFIDENTIALITY and code in CONF_ORDER:
        return code
    if system == ACT_CODE:
        return code
    return f"{system}|{code}"


def parse_labels(values: Iterable[str] | str) -> frozenset[Label]:
    """Several labels, from a list or a comma/space separated string."""
    if isinstance(values, str):
        values = re.split(r"[,\s]+", values)
    return frozenset(parse_label(v) for v in values if v and v.strip())


def labels_of(doc: Any) -> set[Label]:
    """The ``meta.security`` labels of a resource (a dict)."""
    out: set[Label] = set()
    meta = doc.get("meta") if isinstance(doc, dict) else None
    sec = meta.get("security") if isinstance(meta, dict) else None
    if isinstance(sec, list):
        for c in sec:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                out.add((c.get("system") or "", c["code"]))
    return out


def labels_in_content(content: str | bytes | None) -> set[Label]:
    """The labels of stored JSON; parses only when the text mentions ``"security"`` at all."""
    if not content:
        return set()
    marker = b'"security"' if isinstance(content, bytes) else '"security"'
    if marker not in content:  # type: ignore[operator]
        return set()
    try:
        return labels_of(orjson.loads(content))
    except orjson.JSONDecodeError:
        return set()


def _rank(labels: set[Label]) -> int:
    """The confidentiality rank of one resource; -1 when it carries no relevant label."""
    rank = -1
    for system, code in labels:
        if system == CONFIDENTIALITY and code in CONF_ORDER and len(code) == 1:
            rank = max(rank, CONF_ORDER.index(code))
        elif system == ACT_CODE and code in SENSITIVITY_CODES:
            rank = max(rank, CONF_ORDER.index("R"))
    return rank


def bundle_label(contents: Iterable[str | bytes | None]) -> dict | None:
    """The Bundle's own confidentiality label: the highest of its entries (the HL7 high-water
    mark), where a sensitivity label alone counts as R; None when no entry is labelled."""
    rank = -1
    for content in contents:
        labels = labels_in_content(content)
        if labels:
            rank = max(rank, _rank(labels))
    if rank < 0:
        return None
    return {"system": CONFIDENTIALITY, "code": CONF_ORDER[rank]}


# One pre-built alias and one label predicate per withheld set: building an alias rebuilds its
# column collection, which made the include filter cost ~2.5 ms a request (bench profile).
_SEC = sp_token.alias("sec_label")


@functools.lru_cache(maxsize=256)
def _labels_match(withheld: frozenset[Label]) -> Any:
    by_system: dict[str, list[str]] = {}
    for s, c in sorted(withheld):
        by_system.setdefault(s, []).append(c)
    return or_(*(and_(_SEC.c.system == s, _SEC.c.code.in_(codes)) for s, codes in by_system.items()))


def labelled(rid_col: Any, withheld: frozenset[Label]) -> Any:
    """``EXISTS`` a ``_security`` index row of ``rid_col``'s resource with one of ``withheld``
    (rows of any type: index rows carry their resource's type)."""
    return exists(select(_SEC.c.rid).where(_SEC.c.rid == rid_col, _SEC.c.param == SECURITY_PARAM,
                                           _labels_match(frozenset(withheld))))


def labelled_rids(conn: Any, rids: Iterable[int], labels: frozenset[Label]) -> set[int]:
    """Which of the resources ``rids`` (current rows) carry one of ``labels`` (their
    ``_security`` index rows): one indexed query, for a handful of conditional matches."""
    rids = list(rids)
    if not rids or not labels:
        return set()
    stmt = select(_SEC.c.rid).where(_SEC.c.rid.in_(rids), _SEC.c.param == SECURITY_PARAM,
                                    _labels_match(frozenset(labels)))
    return set(conn.execute(stmt).scalars())


def _contains(col: Any, text: str, dialect: str) -> Any:
    """Case-sensitive substring test (SQLite's LIKE ignores ASCII case)."""
    fn = func.strpos(col, text) if dialect == "postgresql" else func.instr(col, text)
    return func.coalesce(fn, 0) > 0


def history_condition(rv: Any, withheld: frozenset[Label], dialect: str) -> Any:
    """Versions (``resource_version`` rows) a token without clearance for ``withheld`` may list.

    A version is hidden when its resource's current row has a withheld label (its ``_security``
    index rows), or when its own JSON may carry one: it has a ``"security"`` key and one of the
    codes as a ``"code"`` value.  The text test is conservative (a version that is labelled with
    something else and has, say, an interpretation code ``R`` is hidden too); it exists for the
    rare version whose label was removed later, which no index row describes any more.
    """
    labelled_now = labelled(rv.c.rid, withheld)
    codes = sorted({c for _s, c in withheld})
    own = and_(
        _contains(rv.c.content, '"security"', dialect),
        or_(*(_contains(rv.c.content, f'"code":"{c}"', dialect) for c in codes)),
    )
    return and_(not_(labelled_now), or_(rv.c.content.is_(None), not_(own)))
