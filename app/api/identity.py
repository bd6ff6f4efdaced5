"""HTTP adapter for the patient identity operations (app/identity): $match, $merge, $unmerge,
$correct-nhs-number on the FHIR blueprint."""

from __future__ import annotations

from flask import Blueprint, Response, request

from app.api.negotiation import fhir_response


def register_identity_routes(bp: Blueprint, ctx, json_body) -> None:
    """``ctx``/``json_body``: the FHIR blueprint's own context and body readers (auth applied,
    size, depth and NUL checks), so these routes behave like every other FHIR route."""
    from app.identity.correct import correct_nhs_number
    from app.identity.match import match
    from app.identity.merge import merge, unmerge

    @bp.post("/Patient/$match", endpoint="patient_match")
    def patient_match() -> Response:
        c = ctx()
        return fhir_response(match(c, json_body()))

    @bp.post("/Patient/$merge", endpoint="patient_merge")
    def patient_merge() -> Response:
        c = ctx()
        return fhir_response(merge(c, json_body()))

    @bp.post("/Patient/$unmerge", endpoint="patient_unmerge")
    def patient_unmerge() -> Response:
        c = ctx()
        return fhir_response(unmerge(c, json_body()))

    @bp.post("/Patient/<res_id>/$correct-nhs-number", endpoint="patient_correct_nhs_number")
    def patient_correct(res_id: str) -> Response:
        c = ctx()
        return fhir_response(correct_nhs_number(c, res_id, json_body()), request, write=True)
