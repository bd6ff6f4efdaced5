"""Stage 3: rewrites of the expression tree (compartments now; granular scopes later).

Why rewrites on the tree rather than on SQL: authorisation must be compiled into the query
(DESIGN principle 5), and doing it on the tree means the same restriction is applied to the main
search, includes, history and export by the one compiler.
"""

from __future__ import annotations

from typing import Any

from app.search.expr import Const, Match, Node, ReferenceValue, TokenValue, and_, or_
from app.search.parse import _BUILTINS


def _compartment_codes(registry: Any, res_type: str) -> list[str]:
    try:
        items = registry.compartment_params(res_type)
    except (KeyError, AttributeError):
        return []
    codes = []
    for it in items or ():
        codes.append(it if isinstance(it, str) else it.code)
    return codes


def compartment_condition(patient_id: str, registry: Any, res_type: str) -> Node:
    """The Patient-compartment membership of ``res_type`` as a node.

    An OR over the compartment's reference parameters pointing at ``Patient/patient_id``; for
    Patient itself the patient's own row (``_id``) is also in its compartment.  Types outside
    the compartment match nothing (Const(False)), so a patient token never leaks them.
    """
    alts: list[Node] = []
    if res_type == "Patient":
        id_param = registry.get("Patient", "_id") or _BUILTINS["_id"]
        alts.append(Match(id_param, None, (TokenValue(patient_id),)))
    for code in _compartment_codes(registry, res_type):
        if code == "{def}":
            continue
        p = registry.get(res_type, code)
        if p is None or p.type != "reference":
            continue
        alts.append(Match(p, None, (ReferenceValue(res_id=patient_id, res_type="Patient"),)))
    if not alts:
        return Const(False)
    return or_(*alts)


def restrict_to_compartment(tree: Node, patient_id: str, registry: Any, res_type: str) -> Node:
    """``tree AND (resource is in Patient/patient_id's compartment)``."""
    return and_(tree, compartment_condition(patient_id, registry, res_type))
