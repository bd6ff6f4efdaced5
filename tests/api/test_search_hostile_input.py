"""Hostile input to search, over real HTTP on both back ends: never a 500, never a hang, never
SQL injection; a refusal is a 400 OperationOutcome that names the parameter, and under
``Prefer: handling=strict`` a 200 only where the search could be honoured as asked.

The matrix is fixed and deterministic (no randomness): for each search parameter *type* one or two
real parameters of Observation, Patient and DiagnosticReport from the registry, each with the
modifiers the R4 spec lists for its type and some it does not, times a fixed list of hostile
values (separators, 10k characters, NUL and control characters, invalid UTF-8, look-alikes, SQL
fragments, bare prefixes, extreme numbers and dates); plus deep chains and ``_has``, result
parameters (``_include``, ``_sort``, ``_count``, ``_total``, ``_summary``, ``_elements``,
``_type``, ``_cursor``), repeated parameters, oversized form bodies and hostile parameter
*names*.  Modifier cases send a deterministic sample of the common values (every n-th, offset by
a CRC of the key), so the matrix stays near ten thousand requests per database (about 25 s on
SQLite, 50 s on PostgreSQL).  Every request goes GET lenient and GET strict; a deterministic
sample also goes ``POST _search`` (form body) both ways.  The app has a 1 s search deadline
(fixture ``app``), which is what must bound the expensive shapes.

It runs once per database (module fixture ``outcomes``); each test then checks one property over
the recorded answers and lists every violation, grouped, with the exact request (500s with the
exception and the top ``app/`` frames).  ``HOSTILE_SEARCH_DUMP=<file>`` appends every answer to a
JSON-lines file for study.

What each case expects (``Expect``) is this file's own reading of R4, not the server's parser:
``valid`` (a search the server can honour: 200, or the ``too-long`` 400 of a link that cannot
carry it), ``either`` (ambiguous or a server limit: 200 or 400), ``invalid`` (malformed by the
FHIR grammar: a 400 under strict) and ``unsupported`` (unknown parameter or modifier: a 400
under strict, ignored or 400 when lenient).  R4 search grammar used: token ``[system]|[code]``;
date ``[prefix]YYYY[-MM[-DD[Thh:mm[:ss[.f]][zone]]]]`` with ASCII digits, a real calendar date,
zone offsets up to 14:00; number ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?``; quantity
``number[|system|code]``; reference ``id``, ``Type/id[/_history/vid]`` or an absolute URL;
composite: exactly one part per component, joined by ``$``.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import logging
import os
import re
import time
import zlib
from dataclasses import dataclass, replace
from urllib.parse import quote

import pytest
import requests
from apihelp import create, observation, patient
from hostilehelp import Capture, crash_detail, outcome_issues, report, storage_counts

SEARCH_TIMEOUT_MS = 1000  # this module's app (fixture ``app``): the deadline is what bounds a search
TIMEOUT_S = 20  # per request: anything slower is reported as a hang
STRICT = {"Prefer": "handling=strict"}
OK_STATUSES = {200, 400}
# 400s whose OperationOutcome need not name a parameter: the search as a whole is refused.
NAMELESS_CODES = {"too-long", "too-costly"}
LONG = "x" * 10_000
# 10k characters that do not compress: a search link carrying it is over MAX_LINK_CHARS once sealed
LONG_MIXED = "".join(base64.urlsafe_b64encode(hashlib.sha512(str(i).encode()).digest()).decode()
                     for i in range(112))[:10_000]


# ---------------------------------------------------------------------------------------------
# What is sent


@dataclass(frozen=True)
class Raw:
    """Text put into the query string as it is (already percent-encoded), and what the server
    decodes it to (werkzeug keeps bytes that are not UTF-8 percent-encoded)."""

    wire: str
    seen: str


def _wire(x: str | Raw) -> str:
    return x.wire if isinstance(x, Raw) else quote(x, safe="")


def _seen(x: str | Raw) -> str:
    return x.seen if isinstance(x, Raw) else x


VALID, EITHER, INVALID, UNSUPPORTED = "valid", "either", "invalid", "unsupported"
_RANK = {VALID: 0, EITHER: 1, INVALID: 2, UNSUPPORTED: 3}


def worst(*expects: str) -> str:
    return max(expects, key=_RANK.__getitem__) if expects else EITHER


@dataclass(frozen=True)
class Case:
    path: str  # relative to the base: "Observation", "" (system search), "Patient/x/Observation"
    pairs: tuple[tuple[str | Raw, str | Raw], ...]
    expect: str
    names: tuple[str, ...]  # what a 400's diagnostics should mention (any of them)
    label: str
    also: frozenset[int] = frozenset()  # statuses acceptable besides 200/400 (404, 406, 413)
    no_match: bool = False  # a 200 must not match anything (SQL fragments, wildcards)
    post: bool = False  # also sent as POST _search (form body)
    body_only: bool = False  # POST only (too large for a request line)

    def query(self) -> str:
        return "&".join(f"{_wire(k)}={_wire(v)}" for k, v in self.pairs)

    def show(self) -> str:
        q = self.query()
        if len(q) > 160:
            q = q[:120] + f"...[{len(q)} chars]"
        return f"{self.path}?{q}"


# ---------------------------------------------------------------------------------------------
# The hostile values (fixed, ordered)

SEPARATORS = ["", "|", "$", ",", "\\,", "\\", "||", "$$", ",,", "a,,b", "\\|", "\\$"]
CONTROL = ["\x00", "a\x00b", "\x01\x07\x1b", "\x7f", "a\tb", "\r\n", "\x1f", "2020\x00"]
BAD_UTF8 = [
    Raw("%ff%fe", "%FF%FE"),
    Raw("%ED%A0%80", "%ED%A0%80"),  # a UTF-8-encoded lone surrogate
    Raw("%C0%80", "%C0%80"),  # overlong NUL
    Raw("%F4%90%80%80", "%F4%90%80%80"),  # beyond U+10FFFF
    "%zz",  # as text (quoted): urllib3 would re-encode a whole query holding a stray '%'; werkzeug
    "%4",  # keeps such escapes literal anyway, so the server sees the same either way
]
LOOKALIKES = [
    "\uff21\uff44\uff41",  # fullwidth "Ada"
    "\uff12\uff10\uff12\uff10",  # fullwidth "2020"
    "\u0663",  # Arabic-Indic three
    "\uff47\uff45\uff12\uff10\uff12\uff10",  # fullwidth "ge2020"
    "\u0435q2020",  # Cyrillic e + "q2020"
    "2020\u201001\u201001",  # U+2010 hyphens
    "\u22125",  # minus sign
    "1\u066b5",  # Arabic decimal separator
    "Patient\uff0f1",  # fullwidth solidus
    "http://loinc.org\uff5c718-7",  # fullwidth vertical line
    "\u200b",
    "\ufeff",
    "\u202eevil",
    "\u0301\u0301",  # combining marks only
    " ",
    "2020-01-01\n",
    "5\n",
    "\U0010ffff",
    "\ud7ff",
    "\u0130\u00df\ufb01",
    "\U0001f600" * 3,
]
SQLISH = [
    "' OR 1=1 --",
    "' OR '1'='1",
    "%",
    "_",
    "\\%",
    "%%",
    "x' UNION SELECT content FROM resource_version --",
    "1; DROP TABLE resource; --",
    '" OR ""="',
    ")) OR ((1=1",
    "%s",
    "%(x)s",
    "$1",
    ":x",
    "?",
    "*",
]
PREFIX_ONLY = ["ge", "eq", "ap", "xx", "GE5", "gt-"]
NUMBERS = ["1e309", "-1e-400", "NaN", "Infinity", "-Infinity", "1.", ".5", "0x10", "+5", "007",
           "1_000", "5e", "9" * 70, "1e-300", "0", "-0", "1e99999999999", "ge1e309", "le-1e-400"]
DATES = ["0000", "0001", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.9999999+14:00",
         "9999-12-31T23:59:59-14:00", "2020-02-30", "2020-01-01T25:00", "2020-01-01T10:00:00+25:00",
         "2020-13", "2020-01-01T10:00:60", "2020-1-1", "2020-01-01T10", "2020-01-01 10:00",
         "2020-01-01T10:00:00.1234567890Z", "ge9999", "le0001", "sa0000", "ap9999-12-31",
         "ap0001-01-01", "eb0001-01-01T00:00:00Z", "-2020", "20200101", "2020-00-10", "2019-02-29",
         "2020-02-29", "2020-01-01T23:59:59.999999999-14:00", "2020-01-01T10:00+14:30"]
COMMON: list[str | Raw] = [*SEPARATORS, LONG, LONG_MIXED, *CONTROL, *BAD_UTF8, *LOOKALIKES, *SQLISH, *PREFIX_ONLY,
                           *NUMBERS, *DATES]

# Values a search of each type can honour (positive controls) and type-shaped hostile ones.
TYPED: dict[str, list[str]] = {
    "token": ["http://loinc.org|718-7", "718-7", "|718-7", "http://loinc.org|", "a|b|c", "|",
              "urn:x|", "a\\|b", "\\|\\|", "a" * 300],
    "string": ["Ada", "ada", "Test", "T", "A\\,da", "Ada,Test", "a" * 300],
    "date": ["2020", "2020-01", "2020-01-01", "ge2020-01-01T10:00:00Z", "lt2020-01-01T10:00:00.123+01:00",
             "ne2021", "ap2024-03-01", "sa1900", "eb2100", "2020-01-01T10:00", "2020,2021", "ge2020,le2021"],
    "reference": ["Patient/{pid}", "{pid}", "Patient/{pid}/_history/1", "{base}/Patient/{pid}",
                  "https://other.example/fhir/Patient/1", "urn:uuid:0d2f0b3e-0000-4000-8000-000000000000",
                  "#c1", "/", "Patient/", "/1", "Patient//x", "a/b/c", "Patient/1/_history/",
                  "Patient/1/_history/1/x", "../../etc/passwd", "http://", "urn:", "#",
                  "Observation/{oid}", "i" * 65, "Patient/a\x00b"],
    "quantity": ["5.4", "13.2|http://unitsofmeasure.org|g/dL", "gt13||g/dL", "ap0|http://unitsofmeasure.org|g",
                 "5|", "5||", "5|a|b|c", "|x|y", "ge|x|y", "1e300|http://unitsofmeasure.org|10*9/L",
                 "0|http://unitsofmeasure.org|10*300.10*300", "5|http://unitsofmeasure.org|10*400",
                 "5|http://unitsofmeasure.org|/10*-400", "5|http://unitsofmeasure.org|" + "g." * 40 + "g",
                 "5|http://unitsofmeasure.org|\u00b2"],
    "uri": ["http://example.org/StructureDefinition/hostile", "http://example.org/StructureDefinition",
            "http://example.org/", "urn:oid:1.2.3", "http:", "/", "//", "a b"],
    "composite": ["http://loinc.org|718-7$13.2", "718-7$gt13|http://unitsofmeasure.org|g/dL", "$", "$$",
                  "718-7$", "$5", "718-7$ge", "718-7$1e309", "a$b$c", "718-7$13$14", "718-7\\$13",
                  "718-7$2020-01-01", "718-7$ge2020", "|$5", "a|b|c$5"],
    "id": ["{pid}", "{pid},{oid}", "bad id", "a|b", "i" * 65, "Patient/{pid}"],
}

# Modifiers per type: those the R4 spec lists (server-supported or not) and some it does not.
MODIFIERS: dict[str, list[str]] = {
    "string": ["exact", "contains", "missing", "Patient", "below", "not", "text", "iterate", "", ":exact"],
    "token": ["text", "not", "above", "below", "in", "not-in", "of-type", "missing", "exact", "contains",
              "iterate", "Patient"],
    "date": ["missing", "exact", "not", "above", "iterate"],
    "reference": ["missing", "Patient", "identifier", "above", "below", "Bogus", "Observation", "exact",
                  "iterate", "not"],
    "quantity": ["missing", "exact", "not", "iterate", "above"],
    "uri": ["missing", "below", "above", "contains", "exact", "iterate", "not"],
    "composite": ["missing", "not", "exact", "iterate", "text"],
}
SUPPORTED = {"string": {"exact", "contains"}, "token": {"text", "not", "of-type"},
             "reference": {"identifier"}, "uri": {"below", "above"}}
MISSING_VALUES = ["true", "false", "maybe", "", "TRUE", "1", "true,false"]

# (resource type, parameter, type): one or two real parameters per type from the registry.
# ``number``: none of the enabled types has a number parameter in R4 (checked in
# ``test_the_matrix_covers_every_parameter_type``); number syntax is exercised through quantity
# and composite values, which are parsed by the same rules.
PARAMS = [
    ("Observation", "code", "token"),
    ("Patient", "gender", "token"),
    ("Patient", "name", "string"),
    ("Observation", "value-string", "string"),
    ("Observation", "date", "date"),
    ("Patient", "birthdate", "date"),
    ("Observation", "subject", "reference"),
    ("DiagnosticReport", "result", "reference"),
    ("Observation", "value-quantity", "quantity"),
    ("Observation", "_profile", "uri"),
    ("Patient", "_source", "uri"),
    ("Observation", "code-value-quantity", "composite"),
    ("Observation", "code-value-date", "composite"),
    ("Patient", "_id", "token"),
    ("Observation", "_lastUpdated", "date"),
    ("Observation", "_tag", "token"),
    ("DiagnosticReport", "_security", "token"),
]
# The second parameter of a type gets half the common values without a modifier.
SECONDARY = {"gender", "value-string", "birthdate", "result", "_source", "code-value-date"}
COLUMN = {"_id", "_lastUpdated"}
COMPONENTS = {"code-value-quantity": ("token", "quantity"), "code-value-date": ("token", "date")}


# ---------------------------------------------------------------------------------------------
# The oracle: this file's reading of the R4 grammar (see the module docstring)

_DEC = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", re.ASCII)
_DATE = re.compile(
    r"(?P<y>[0-9]{4})(-(?P<m>[0-9]{2})(-(?P<d>[0-9]{2})(T(?P<H>[0-9]{2}):(?P<M>[0-9]{2})"
    r"(:(?P<S>[0-9]{2})(\.(?P<f>[0-9]+))?)?(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?", re.ASCII)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def split_escaped(s: str, sep: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            cur += s[i : i + 2]
            i += 2
            continue
        if s[i] == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += s[i]
        i += 1
    return [*parts, cur]


def _prefixed(v: str) -> tuple[str | None, str]:
    """(prefix, rest); prefix None when ``v`` starts with two lower-case letters that are not one."""
    if len(v) >= 2 and v[:2].isascii() and v[:2].isalpha() and v[:2].islower():
        return (v[:2], v[2:]) if v[:2] in _PREFIXES else (None, v)
    return "eq", v


def number_expect(v: str) -> str:
    prefix, rest = _prefixed(v)
    if prefix is None or not _DEC.fullmatch(rest):
        return INVALID
    mantissa_exp = re.search(r"[eE]([+-]?[0-9]+)$", rest)
    if mantissa_exp and abs(int(mantissa_exp.group(1))) > 250 or len(rest) > 60:
        return EITHER  # beyond what the server stores as a double: refusing is a fair limit
    return VALID


def date_expect(v: str) -> str:
    prefix, rest = _prefixed(v)
    m = _DATE.fullmatch(rest) if prefix is not None else None
    if m is None:
        return INVALID
    g = m.groupdict()
    y = int(g["y"])
    mo = int(g["m"] or 1)
    d = int(g["d"] or 1)
    if y == 0 or not 1 <= mo <= 12 or not 1 <= d <= calendar.monthrange(y, mo)[1]:
        return INVALID
    if g["H"] is not None and (int(g["H"]) > 23 or int(g["M"]) > 59):
        return INVALID
    if g["tz"] and g["tz"] != "Z":
        hh, mm = int(g["tz"][1:3]), int(g["tz"][4:6])
        if hh > 14 or mm > 59 or (hh == 14 and mm):
            return INVALID
    if g["S"] is not None and int(g["S"]) > 59:
        return EITHER if int(g["S"]) == 60 else INVALID  # a leap second: R4's regex allows 60
    if g["f"] and len(g["f"]) > 9:
        return EITHER
    return VALID


def token_expect(v: str) -> str:
    parts = split_escaped(v, "|")
    if len(parts) == 1:
        return EITHER if v in ("\\",) or "\x00" in v else VALID
    if len(parts) == 2 and any(parts):
        return VALID
    return INVALID


def quantity_expect(v: str) -> str:
    parts = split_escaped(v, "|")
    if len(parts) == 1:
        return number_expect(v)
    if len(parts) != 3:
        return INVALID
    num = number_expect(parts[0])
    if num != VALID:
        return num
    return EITHER if not parts[1] and not parts[2] else VALID


def reference_expect(v: str, type_mod: str | None) -> str:
    if "://" in v or v.startswith(("urn:", "#")):
        return VALID if len(v) > len("urn:") else EITHER
    segs = v.split("/")
    if len(segs) == 1:
        return VALID if _ID.fullmatch(v) else EITHER  # the id grammar: not worth a 400
    if len(segs) in (2, 4) and all(segs) and (len(segs) == 2 or segs[2] == "_history"):
        if type_mod and segs[0] != type_mod:
            return INVALID
        return VALID if _ID.fullmatch(segs[1]) else EITHER
    return INVALID


def value_expect(ptype: str, code: str, mod: str | None, v: str) -> str:
    """One value (a comma-separated OR list) of a parameter of ``ptype`` with modifier ``mod``."""
    if "\x00" in v:
        return INVALID  # no FHIR string holds a NUL
    if mod == "missing":
        return VALID if v in ("true", "false") else (EITHER if v == "" else INVALID)
    alts = split_escaped(v, ",")
    non_empty = [a for a in alts if a != ""]
    if not non_empty:
        return EITHER  # nothing to search for: ignoring it is the spec's reading too
    out = [EITHER] if len(non_empty) != len(alts) else []
    for a in non_empty:
        out.append(_one(ptype, code, mod, a))
    return worst(*out)


def _one(ptype: str, code: str, mod: str | None, a: str) -> str:
    if ptype == "string" or mod in ("text", "contains", "exact", "below", "above"):
        return EITHER if a == "\\" or not a.strip() else VALID
    if code == "_id":
        return VALID if _ID.fullmatch(a) else EITHER
    if mod == "of-type":
        parts = split_escaped(a, "|")
        return VALID if len(parts) == 3 and all(parts) else INVALID
    if ptype == "token" or mod == "identifier":
        return token_expect(a)
    if ptype == "date":
        return date_expect(a)
    if ptype == "quantity":
        return quantity_expect(a)
    if ptype == "reference":
        return reference_expect(a, mod if mod and mod[:1].isupper() else None)
    if ptype == "uri":
        return VALID
    if ptype == "composite":
        parts = split_escaped(a, "$")
        comps = COMPONENTS[code]
        if len(parts) != len(comps):
            return INVALID
        return worst(*(EITHER if p == "" else _one(t, code, None, p) for t, p in zip(comps, parts, strict=True)))
    raise AssertionError(ptype)


def modifier_expect(code: str, ptype: str, mod: str | None, targets: tuple[str, ...]) -> str:
    if mod is None or mod == "missing":
        return VALID
    if code in COLUMN:
        return UNSUPPORTED
    if ptype == "reference" and mod[:1].isupper():
        return VALID if mod in targets else UNSUPPORTED
    return VALID if mod in SUPPORTED.get(ptype, ()) else UNSUPPORTED


# ---------------------------------------------------------------------------------------------
# Building the matrix


def _pick(key: str, values: list, every: int) -> list:
    """A deterministic sample: every ``every``-th value, offset by the key's CRC."""
    off = zlib.crc32(key.encode()) % every
    return [v for i, v in enumerate(values) if i % every == off]


def _fill(v: str | Raw, ids: dict) -> str | Raw:
    if isinstance(v, Raw):
        return v
    return v.replace("{pid}", ids["pid"]).replace("{oid}", ids["oid"]).replace("{base}", ids["base"])


def _typed_key(ptype: str, code: str) -> str:
    return "id" if code == "_id" else ptype


def build_cases(registry, ids: dict) -> list[Case]:
    cases: list[Case] = []
    n = 0

    def add(c: Case) -> None:
        nonlocal n
        n += 1
        cases.append(c if c.post or n % 12 else replace(c, post=True))

    for res_type, code, ptype in PARAMS:
        targets = tuple(registry.get(res_type, code).targets)
        mods: list[str | None] = [None, *MODIFIERS[ptype]]
        for mod in mods:
            key = code if mod is None else f"{code}:{mod}"
            m_expect = modifier_expect(code, ptype, mod or None, targets)
            typed = TYPED[_typed_key(ptype, code)]
            if mod == "missing":
                values: list = list(MISSING_VALUES) + _pick(key, COMMON, 8)
            elif mod is None:
                values = [*typed, *(_pick(key, COMMON, 3) if code in SECONDARY else COMMON)]
            elif m_expect == UNSUPPORTED:  # refused whatever the value: a few values are enough
                values = _pick(key, typed, 3) + _pick(key, COMMON, 16)
            else:  # a modifier the server honours: every SQL fragment and wildcard too
                values = _pick(key, typed, 2) + [v for v in _pick(key, COMMON, 8) if v not in SQLISH] + SQLISH
            for raw in values:
                v = _fill(raw, ids)
                seen = _seen(v)
                if m_expect == UNSUPPORTED:
                    # an unknown modifier is refused when strict whatever its value
                    expect = UNSUPPORTED
                else:
                    expect = worst(m_expect, value_expect(ptype, code, mod or None, seen))
                if mod == "" and expect == VALID:
                    expect = UNSUPPORTED  # "name:" names no modifier: not the parameter as the spec writes it
                no_match = (isinstance(v, str) and v in SQLISH and expect in (VALID, EITHER)
                            and mod not in ("not", "missing") and m_expect == VALID)
                add(Case(res_type, ((key, v),), expect, (key, code), f"{ptype} {key}", no_match=no_match))
    cases += _control_cases(ids)
    cases += _name_cases(ids)
    cases += _deep_cases(ids)
    cases += _repeat_cases(ids)
    cases += _path_cases(ids)
    return cases


def _control_cases(ids: dict) -> list[Case]:
    out: list[Case] = []

    def c(path: str, key: str, value, expect: str, **kw) -> None:
        out.append(Case(path, ((key, value),), expect, (key, key.split(":")[0]), f"control {key}", **kw))

    for v, e in [("-1", INVALID), ("1e3", INVALID), ("99999999999999999999", VALID), ("", INVALID), ("0", VALID),
                 ("\u00b2", INVALID), ("\u2460", INVALID), ("\u0661\u0660", INVALID), ("+5", INVALID),
                 (" 5", INVALID), ("5 ", INVALID), ("0x10", INVALID), ("1.0", INVALID), ("NaN", INVALID),
                 ("\uff15", INVALID), (LONG, INVALID), ("5,6", INVALID)]:
        c("Observation", "_count", v, e, post=True)
    for v, e in [("bogus", INVALID), ("", INVALID), ("ACCURATE", INVALID), ("accurate", VALID), ("estimate", VALID),
                 ("none", VALID), ("accurate,none", INVALID), (LONG, INVALID)]:
        c("Observation", "_total", v, e, post=True)
    for v, e in [("bogus", INVALID), ("", INVALID), ("TRUE", INVALID), ("true", VALID), ("count", VALID),
                 ("data", VALID), ("text", VALID), ("true,false", INVALID), ("\u0000", INVALID)]:
        c("Observation", "_summary", v, e)
    for v, e in [("", EITHER), (",", EITHER), (",,", EITHER), ("a.b", INVALID), ("..", INVALID), ("*", INVALID),
                 ("name'", INVALID), (LONG, EITHER), ("id,meta", VALID), ("_id", EITHER), ("name[0]", INVALID),
                 ("valueQuantity", VALID), ("value[x]", INVALID), ("resourceType", EITHER), ("status,code", VALID),
                 ("bogus", EITHER), ("' OR 1=1 --", INVALID)]:
        c("Observation", "_elements", v, e)
    for v, e in [("-", UNSUPPORTED), (",", EITHER), (",,,", EITHER), ("", EITHER), ("--date", UNSUPPORTED),
                 ("name'", UNSUPPORTED), (LONG, UNSUPPORTED), ("_score", UNSUPPORTED), ("_text", UNSUPPORTED),
                 ("code-value-quantity", UNSUPPORTED), ("bogus", UNSUPPORTED), ("date,-date", VALID),
                 ("-_lastUpdated,_id,date,code,subject,value-quantity,status,category", VALID), (" date", VALID),
                 ("date:missing", UNSUPPORTED), ("subject.name", UNSUPPORTED), ("-" + "date," * 200, VALID)]:
        c("Observation", "_sort", v, e)
    for key in ("_include", "_revinclude", "_include:iterate", "_revinclude:iterate", "_include:recurse",
                "_include:bogus", "_include:iterate:iterate", "_include:"):
        bad_mod = key.split(":", 1)[1] not in ("iterate", "recurse") if ":" in key else False
        for v, e in [("*", VALID), ("Observation:*", VALID), ("Observation:subject", VALID),
                     ("Observation:subject:Patient", VALID), ("Observation:subject:Bogus", UNSUPPORTED),
                     ("Observation:bogus", UNSUPPORTED), (":", UNSUPPORTED), ("::", UNSUPPORTED),
                     ("Observation:", UNSUPPORTED), ("Bogus:subject", UNSUPPORTED),
                     ("Observation:subject:Patient:extra", UNSUPPORTED), (LONG, UNSUPPORTED),
                     ("Observation:code", UNSUPPORTED), ("", UNSUPPORTED), ("DiagnosticReport:result", VALID),
                     ("Observation:subject:Observation", UNSUPPORTED)]:
            if key not in ("_include", "_revinclude") and v not in ("*", "Observation:subject", LONG, ""):
                continue
            c("Observation", key, v, UNSUPPORTED if bad_mod else e)
    for v, e in [("Bogus", INVALID), ("", EITHER), (",", EITHER), ("Patient,Bogus", INVALID), ("patient", INVALID),
                 ("Patient,Observation", VALID), (" Patient", EITHER), ("Claim", INVALID), (LONG, INVALID)]:
        c("", "_type", v, e)
    c("Observation", "_type", "Bogus", EITHER)  # type search: _type is not its parameter
    for v in ("garbage", "", "\x00", LONG, "A" * 40):
        # the server calls it "the paging link": the name a client knows it by
        out.append(Case("Observation", (("_cursor", v),), INVALID, ("_cursor", "paging link"), "control _cursor"))
    for v, e in [("json", VALID), ("application/fhir+json", VALID), ("xml", INVALID), ("bogus", INVALID),
                 ("\x00", INVALID)]:
        c("Observation", "_format", v, e, also=frozenset({406}))
    for key in ("_pretty", "_contained", "_containedType"):
        c("Observation", key, "bogus", EITHER)
    return out


def _name_cases(ids: dict) -> list[Case]:
    """Hostile parameter names, each with a harmless value: unknown, so a 400 when strict."""
    names: list[str | Raw] = [
        "name'", Raw("na%00me", "na\x00me"), "n" * 10_000, "_has:", "_has:Observation", ":", ".", "..",
        "name.", ".name", "_has", "_has:Observation:patient", "_has:Observation:patient:",
        "_has:Bogus:patient:code", "_has:Observation:bogus:code", "_has:Observation:code:code",
        "_has:Observation:patient:bogus", "_has:Observation:encounter:code", "subject.", "subject..name",
        "subject:Bogus.name", "subject:Patient.", "subject:Patient.bogus", "code.name", "\uff4eame",
        "name\u200b", "NAME", "_ID", "_lastupdated", "_text", "_content", "_query", "_filter", "_list",
        "%", "_", "' OR 1=1 --", Raw("%ff%fe", "%FF%FE"), "=", "&", "name:exact:contains", "name::exact",
        "subject:Patient:Patient.name", "_has:Observation:subject:_has", "x" * 129,
    ]
    out = []
    for nm in names:
        seen = _seen(nm)
        path = "Patient" if not seen.startswith(("subject", "code")) else "Observation"
        mention = tuple({seen, seen.split(":")[0], *[s for s in re.split(r"[:.]", seen) if s]})
        out.append(Case(path, ((nm, "x"),), UNSUPPORTED, mention, "name", post=True))
    return out


def _deep_cases(ids: dict) -> list[Case]:
    out = []

    def c(path: str, key: str, value: str, expect: str, label: str) -> None:
        mention = tuple({key, *[s for s in re.split(r"[:.]", key) if s]})
        heavy = any(ch.isdigit() and int(ch) > 10 for ch in re.findall(r"\d+", label))
        out.append(Case(path, ((key, value),), expect, mention, label, post=not heavy))

    for depth in (10, 50, 200):
        chain = "subject:Patient.organization" + ".partof" * (depth - 2) + ".name"
        c("Observation", chain, "Acme", VALID, f"chain {depth}")
        c("Observation", chain, "2020-02-30", VALID, f"chain {depth}")  # a string: any value
        c("Observation", "subject:Patient.organization" + ".partof" * (depth - 2) + ".bogus", "x",
          UNSUPPORTED, f"chain {depth}")
        c("DiagnosticReport", "result" + ".has-member" * (depth - 1) + ".code", "718-7", VALID, f"chain {depth}")
        c("DiagnosticReport", "result" + ".has-member" * (depth - 1) + ".date", "2020-02-30", INVALID,
          f"chain {depth}")
        c("Provenance", "target" + ".target" * (depth - 2) + "._id", "x", VALID, f"chain {depth}")
        has = "_has:Observation:has-member:" * depth + "code"
        c("Observation", has, "718-7", VALID, f"_has {depth}")
        c("Observation", has, "|", INVALID, f"_has {depth}")
        c("Observation", "_has:Observation:has-member:" * depth + "bogus", "x", UNSUPPORTED, f"_has {depth}")
        c("Patient", "_has:Observation:subject:" + "_has:Observation:has-member:" * (depth - 1) + "code",
          "718-7", VALID, f"_has {depth}")
    c("Patient", "_has:Observation:subject:subject:Patient.organization.partof.name", "Acme", VALID, "_has+chain")
    c("Observation", "subject:Patient._has:Observation:subject:code", "718-7", EITHER, "chain+_has")
    c("Observation", "code:text", ",".join(["x"] * 500), VALID, "or-list 500")
    c("Observation", "code", ",".join(f"c{i}" for i in range(1000)), VALID, "or-list 1000")
    c("Patient", "_id", ",".join(f"i{i}" for i in range(1000)), VALID, "or-list 1000")
    c("Observation", "date", ",".join(["ge2020"] * 300), VALID, "or-list 300")
    c("Observation", "value-quantity", ",".join(["gt1"] * 1200), VALID, "or-list 1200")
    return out


def _repeat_cases(ids: dict) -> list[Case]:
    """The same parameter 200 times."""
    out = []

    def c(path: str, key: str, values: list[str], expect: str, names: tuple[str, ...] | None = None) -> None:
        out.append(Case(path, tuple((key, v) for v in values), expect, names or (key.split(":")[0],),
                        f"repeat {key}", post=not out))  # POST: the first one only (the planning cost
        # of hundreds of clauses is the same whichever way they come)

    c("Patient", "name", ["Ada"] * 200, VALID)
    c("Patient", "name", ["Ada"] * 1200, VALID)
    c("Observation", "code:not", [f"c{i}" for i in range(1200)], VALID)
    c("Observation", "code", [f"c{i}" for i in range(200)], VALID)
    c("Observation", "date", ["ge2020"] * 200, VALID)
    c("Observation", "subject:Patient.name", ["Test"] * 200, VALID, ("subject:Patient.name", "name", "subject"))
    c("Patient", "_has:Observation:subject:code", ["718-7"] * 200, VALID,
      ("_has:Observation:subject:code", "code"))
    c("Observation", "_sort", ["date"] * 200, VALID)
    c("Observation", "_include", ["Observation:subject"] * 200, VALID)
    c("Observation", "_revinclude:iterate", ["*"] * 200, VALID)
    c("Observation", "_count", ["5"] * 200, VALID)
    c("Observation", "_elements", ["id"] * 200, VALID)
    c("Observation", "bogus", ["x"] * 200, UNSUPPORTED)
    c("Observation", "date", ["ge2020"] * 199 + ["2020-02-30"], INVALID)
    c("Observation", "code", ["|"] * 200, INVALID)
    c("Observation", "_summary", ["true"] * 199 + ["bogus"], INVALID)
    return out


def _path_cases(ids: dict) -> list[Case]:
    """System and compartment searches with hostile values, and unknown or hostile types."""
    pid = ids["pid"]
    out = []
    for v in ("2020-02-30", "' OR 1=1 --", "\x00", LONG, "ge", "9999-12-31T23:59:59.9999999+14:00"):
        e = value_expect("date", "_lastUpdated", None, v)
        out.append(Case("", (("_type", "Patient,Observation"), ("_lastUpdated", v)), e, ("_lastUpdated",),
                        "system", post=True))
        out.append(Case(f"Patient/{pid}/*", (("_lastUpdated", v),), e, ("_lastUpdated",), "compartment"))
        out.append(Case(f"Patient/{pid}/Observation", (("code", v),), value_expect("token", "code", None, v),
                        ("code",), "compartment"))
    four = frozenset({404})
    for path in ("Bogus", "Claim", "patient", "Patient%00", "Pat%ff%feient", "P" * 300, "Patient/x/Bogus",
                 "Organization/x/Observation", "Patient/" + "i" * 300 + "/Observation", "Patient/a%00b/Observation",
                 "Patient/a%00b/*"):
        # the fault is in the path, not in a parameter: no name to look for (``names=()``)
        out.append(Case(path, (("name", "x"),), INVALID, (), "path", also=four))
    return out


def _oversize_cases() -> list[Case]:
    """Form bodies past werkzeug's form limits (Flask's MAX_FORM_MEMORY_SIZE and MAX_FORM_PARTS)."""
    big = frozenset({413})
    return [
        Case("Patient", (("name", "a" * 600_000),), EITHER, ("name",), "oversize value", also=big, body_only=True),
        Case("Patient", tuple(("name", "Ada") for _ in range(1500)), EITHER, ("name",), "oversize parts",
             also=big, body_only=True),
    ]


# ---------------------------------------------------------------------------------------------
# Running it


@dataclass
class Answer:
    case: Case
    method: str
    strict: bool
    status: int | None  # None: no answer in TIMEOUT_S (a hang) or the connection failed
    body: object = None  # parsed JSON, or None
    ctype: str = ""
    error: str = ""
    request_id: str = ""
    seconds: float = 0.0

    def show(self) -> str:
        return f"{self.method} {'strict' if self.strict else 'lenient'} {self.case.show()}"


def _send(http, base: str, case: Case, method: str, strict: bool) -> Answer:
    hdrs = dict(STRICT) if strict else {}
    path = f"{base}/{case.path}" if case.path else base
    if method == "GET":
        req = http.prepare_request(requests.Request("GET", path, headers=hdrs))
        req.url = f"{path}?{case.query()}"  # as built: requests would re-quote raw escapes
    else:
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        url = f"{path}/_search" if case.path else f"{base}/_search"
        req = http.prepare_request(requests.Request("POST", url, headers=hdrs, data=case.query().encode()))
    t0 = time.perf_counter()
    try:
        r = http.send(req, timeout=TIMEOUT_S)
    except requests.RequestException as e:
        return Answer(case, method, strict, None, error=f"{type(e).__name__}: {e}"[:300],
                      seconds=time.perf_counter() - t0)
    try:
        body = r.json()
    except ValueError:
        body = None
    return Answer(case, method, strict, r.status_code, body, r.headers.get("Content-Type", ""),
                  request_id=r.headers.get("X-Request-Id", ""), seconds=time.perf_counter() - t0)


@pytest.fixture(scope="module")
def app(database_url):
    """The shared test app (tests/conftest.py) with a 1 s search deadline instead of 15 s: hundreds
    of AND-ed clauses or a 50-level chain cost PostgreSQL's planner seconds, and the property
    tested is that the deadline bounds them (400 ``too-costly``), not how long the default is."""
    from app import create_app

    application = create_app({
        "DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret", "MAX_BUNDLE_ENTRIES": 200,
        "AUTH_REQUIRED": False, "API_RATE_LIMIT_PER_MINUTE": 0, "TOKEN_RATE_LIMIT_PER_MINUTE": 0,
        "SEARCH_TIMEOUT_MS": SEARCH_TIMEOUT_MS,
    })
    yield application
    application.extensions["results_repo"].engine.dispose()


@pytest.fixture(scope="module")
def seeded(http, base) -> dict:
    tag = {"system": "urn:test:tag", "code": "hostile"}
    meta = {"tag": [tag], "profile": ["http://example.org/StructureDefinition/hostile"],
            "source": "http://example.org/source"}
    orgs: list[str] = []
    for i in range(4):
        body = {"resourceType": "Organization", "name": f"Acme {i}"}
        if orgs:
            body["partOf"] = {"reference": f"Organization/{orgs[-1]}"}
        orgs.append(create(http, base, body)["id"])
    pid = create(http, base, patient(managingOrganization={"reference": f"Organization/{orgs[-1]}"}, meta=meta))["id"]
    member = create(http, base, observation(f"Patient/{pid}", effectiveDateTime="2020-01-01T10:00:00Z"))["id"]
    oid = create(http, base, observation(f"Patient/{pid}", effectiveDateTime="2024-03-01", meta=meta,
                                         hasMember=[{"reference": f"Observation/{member}"}]))["id"]
    string_obs = observation(f"Patient/{pid}", valueString="Hostile test",
                             component=[{"code": {"text": "c"}, "valueDateTime": "2020-01-01"}])
    del string_obs["valueQuantity"]
    sid = create(http, base, string_obs)["id"]
    rid = create(http, base, {
        "resourceType": "DiagnosticReport", "status": "final", "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "result": [{"reference": f"Observation/{oid}"}],
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]},
    })["id"]
    refs = [f"Organization/{o}" for o in orgs] + [f"Patient/{pid}", f"Observation/{member}", f"Observation/{oid}",
                                                  f"Observation/{sid}", f"DiagnosticReport/{rid}"]
    return {"pid": pid, "oid": oid, "base": base, "refs": refs}


@pytest.fixture(scope="module")
def outcomes(app, http, base, seeded, database_url):
    """Every case, every way, once per database: (answers, captured server errors, before/after)."""
    registry = app.extensions["results_repo"].registry
    cases = build_cases(registry, seeded)
    before_rows = storage_counts(app)
    before_docs = {ref: http.get(f"{base}/{ref}").content for ref in seeded["refs"]}
    cap = Capture()
    loggers = [logging.getLogger("results_repo.errors"), logging.getLogger("results_repo.audit")]
    propagate = [lg.propagate for lg in loggers]
    for lg in loggers:  # collected here (crash tracebacks of deep chains run to thousands of lines)
        lg.addHandler(cap)
        lg.propagate = False
    answers: list[Answer] = []
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # one access-log line per request is noise here
    t0 = time.perf_counter()
    try:
        for case in cases:
            for strict in (False, True):
                if not case.body_only:
                    answers.append(_send(http, base, case, "GET", strict))
                if case.post or case.body_only:
                    answers.append(_send(http, base, case, "POST", strict))
        for case in _oversize_cases():
            for strict in (False, True):
                answers.append(_send(http, base, case, "POST", strict))
    finally:
        werkzeug_log.setLevel(werkzeug_level)
        for lg, prop in zip(loggers, propagate, strict=True):
            lg.removeHandler(cap)
            lg.propagate = prop
    elapsed = time.perf_counter() - t0
    after_rows = storage_counts(app)
    after_docs = {ref: http.get(f"{base}/{ref}").content for ref in seeded["refs"]}
    backend = database_url.split(":", 1)[0]
    dump = os.environ.get("HOSTILE_SEARCH_DUMP")  # a JSON-lines file of every answer, to study a run
    if dump:
        with open(dump, "a", encoding="utf-8") as f:
            for a in answers:
                first = (outcome_issues(a.body) or [{}])[0]
                f.write(json.dumps({"db": backend, "method": a.method, "strict": a.strict, "status": a.status,
                                    "seconds": round(a.seconds, 3), "label": a.case.label, "expect": a.case.expect,
                                    "request": a.case.show(), "code": first.get("code"),
                                    "diagnostics": str(first.get("diagnostics", ""))[:300],
                                    "crash": crash_detail(a.body, cap)}) + "\n")
    statuses: dict[int | None, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    slowest = max(answers, key=lambda a: a.seconds)
    print(f"\n[hostile search] {backend}: {len(cases)} cases, {len(answers)} requests in {elapsed:.1f} s; "
          f"statuses {statuses}; slowest {slowest.seconds:.2f} s: {slowest.show()}")
    return {"answers": answers, "capture": cap, "elapsed": elapsed, "rows": (before_rows, after_rows),
            "docs": (before_docs, after_docs), "cases": cases}


# ---------------------------------------------------------------------------------------------
# Helpers for the checks


def _matches(body) -> int:
    if not isinstance(body, dict):
        return 0
    return sum(1 for e in body.get("entry", []) if e.get("search", {}).get("mode") == "match")


# ---------------------------------------------------------------------------------------------
# The checks


def test_the_matrix_covers_every_parameter_type(app):
    registry = app.extensions["results_repo"].registry
    covered = {ptype for _, _, ptype in PARAMS}
    assert covered >= {"token", "string", "date", "reference", "quantity", "uri", "composite"}
    for res_type, code, ptype in PARAMS:
        p = registry.get(res_type, code)
        assert p is not None and p.type == ptype, (res_type, code, p)
    numbers = [(t, c) for t in ("Observation", "Patient", "DiagnosticReport")
               for c, p in registry.params(t).items() if p.type == "number"]
    assert numbers == [], f"a number parameter exists now; add it to PARAMS: {numbers}"


def test_no_500_no_hang_and_every_answer_is_json(outcomes):
    cap = outcomes["capture"]
    bad = []
    for a in outcomes["answers"]:
        allowed = OK_STATUSES | a.case.also
        if a.status is None:
            bad.append((f"no answer: {a.error[:120]} [{a.case.label}]", a.show()))
        elif a.status not in allowed:
            detail = crash_detail(a.body, cap) or str(outcome_issues(a.body)[:1])[:200]
            bad.append((f"{a.status} [{a.case.label}] {detail}", a.show()))
        elif not isinstance(a.body, dict) or not a.ctype.startswith("application/fhir+json"):
            bad.append((f"{a.status} not FHIR JSON ({a.ctype}) [{a.case.label}]", a.show()))
        elif a.status == 200 and a.body.get("resourceType") != "Bundle":
            bad.append((f"200 without a Bundle [{a.case.label}]", a.show()))
        elif a.status != 200 and not outcome_issues(a.body):
            bad.append((f"{a.status} without an OperationOutcome [{a.case.label}]", a.show()))
    assert not bad, report("Answers outside 200/400 (or the case's 404/406/413), or not FHIR JSON", bad)


def test_every_400_names_the_parameter(outcomes):
    bad = []
    for a in outcomes["answers"]:
        if a.status != 400:
            continue
        issues = outcome_issues(a.body)
        if not a.case.names or any(i.get("code") in NAMELESS_CODES for i in issues):
            continue  # a bad path, or the search as a whole refused (too long for a link, too costly)
        diags = " ".join(i.get("diagnostics", "") for i in issues)
        if any(n and n in diags for n in a.case.names):
            continue
        exprs = [x for i in issues for x in i.get("expression", [])]
        where = "named only in expression" if any(n in exprs for n in a.case.names) else "not named"
        first = issues[0] if issues else {}
        shape = re.sub(r"'[^']*'", "'...'", first.get("diagnostics", ""))[:100]
        bad.append((f"{where} [{a.case.label}]: {first.get('code')}: {shape}",
                    f"{a.case.show()} -> {first.get('diagnostics', '')[:100]}"))
    assert not bad, report("400s whose diagnostics do not name the parameter", bad)


def test_strict_answers_200_only_when_it_can_honour_the_search(outcomes):
    bad = [(f"{a.case.expect} [{a.case.label}]", a.case.show()) for a in outcomes["answers"]
           if a.strict and a.status == 200 and a.case.expect in (INVALID, UNSUPPORTED)]
    assert not bad, report("200 under Prefer: handling=strict for a search it cannot honour as asked", bad)


def test_strict_and_lenient_agree_on_valid_searches(outcomes):
    """A search the server can honour gets a 200 both ways (a 400 only as a ``too-long`` link);
    500s are reported by ``test_no_500_no_hang_and_every_answer_is_json``."""
    bad = []
    for a in outcomes["answers"]:
        if a.case.expect != VALID or a.status in (200, None) or a.status in a.case.also or a.status >= 500:
            continue
        issues = outcome_issues(a.body)
        if {i.get("code") for i in issues} & NAMELESS_CODES:
            continue
        first = (issues or [{}])[0]
        bad.append((f"{a.status} [{a.case.label}] {first.get('code')}", f"{a.case.show()} -> "
                    f"{first.get('diagnostics', '')[:120]}"))
    assert not bad, report("Valid searches refused", bad)


def test_sql_fragments_and_wildcards_match_nothing(outcomes):
    bad = [(f"matched [{a.case.label}]", f"{_matches(a.body)} matches: {a.show()}") for a in outcomes["answers"]
           if a.case.no_match and a.status == 200 and _matches(a.body)]
    assert not bad, report("SQL fragments or LIKE wildcards that matched stored resources", bad)


def test_data_intact_after_the_run(outcomes):
    before_rows, after_rows = outcomes["rows"]
    assert after_rows == before_rows
    before_docs, after_docs = outcomes["docs"]
    assert after_docs == before_docs


def test_every_hostile_search_is_audited(outcomes):
    """Fail-closed auditing: no search, however malformed, may leave no audit record."""
    cap = outcomes["capture"]
    bad = [(f"{a.status} [{a.case.label}]", a.show()) for a in outcomes["answers"]
           if a.request_id and a.request_id in cap.audit]
    assert not bad, report("Requests whose audit record could not be written (logged only)", bad)


def test_no_search_outlives_its_deadline(outcomes):
    """A hang check (the app's search deadline is 1 s), not a benchmark."""
    limit = SEARCH_TIMEOUT_MS / 1000 + 9  # the deadline, plus building and shaping around it (and CI noise)
    slow = [(f"over {limit:.0f} s [{a.case.label}]", f"{a.seconds:.1f} s {a.show()}")
            for a in outcomes["answers"] if a.seconds > limit]
    assert not slow, report(f"Requests slower than {limit:.0f} s", slow)
