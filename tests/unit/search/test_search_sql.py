"""Golden SQL for the main plan shapes (PostgreSQL dialect, bound parameters, casts stripped).

Why: the shape of the SQL is a performance contract (one index seek per clause, semi-joins for
matches, anti-joins for negation); a refactor that changes it should fail loudly here.
"""

from __future__ import annotations

import re
from datetime import datetime

from search_fakes import REGISTRY
from sqlalchemy.dialects import postgresql

from app.search import compile_search, compile_tree, parse
from app.search.compile.date import ap_widen
from app.search.expr import DateValue


def sql(res_type, params):
    stmt = compile_search(parse(res_type, params, REGISTRY, strict=True), REGISTRY)
    compiled = stmt.compile(dialect=postgresql.dialect())
    text = re.sub(r"::(VARCHAR|TIMESTAMP WITHOUT TIME ZONE|FLOAT|INTEGER)", "", str(compiled))
    return " ".join(text.split()), compiled.params


def head(res_type: str) -> str:
    return ("SELECT resource.rid, resource.res_id, resource.version FROM resource "
            f"WHERE resource.res_type = '{res_type}' AND resource.deleted IS false AND ")


def test_token_system_code():
    text, params = sql("Patient", [("identifier", "https://fhir.nhs.uk/Id/nhs-number|943")])
    assert text == head("Patient") + (
        "resource.rid IN (SELECT sp_token_1.rid FROM sp_token AS sp_token_1 "
        "WHERE sp_token_1.res_type = 'Patient' AND sp_token_1.param = 'identifier' "
        "AND sp_token_1.system = %(system_1)s AND sp_token_1.code = %(code_1)s)")
    # the type and parameter names are the search's structure, inline (app.search.plan.const);
    # only the values are bound
    assert params == {"system_1": "https://fhir.nhs.uk/Id/nhs-number", "code_1": "943"}


def test_string_prefix_and_token_not():
    text, params = sql("Patient", [("name", "o'br%"), ("gender:not", "male")])
    assert text == head("Patient") + (
        "resource.rid IN (SELECT sp_string_1.rid FROM sp_string AS sp_string_1 "
        "WHERE sp_string_1.res_type = 'Patient' AND sp_string_1.param = 'name' "
        "AND sp_string_1.value_norm >= %(value_norm_1)s AND sp_string_1.value_norm < %(value_norm_2)s "
        "AND sp_string_1.value_norm LIKE %(value_norm_3)s ESCAPE '\\') "
        "AND NOT (EXISTS (SELECT sp_token_1.rid FROM sp_token AS sp_token_1 "
        "WHERE sp_token_1.res_type = 'Patient' AND sp_token_1.param = 'gender' "
        "AND sp_token_1.code = %(code_1)s AND sp_token_1.rid = resource.rid))")
    assert (params["value_norm_1"], params["value_norm_2"], params["value_norm_3"]) == (
        "o'br%", "o'br&", "o'br\\%%")


def test_chain_joins_current_target_row():
    text, _ = sql("Observation", [("subject:Patient.name", "x")])
    assert text == head("Observation") + (
        "resource.rid IN (SELECT sp_reference_1.rid FROM sp_reference AS sp_reference_1 "
        "JOIN resource AS resource_1 ON resource_1.res_type = sp_reference_1.target_type "
        "AND resource_1.res_id = sp_reference_1.target_id "
        "WHERE sp_reference_1.res_type = 'Observation' AND sp_reference_1.param = 'subject' "
        "AND sp_reference_1.target_type = 'Patient' AND resource_1.deleted IS false "
        "AND resource_1.rid IN (SELECT sp_string_1.rid FROM sp_string AS sp_string_1 "
        "WHERE sp_string_1.res_type = 'Patient' AND sp_string_1.param = 'name' "
        "AND sp_string_1.value_norm >= %(value_norm_1)s AND sp_string_1.value_norm < %(value_norm_2)s "
        "AND sp_string_1.value_norm LIKE %(value_norm_3)s ESCAPE '\\'))")


def test_has_selects_target_ids():
    text, params = sql("Patient", [("_has:Observation:subject:code", "1")])
    assert text == head("Patient") + (
        "resource.res_id IN (SELECT sp_reference_1.target_id FROM sp_reference AS sp_reference_1 "
        "JOIN resource AS resource_1 ON resource_1.rid = sp_reference_1.rid "
        "WHERE sp_reference_1.res_type = 'Observation' AND sp_reference_1.param = 'subject' "
        "AND sp_reference_1.target_type = 'Patient' AND resource_1.deleted IS false "
        "AND resource_1.rid IN (SELECT sp_token_1.rid FROM sp_token AS sp_token_1 "
        "WHERE sp_token_1.res_type = 'Observation' AND sp_token_1.param = 'code' "
        "AND sp_token_1.code = %(code_1)s))")
    assert params == {"code_1": "1"}


def test_composite_joins_on_grp():
    text, params = sql("Observation", [("code-value-quantity", "a|b$gt5")])
    assert text == head("Observation") + (
        "resource.rid IN (SELECT sp_token_1.rid FROM sp_token AS sp_token_1 "
        "JOIN sp_quantity AS sp_quantity_1 ON sp_quantity_1.rid = sp_token_1.rid "
        "AND sp_quantity_1.grp = sp_token_1.grp "
        "WHERE sp_token_1.res_type = 'Observation' AND sp_token_1.param = 'code-value-quantity$0' "
        "AND sp_token_1.system = %(system_1)s AND sp_token_1.code = %(code_1)s "
        "AND sp_quantity_1.res_type = 'Observation' AND sp_quantity_1.param = 'code-value-quantity$1' "
        "AND sp_quantity_1.value > %(value_1)s)")
    assert params == {"system_1": "a", "code_1": "b", "value_1": 5.0}


def test_date_ge_and_id():
    text, params = sql("Patient", [("birthdate", "ge2020"), ("_id", "a,b")])
    assert text == head("Patient") + (
        "resource.rid IN (SELECT sp_date_1.rid FROM sp_date AS sp_date_1 "
        "WHERE sp_date_1.res_type = 'Patient' AND sp_date_1.param = 'birthdate' "
        "AND sp_date_1.high >= %(high_1)s AND (sp_date_1.high > %(high_2)s OR sp_date_1.low >= %(low_1)s "
        "AND sp_date_1.high <= %(high_3)s)) AND resource.res_id IN (__[POSTCOMPILE_res_id_1])")
    assert params["res_id_1"] == ["a", "b"]
    # the implied bound: every ge match ends at or after the start of the query range
    assert params["high_1"] == params["low_1"] == datetime(2020, 1, 1)


def test_ap_rule():
    now = datetime(2030, 1, 1)
    v = DateValue("ap", datetime(2020, 1, 1), datetime(2020, 1, 1, 23, 59, 59))
    lo, hi = ap_widen(v, now)
    # 10% of ~10 years is ~1 year each side
    assert datetime(2018, 12, 31) < lo < datetime(2019, 1, 2)
    assert datetime(2020, 12, 31) < hi < datetime(2021, 1, 2)
    # at least one day
    v = DateValue("ap", datetime(2029, 12, 31, 12), datetime(2029, 12, 31, 12))
    lo, hi = ap_widen(v, now)
    assert (lo, hi) == (datetime(2029, 12, 30, 12), datetime(2030, 1, 1, 12))


def test_date_le_carries_implied_low_bound():
    text, params = sql("Patient", [("birthdate", "le2020")])
    assert text == head("Patient") + (
        "resource.rid IN (SELECT sp_date_1.rid FROM sp_date AS sp_date_1 "
        "WHERE sp_date_1.res_type = 'Patient' AND sp_date_1.param = 'birthdate' "
        "AND sp_date_1.low <= %(low_1)s AND (sp_date_1.low < %(low_2)s OR sp_date_1.low >= %(low_3)s "
        "AND sp_date_1.high <= %(high_1)s))")
    assert params["low_1"] == params["high_1"] == datetime(2020, 12, 31, 23, 59, 59, 999999)


def bounded_sql(res_type, params, bound):
    stmt = compile_tree(res_type, parse(res_type, params, REGISTRY, strict=True).tree(), bound)
    compiled = stmt.compile(dialect=postgresql.dialect())
    text = re.sub(r"::(VARCHAR|TIMESTAMP WITHOUT TIME ZONE|FLOAT|INTEGER|BIGINT)", "", str(compiled))
    return " ".join(text.split()), compiled.params


def test_keyset_bound_is_pushed_into_each_subquery():
    text, params = bounded_sql("Patient", [("identifier", "s|1,s|2"), ("gender", "male")], (">", 500))
    assert text == head("Patient") + (
        "resource.rid IN (SELECT sp_token_1.rid FROM sp_token AS sp_token_1 "
        "WHERE sp_token_1.res_type = 'Patient' AND sp_token_1.param = 'identifier' "
        "AND (sp_token_1.system = %(system_1)s AND sp_token_1.code = %(code_1)s "
        "OR sp_token_1.system = %(system_2)s AND sp_token_1.code = %(code_2)s) "
        "AND sp_token_1.rid > %(rid_1)s) "
        "AND resource.rid IN (SELECT sp_token_2.rid FROM sp_token AS sp_token_2 "
        "WHERE sp_token_2.res_type = 'Patient' AND sp_token_2.param = 'gender' "
        "AND sp_token_2.code = %(code_3)s AND sp_token_2.rid > %(rid_2)s) "
        "AND resource.rid > %(rid_3)s")
    assert params["rid_1"] == params["rid_2"] == params["rid_3"] == 500


def test_previous_bound_and_negation_and_chain():
    text, params = bounded_sql(
        "Observation", [("subject:Patient.name", "x"), ("code:not", "c")], ("<", 7))
    # the chain's referring rows are bounded; the target's own subquery and the anti-join are not
    assert text.count("rid < ") == 2
    assert "sp_reference_1.rid < %(rid_1)s" in text and text.endswith("AND resource.rid < %(rid_2)s")
    assert "sp_string_1.rid <" not in text and "sp_token_1.rid <" not in text
    assert params["rid_1"] == params["rid_2"] == 7


def test_missing_false_is_bounded():
    text, _ = bounded_sql("Patient", [("gender:missing", "false")], (">", 1))
    assert text == head("Patient") + (
        "resource.rid IN (SELECT sp_token_1.rid FROM sp_token AS sp_token_1 "
        "WHERE sp_token_1.res_type = 'Patient' AND sp_token_1.param = 'gender' "
        "AND sp_token_1.rid > %(rid_1)s) AND resource.rid > %(rid_2)s")


def test_one_clause_count_reads_the_index_table_alone():
    from app.search.plan import count_query

    tree = parse("Patient", [("identifier", "s|1")], REGISTRY, strict=True).tree()
    text = " ".join(str(count_query("Patient", tree).compile(dialect=postgresql.dialect())).split())
    text = re.sub(r"::VARCHAR", "", text)
    assert text == (
        "SELECT count(DISTINCT sp_token_1.rid) AS count_1 FROM sp_token AS sp_token_1 "
        "WHERE sp_token_1.res_type = 'Patient' AND sp_token_1.param = 'identifier' "
        "AND sp_token_1.system = %(system_1)s AND sp_token_1.code = %(code_1)s")
    # several clauses, negations, chains, column parameters: the usual count over the matches
    for params in ([("identifier", "s|1"), ("gender", "male")], [("gender:not", "male")],
                   [("general-practitioner:Practitioner.name", "x")], [("_id", "a")],
                   [("gender:missing", "true")]):
        tree = parse("Patient", params, REGISTRY, strict=True).tree()
        assert count_query("Patient", tree) is None, params


def limited_sql(res_type, params, bound=None, limit=51):
    stmt = compile_tree(res_type, parse(res_type, params, REGISTRY, strict=True).tree(), bound, limit)
    compiled = stmt.compile(dialect=postgresql.dialect())
    text = re.sub(r"::(VARCHAR|TIMESTAMP WITHOUT TIME ZONE|FLOAT|INTEGER|BIGINT)", "", str(compiled))
    return " ".join(text.split()), compiled.params


def test_rid_order_page_is_cut_on_the_driving_index_table():
    text, params = limited_sql("Patient", [("identifier", "s|1"), ("birthdate", "lt2000")], (">", 9))
    assert text == head("Patient") + (
        "resource.rid IN (SELECT DISTINCT sp_token_1.rid FROM sp_token AS sp_token_1 "
        "WHERE sp_token_1.res_type = 'Patient' AND sp_token_1.param = 'identifier' "
        "AND sp_token_1.system = %(system_1)s AND sp_token_1.code = %(code_1)s "
        "AND sp_token_1.rid > %(rid_1)s "
        "AND sp_token_1.rid IN (SELECT sp_date_1.rid FROM sp_date AS sp_date_1 "
        "WHERE sp_date_1.res_type = 'Patient' AND sp_date_1.param = 'birthdate' "
        "AND sp_date_1.low < %(low_1)s AND sp_date_1.rid > %(rid_2)s) "
        "ORDER BY sp_token_1.rid ASC LIMIT %(param_1)s) AND resource.rid > %(rid_3)s")
    assert params["param_1"] == 51


def test_code_and_date_range_check_the_date_envelope_in_the_token_index():
    """Decision 0016: the token driver's rows carry their resource's date envelope, so the
    code's entries whose resource has no date near the range are skipped inside the token index;
    the date clauses still decide for the rest."""
    text, params = limited_sql("Observation", [("code", "http://loinc.org|2339-0"), ("date", "ge2010-01-01"),
                                               ("date", "lt2011-01-01"), ("date", "ne2010-06-01,gt2010-05")])
    assert ("AND sp_token_1.code = %(code_1)s "
            "AND sp_token_1.date_high >= %(date_high_1)s AND sp_token_1.date_low < %(date_low_1)s "
            "AND sp_token_1.rid IN (SELECT sp_date_1.rid FROM sp_date AS sp_date_1") in text
    assert params["date_high_1"] == datetime(2010, 1, 1) and params["date_low_1"] == datetime(2011, 1, 1)
    # "ne" bounds nothing, so its clause (an OR with gt) adds no envelope check
    assert text.count("sp_token_1.date_") == 2
    # a reference driver (this patient's results in a range) carries it too
    text, _ = limited_sql("Observation", [("subject", "Patient/1"), ("date", "ge2010")])
    assert "AND sp_reference_1.date_high >= %(date_high_1)s" in text
    # only the ``date`` parameter has an envelope
    text, _ = limited_sql("Observation", [("code", "x"), ("_lastUpdated", "ge2010")])
    assert "date_low" not in text and "date_high" not in text


def test_previous_page_driver_runs_backwards():
    text, _ = limited_sql("Patient", [("gender", "male")], ("<", 9), 4)
    assert "AND sp_token_1.rid < %(rid_1)s ORDER BY sp_token_1.rid DESC LIMIT %(param_1)s)" in text


def test_no_driver_with_resource_row_clauses():
    # _id, _lastUpdated and _has are on the resource row: the page is cut there, as before
    for params in ([("gender", "male"), ("_id", "a")], [("_has:Observation:subject:code", "1")],
                   [("gender:not", "male")], [("gender:missing", "true")]):
        text, _ = limited_sql("Patient", params)
        assert "LIMIT" not in text and "DISTINCT" not in text, params
    text, _ = limited_sql("Patient", [("gender:not", "male"), ("identifier", "s|")])
    assert "NOT (EXISTS (SELECT sp_token_2.rid FROM sp_token AS sp_token_2 " in text
    assert "AND sp_token_2.rid = sp_token_1.rid))" in text  # the anti-join probes the driver's rid


def test_names_outside_the_registry_alphabet_are_bound_not_inlined():
    from app.search.plan import const

    c = const("x' OR '1'='1").compile(dialect=postgresql.dialect())
    assert "OR" not in str(c) and list(c.params.values()) == ["x' OR '1'='1"]
    assert str(const("code-value-quantity$0").compile(dialect=postgresql.dialect())) == "'code-value-quantity$0'"
