"""The label vocabulary, the high-water mark, the labelling policy and its configuration errors
(no database needed), and the withholding predicate in the permission."""

from __future__ import annotations

import json

import pytest

from app.protect.labels import (
    ACT_CODE,
    CONFIDENTIALITY,
    bundle_label,
    labels_in_content,
    parse_label,
    parse_labels,
)
from app.protect.policy import build_policy, parse_rules


def test_parse_label() -> None:
    assert parse_label("R") == (CONFIDENTIALITY, "R")
    assert parse_label("HIV") == (ACT_CODE, "HIV")
    assert parse_label("http://example.org/labels|VIP") == ("http://example.org/labels", "VIP")
    for bad in ("", "a b", "|X", "sys tem|X", "x" * 65):
        with pytest.raises(ValueError):
            parse_label(bad)
    assert parse_labels("R, V HIV") == {(CONFIDENTIALITY, "R"), (CONFIDENTIALITY, "V"), (ACT_CODE, "HIV")}


def _doc(*labels: tuple[str, str]) -> str:
    return json.dumps({"resourceType": "Observation", "meta": {"security": [{"system": s, "code": c} for s, c in labels]}},
                      separators=(",", ":"))


def test_bundle_label_high_water_mark() -> None:
    assert bundle_label([]) is None
    assert bundle_label(['{"resourceType":"Observation"}', None]) is None
    assert bundle_label([_doc((CONFIDENTIALITY, "N"))]) == {"system": CONFIDENTIALITY, "code": "N"}
    assert bundle_label([_doc((CONFIDENTIALITY, "N")), _doc((ACT_CODE, "HIV"))])["code"] == "R"
    assert bundle_label([_doc((ACT_CODE, "HIV"), (CONFIDENTIALITY, "R")), _doc((CONFIDENTIALITY, "V"))])["code"] == "V"
    assert bundle_label([_doc((ACT_CODE, "HTEST"))]) is None  # not a sensitivity code
    assert labels_in_content(_doc((ACT_CODE, "HIV")).encode()) == {(ACT_CODE, "HIV")}


def test_policy_labels_incoming_resources() -> None:
    pol = build_policy({"SENSITIVE_CODES": {"http://loinc.org|7918-6": ["HIV", "R"], "_comment": "ignored"}})
    body = {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "7918-6"}]},
            "meta": {"security": [{"system": CONFIDENTIALITY, "code": "R"}]}}
    pol.label(body)
    assert body["meta"]["security"] == [{"system": CONFIDENTIALITY, "code": "R"}, {"system": ACT_CODE, "code": "HIV"}]
    other = {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}}
    pol.label(other)
    assert "meta" not in other
    assert pol.sensitive == parse_labels("R V HIV STD ETH PSY SDV SEX")  # the default
    assert pol.withheld_for(parse_labels("R HIV")) == parse_labels("V STD ETH PSY SDV SEX")
    assert pol.withheld_for(None) == frozenset()
    assert build_policy({"SENSITIVE_LABELS": []}).withheld_for(frozenset()) == frozenset()


def test_policy_configuration_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="system\\|code"):
        parse_rules({"7918-6": ["HIV"]}, "x")
    with pytest.raises(ValueError, match="non-empty list"):
        parse_rules({"http://loinc.org|7918-6": []}, "x")
    with pytest.raises(ValueError):
        parse_rules({"http://loinc.org|7918-6": ["not a label"]}, "x")
    f = tmp_path / "codes.json"
    f.write_text('{"http://loinc.org|7918-6": ["HIV", "R"]}')
    assert build_policy({"SENSITIVE_CODES_FILE": str(f)}).rules
    f.write_text("{not json")
    with pytest.raises(ValueError, match="SENSITIVE_CODES_FILE"):
        build_policy({"SENSITIVE_CODES_FILE": str(f)})


def test_a_bad_configuration_stops_start_up(tmp_path) -> None:
    from app import create_app

    with pytest.raises(RuntimeError, match="Sensitive-results configuration"):
        create_app({"TESTING": True, "SECRET_KEY": "x", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                    "SENSITIVE_CODES_FILE": str(tmp_path / "missing.json")})


def test_withholding_is_a_compiled_predicate_on_read_and_search_letters_only() -> None:
    from app.auth.permission import Permission
    from app.indexing.registry import load_registry
    from app.search.expr import Not

    reg = load_registry(["Observation", "Patient"])
    perm = Permission.from_scope("system/*.cruds", reg)
    assert perm.condition("Observation", "s") is None
    perm.set_withheld(parse_labels("HIV R"))
    for letter in "rs":
        cond = perm.condition("Observation", letter)
        assert isinstance(cond, Not) and cond.child.param.code == "_security"
    for letter in "cud":
        assert perm.condition("Observation", letter) is None
    assert not perm.bounded("Observation", "s")  # type history stays open to a system token
