import pytest

from app.fhir.nhs_number import NHS_NUMBER_SYSTEM, check_digit, is_valid, normalise


@pytest.mark.parametrize(
    "value",
    [
        "9434765919",  # NHS England test patient
        "9000000009",  # NHS England test patient
        "9912003888",  # UK Core example Patient RichardSmith
        "943 476 5919",  # as printed on letters
        "943-476-5919",
        " 9434765919 ",
        "4010232137",
        "9449306680",  # 11 - 0 = 11 -> check digit 0
    ],
)
def test_valid(value: str) -> None:
    assert is_valid(value)


@pytest.mark.parametrize(
    "value, why",
    [
        ("9434765918", "wrong check digit"),
        ("9434765910", "wrong check digit"),
        ("4434765919", "transposed/changed digit"),
        ("9434756919", "two digits transposed"),
        ("943476591", "nine digits"),
        ("94347659190", "eleven digits"),
        ("", "empty"),
        ("943476591X", "letter"),
        ("943.476.5919", "dots are not a separator"),
        ("٩٤٣٤٧٦٥٩١٩", "non-ASCII digits"),
        ("0000000000", "repeated digit passes mod 11 but is a placeholder"),
        ("1111111111", "repeated digit passes mod 11 but is a placeholder"),
        ("9999999999", "repeated digit passes mod 11 but is a placeholder"),
        ("0000000060", "remainder 1 -> check value 10: never issued"),
    ],
)
def test_invalid(value: str, why: str) -> None:
    assert not is_valid(value), why


def test_remainder_one_gives_no_check_digit() -> None:
    # 0,0,...,0,6: 6*2 = 12, 12 % 11 = 1 -> 11 - 1 = 10 -> no valid check digit
    assert check_digit("000000006") is None
    assert check_digit("000000000") == 0  # 11 -> 0
    assert check_digit("943476591") == 9


def test_not_a_string_is_invalid() -> None:
    assert not is_valid(9434765919)  # type: ignore[arg-type]


def test_normalise() -> None:
    assert normalise("943 476-5919") == "9434765919"
    assert NHS_NUMBER_SYSTEM == "https://fhir.nhs.uk/Id/nhs-number"
