"""Bulk Data ``$export`` routes on the FHIR blueprint (so its authentication applies).

Kick-off: ``[base]/$export``, ``[base]/Patient/$export``, ``[base]/Group/<id>/$export`` (GET, or
POST with a Parameters body), ``Prefer: respond-async`` required. Status: ``$export-status/<job>``
(GET polls, DELETE cancels). Files: ``$export-file/<job>/<name>``.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request, send_file

from app.api.negotiation import fhir_response, prefer_handling
from app.bulk import jobs
from app.bulk.params import params_from_parameters, parse_export_params
from app.bulk.settings import settings_of
from app.bulk.worker import ensure_inprocess_worker
from app.fhir.errors import FhirError

FILE_ENDPOINT = "fhir.bulk_file"


def _ctx():
    from app.api.fhir import ctx

    return ctx()


def _kick_off(level: str, group_id: str | None) -> Response:
    prefer = [p.split(";")[0].strip().lower() for p in request.headers.get("Prefer", "").split(",")]
    if "respond-async" not in prefer:
        raise FhirError(400, "invalid", "$export is asynchronous: send the header Prefer: respond-async.")
    c = _ctx()
    if group_id is not None:
        c.check_id(group_id)
    if request.method == "POST":
        from app.api.fhir import _json_body

        pairs = params_from_parameters(_json_body()) + list(request.args.items(multi=True))
    else:
        pairs = list(request.args.items(multi=True))
    params = parse_export_params(
        pairs, level=level, enabled=c.enabled_types, registry=c.registry, tz=c.tz, base_url=c.base_url,
        strict=prefer_handling(request) == "strict",
    )
    request_url = c.base_url + request.full_path[len("/fhir"):].rstrip("?")
    app = current_app._get_current_object()
    result = jobs.kick_off(c, settings_of(app), level=level, group_id=group_id, params=params,
                           request_url=request_url)
    ensure_inprocess_worker(app)
    return fhir_response(result)


def register_bulk_routes(bp: Blueprint) -> None:
    @bp.route("/$export", methods=["GET", "POST"], endpoint="bulk_export_system")
    def export_system() -> Response:
        return _kick_off("system", None)

    @bp.route("/Patient/$export", methods=["GET", "POST"], endpoint="bulk_export_patient")
    def export_patient() -> Response:
        return _kick_off("patient", None)

    @bp.route("/Group/<group_id>/$export", methods=["GET", "POST"], endpoint="bulk_export_group")
    def export_group(group_id: str) -> Response:
        return _kick_off("group", group_id)

    @bp.route("/$export-status/<job_id>", methods=["GET", "DELETE"], endpoint="bulk_status")
    def export_status(job_id: str) -> Response:
        app = current_app._get_current_object()
        s = settings_of(app)
        if request.method == "DELETE":
            return fhir_response(jobs.cancel(_ctx(), s, job_id))
        ensure_inprocess_worker(app)  # after a restart: pick queued/abandoned jobs up again
        return fhir_response(jobs.status(_ctx(), s, job_id))

    @bp.get("/$export-file/<job_id>/<name>", endpoint="bulk_file")
    def export_file(job_id: str, name: str) -> Response:
        path, _job = jobs.file_path(_ctx(), settings_of(current_app), job_id, name)
        resp = send_file(path, mimetype="application/fhir+ndjson", conditional=True, max_age=0)
        resp.headers["Content-Type"] = "application/fhir+ndjson"
        return resp
