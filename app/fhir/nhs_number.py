"""NHS number normalisation and Modulus 11 check-digit validation.

Patients are matched across hospitals by NHS number, so a mistyped number silently splits one
patient's record in two (or, worse, joins two patients). The check digit catches nearly all single
digit errors and transpositions, which is why every write that carries an NHS number is checked.

Rule (NHS Data Dictionary, "NHS Number"): multiply the first nine digits by the weights 10, 9, ... 2,
sum, take the remainder modulo 11 and subtract it from 11. A result of 11 means check digit 0; a
result of 10 means the number is invalid (such numbers are never issued); otherwise the result must
equal the tenth digit.

Decision on repeated-digit numbers: every number made of one repeated digit (0000000000,
1111111111, ..., 9999999999) passes Modulus 11, yet none is ever issued. They are the usual
placeholders typed when the real number is unknown, and because patients are matched by NHS
number, accepting them would merge every patient who got the same placeholder. They are rejected.
No range check is made beyond that: test numbers (the 9xx range, e.g. 9000000009) must stay valid
for integration testing, and the issued ranges differ between England, Wales, Scotland and Northern
Ireland.
"""

from __future__ import annotations

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"

_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_SEPARATORS = str.maketrans("", "", " -")


def normalise(value: str) -> str:
    """Strip the spaces and hyphens people and printed letters put in (``943 476 5919``)."""
    return value.translate(_SEPARATORS)


def check_digit(first_nine: str) -> int | None:
    """Return the expected check digit, or None when no check digit can make the number valid.

    Exposed so that test-data generators can build valid numbers instead of hard-coding them.
    """
    if len(first_nine) != 9 or not (first_nine.isascii() and first_nine.isdigit()):
        raise ValueError("expected exactly nine ASCII digits")
    remainder = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS, strict=True)) % 11
    digit = 11 - remainder
    if digit == 11:
        return 0
    if digit == 10:
        return None
    return digit


def is_valid(value: str) -> bool:
    """True for a well-formed NHS number, written with or without spaces/hyphens.

    Callers that need the canonical stored form (ten digits, nothing else) should compare the value
    with ``normalise(value)`` as well; this function answers only "is this the number of someone".
    """
    if not isinstance(value, str):
        return False
    digits = normalise(value)
    # isascii() first: str.isdigit() is also true for e.g. Arabic-Indic or superscript digits.
    if len(digits) != 10 or not (digits.isascii() and digits.isdigit()):
        return False
    if digits == digits[0] * 10:
        return False
    expected = check_digit(digits[:9])
    return expected is not None and expected == int(digits[9])
