"""Date precision ranges (with DST in the server zone) and UCUM canonical units."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from app.indexing.dates import MAX_DATETIME, MIN_DATETIME, date_range, period_range
from app.indexing.normalize import normalize_string
from app.indexing.ucum import canonical, canonical_unit

LONDON = ZoneInfo("Europe/London")
D = datetime
US = 999999

DATES = [
    # plain dates are local days in the server zone
    ("2024-03-31", D(2024, 3, 31, 0, 0), D(2024, 3, 31, 22, 59, 59, US)),  # GMT -> BST that day
    ("2024-07-01", D(2024, 6, 30, 23, 0), D(2024, 7, 1, 22, 59, 59, US)),  # BST
    ("2024-10-27", D(2024, 10, 26, 23, 0), D(2024, 10, 27, 23, 59, 59, US)),  # 25-hour day
    ("2024-01-15", D(2024, 1, 15, 0, 0), D(2024, 1, 15, 23, 59, 59, US)),  # GMT
    ("2024-03", D(2024, 3, 1, 0, 0), D(2024, 3, 31, 22, 59, 59, US)),
    ("2024-12", D(2024, 12, 1, 0, 0), D(2024, 12, 31, 23, 59, 59, US)),
    ("2024", D(2024, 1, 1, 0, 0), D(2024, 12, 31, 23, 59, 59, US)),
    ("2024-02", D(2024, 2, 1, 0, 0), D(2024, 2, 29, 23, 59, 59, US)),
    # dateTimes with a zone are exact to their precision
    ("2024-07-01T10:00:00Z", D(2024, 7, 1, 10, 0), D(2024, 7, 1, 10, 0, 0, US)),
    ("2024-07-01T10:00:00+02:00", D(2024, 7, 1, 8, 0), D(2024, 7, 1, 8, 0, 0, US)),
    ("2024-07-01T10:00:00-04:30", D(2024, 7, 1, 14, 30), D(2024, 7, 1, 14, 30, 0, US)),
    ("2024-07-01T10:00:00.5Z", D(2024, 7, 1, 10, 0, 0, 500000), D(2024, 7, 1, 10, 0, 0, 599999)),
    ("2024-07-01T10:00:00.123Z", D(2024, 7, 1, 10, 0, 0, 123000), D(2024, 7, 1, 10, 0, 0, 123999)),
    ("2024-07-01T10:00:00.1234567Z", D(2024, 7, 1, 10, 0, 0, 123456), D(2024, 7, 1, 10, 0, 0, 123456)),
    ("2024-07-01T10:00Z", D(2024, 7, 1, 10, 0), D(2024, 7, 1, 10, 0, 59, US)),
    # zone-less dateTimes are wall-clock in the server zone
    ("2024-07-01T10:00:00", D(2024, 7, 1, 9, 0), D(2024, 7, 1, 9, 0, 0, US)),
    ("2024-01-01T10:00:00", D(2024, 1, 1, 10, 0), D(2024, 1, 1, 10, 0, 0, US)),
    ("2024-10-27T01:30:00", D(2024, 10, 27, 0, 30), D(2024, 10, 27, 0, 30, 0, US)),  # fold=0 (BST)
    ("2024-03-31T01:30:00", D(2024, 3, 31, 1, 30), D(2024, 3, 31, 1, 30, 0, US)),  # gap: GMT
    # ends of time
    ("9999", D(9999, 1, 1), MAX_DATETIME),
    ("9999-12-31T23:59:59Z", D(9999, 12, 31, 23, 59, 59), MAX_DATETIME),
]


@pytest.mark.parametrize(("text", "low", "high"), DATES)
def test_date_range(text, low, high):
    assert date_range(text, LONDON) == (low, high)


def test_other_zone():
    assert date_range("2024-07-01", ZoneInfo("UTC")) == (D(2024, 7, 1), D(2024, 7, 1, 23, 59, 59, US))
    assert date_range("2024-07-01", ZoneInfo("America/New_York"))[0] == D(2024, 7, 1, 4, 0)


@pytest.mark.parametrize(
    "bad", ["", "2024-13", "2024-02-30", "24-01-01", "2024-01-01T25:00:00Z", "2024-01-01T10:00:00+25:00",
            "yesterday", "2024-01-01 10:00"]
)
def test_date_range_rejects(bad):
    assert date_range(bad, LONDON) is None


def test_period_range():
    assert period_range("2024-01-01", "2024-01-31", LONDON) == (D(2024, 1, 1), D(2024, 1, 31, 23, 59, 59, US))
    assert period_range(None, "2024-01-31", LONDON) == (MIN_DATETIME, D(2024, 1, 31, 23, 59, 59, US))
    assert period_range("2024-01-01", None, LONDON) == (D(2024, 1, 1), MAX_DATETIME)
    assert period_range(None, None, LONDON) is None
    assert period_range("garbage", None, LONDON) is None


UNITS = [
    (1, "mg/dL", 0.01, "g/L"),
    (0.01, "g/L", 0.01, "g/L"),
    (90, "mg/dL", 0.9, "g/L"),
    (5, "mmol/L", 0.005, "mol/L"),
    (5, "umol/L", 5e-6, "mol/L"),
    (140, "meq/L", 0.14, "mol/L"),
    (7.2, "10*9/L", 7.2e9, "/L"),
    (7200, "10*6/L", 7.2e9, "/L"),
    (7.2, "10*3/uL", 7.2e9, "/L"),
    (45, "%", 0.45, "1"),
    (72, "/min", 1.2, "/s"),
    (72, "{beats}/min", 1.2, "/s"),
    (80, "kg", 80000, "g"),
    (180, "cm", 1.8, "m"),
    (1, "mm3", 1e-6, "L"),
    (1, "uL", 1e-6, "L"),
    (90, "mL/min/{1.73_m2}", 0.0015, "L/s"),
    (1, "mg.dL-1", 0.01, "g/L"),
    (3, "{score}", 3, "1"),
]


@pytest.mark.parametrize(("value", "code", "canon_value", "canon_code"), UNITS)
def test_canonical(value, code, canon_value, canon_code):
    got_value, got_code = canonical(value, code)
    assert got_code == canon_code
    assert got_value == pytest.approx(canon_value, rel=1e-12)


def test_mg_dl_and_g_l_compare():
    assert canonical(100, "mg/dL") == canonical(1, "g/L")


def test_pressure_units_compare():
    mmhg, code1 = canonical(120, "mm[Hg]")
    kpa, code2 = canonical(16, "kPa")
    assert code1 == code2
    assert mmhg == pytest.approx(kpa, rel=1e-3)


@pytest.mark.parametrize("code", ["Cel", "[degF]", "foo", "mg/", "/", "mg//L", "mg dL", ""])
def test_unknown_units_unchanged(code):
    assert canonical_unit(code) is None
    assert canonical(5, code) == (5, code)


@pytest.mark.parametrize(
    ("text", "norm"),
    [("  Émilie   Dupré ", "emilie dupre"), ("STRASSE", "strasse"), ("Straße", "strasse"),
     ("ﬁnal", "final"), ("Zoë", "zoe"), ("a\tb\nc", "a b c"), ("x" * 300, "x" * 255)],
)
def test_normalize_string(text, norm):
    assert normalize_string(text) == norm
