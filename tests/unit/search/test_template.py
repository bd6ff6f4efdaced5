"""Statement templates (app.search.template): what is a shape, what is a value, and that a
template run with a request's values is the statement an uncached build gives that request."""

from __future__ import annotations

import re

import pytest
from search_fakes import REGISTRY, SP
from sqlalchemy.dialects import postgresql

from app.search import compile_tree, parse
from app.search.expr import And, Match, Not, TokenValue
from app.search.template import Binder, NotTemplatable, Templates, walk


def _tree(res_type, params):
    return parse(res_type, params, REGISTRY, strict=True).tree()


def _key(res_type, params):
    b = Binder()
    return walk(_tree(res_type, params), b)[0], b.values


def _flat(stmt, values=None):
    """The SQL with every bind as ``?`` and the bound values in order of appearance."""
    c = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"render_postcompile": True})
    text = re.sub(r"::(VARCHAR|TIMESTAMP WITHOUT TIME ZONE|FLOAT|INTEGER|BIGINT)", "", str(c))
    names = re.findall(r"%\((\w+)\)s", text)
    params = c.construct_params(values)
    return re.sub(r"%\(\w+\)s", "?", " ".join(text.split())), [params[n] for n in names]


SAME_SHAPE = [
    ("Observation", [("subject", "Patient/a"), ("code", "http://loinc.org|1")],
     [("subject", "Patient/b"), ("code", "http://loinc.org|2")]),
    ("Observation", [("date", "ge2020-01-01"), ("date", "lt2021")], [("date", "ge1999-05-01"), ("date", "lt2000")]),
    ("Patient", [("identifier", "s|1")], [("identifier", "t|2")]),
    ("Patient", [("_id", "a,b")], [("_id", "c,d")]),
    ("Observation", [("subject:Patient.identifier", "s|1")], [("subject:Patient.identifier", "s|2")]),
    ("Patient", [("_has:Observation:subject:code", "x")], [("_has:Observation:subject:code", "y")]),
]


@pytest.mark.parametrize("res_type, a, b", SAME_SHAPE)
def test_values_do_not_change_the_shape(res_type, a, b):
    ka, va = _key(res_type, a)
    kb, vb = _key(res_type, b)
    assert ka == kb and hash(ka) == hash(kb)
    assert list(va) == list(vb) and va != vb  # same names, other values


OTHER_SHAPE = [
    ("Observation", [("date", "ge2020")], [("date", "gt2020")]),  # prefix
    ("Patient", [("identifier", "s|1")], [("identifier", "|1")]),  # system mode
    ("Patient", [("identifier", "s|1")], [("identifier", "1")]),
    ("Patient", [("identifier", "s|1")], [("identifier", "s|")]),  # code present or not
    ("Patient", [("gender", "male")], [("gender:not", "male")]),  # modifier
    ("Patient", [("_id", "a,b")], [("_id", "a")]),  # number of values
    ("Observation", [("subject", "Patient/a")], [("subject", "a")]),  # target type given or not
    ("Observation", [("subject", "Patient/a")], [("patient", "Patient/a")]),  # parameter
]


@pytest.mark.parametrize("res_type, a, b", OTHER_SHAPE)
def test_structure_changes_the_shape(res_type, a, b):
    assert _key(res_type, a)[0] != _key(res_type, b)[0]


@pytest.mark.parametrize("res_type, params", [
    ("Patient", [("name", "ada")]),  # strings: the compiler derives prefix bounds from the value
    ("Patient", [("birthdate", "ap2000-01-01")]),  # ap: its range depends on the time of the search
    ("Observation", [("value-quantity", "5.4|http://unitsofmeasure.org|mg")]),
])
def test_values_the_compilers_transform_are_not_templated(res_type, params):
    with pytest.raises(NotTemplatable):
        _key(res_type, params)


def test_security_labels_stay_literals_in_the_shape():
    code = _tree("Observation", [("code", "c")])
    keys = []
    for label in ("R", "V"):
        rec = Binder()
        hide = Not(Match(SP("_security", "token"), None, (TokenValue(label, "s", "eq"),)))
        keys.append(walk(And((code, hide)), rec)[0])
        assert list(rec.values) == ["sv0"]  # the code only
    assert keys[0] != keys[1]


@pytest.mark.parametrize("res_type, a, b", SAME_SHAPE)
@pytest.mark.parametrize("limit", [None, 21])
def test_template_with_values_is_the_uncached_statement(res_type, a, b, limit):
    built = Binder(build=True)
    template = compile_tree(res_type, walk(_tree(res_type, a), built)[1], (">", 0), limit)
    for params in (a, b):
        rec = Binder()
        tree = _tree(res_type, params)
        walk(tree, rec)
        plain = compile_tree(res_type, tree, (">", 0), limit)
        assert _flat(template, rec.values) == _flat(plain), params


def test_a_template_run_without_its_values_fails_instead_of_binding_null():
    b = Binder(build=True)
    stmt = compile_tree("Patient", walk(_tree("Patient", [("identifier", "s|1")]), b)[1])
    with pytest.raises(Exception, match="sv0"):
        stmt.compile(dialect=postgresql.dialect()).construct_params({})


def test_templates_are_bounded():
    t = Templates(max_shapes=3)
    for i in range(7):
        t.put(i, object())
        assert len(t) <= 3
    assert t.get(6) is not None
