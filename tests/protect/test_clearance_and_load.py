"""Clearance rules for user tokens (app AND user), the clearance CLI, and labelling on arrival
through ``results-repo load`` (NDJSON) and plain create, on both databases."""

from __future__ import annotations

import pytest
from protecthelp import (
    ACT,
    CHLAMYDIA_CODE,
    CONF,
    HIV_CODE,
    Fhir,
    app_client,
    backend_client,
    engine_of,
    observation,
    security_of,
    token,
    uid,
    user,
    user_token,
)

USER_SCOPE = "openid fhirUser user/*.rs"


@pytest.fixture(scope="module")
def data(protect_app, protect_server):
    app, base = protect_app, protect_server.base
    w = Fhir(base, token(app, backend_client(app, "system/*.cruds"), "system/*.cruds"))
    pid, hiv, std = uid("p-"), uid("hiv-"), uid("std-")
    assert w.put(f"Patient/{pid}", {"resourceType": "Patient", "id": pid}).status_code == 201
    r = w.post("Observation", observation(hiv, pid, HIV_CODE))  # plain create: labelled too
    assert r.status_code == 201, r.text
    hiv = r.headers["Location"].split("/Observation/")[1].split("/")[0]
    assert w.put(f"Observation/{std}", observation(std, pid, CHLAMYDIA_CODE)).status_code == 201
    return {"pid": pid, "hiv": hiv, "std": std, "writer": w}


def test_user_token_sees_what_both_app_and_user_are_cleared_for(protect_app, protect_server, data) -> None:
    app, srv = protect_app, protect_server
    cleared_user = user(app, "Practitioner/gum-1", "*")
    hiv_user = user(app, "Practitioner/gum-2", "HIV R")
    open_app = app_client(app, USER_SCOPE, "*")
    closed_app = app_client(app, USER_SCOPE)  # no clearance row: nothing

    def sees(client: str, username: str) -> set[str]:
        f = Fhir(srv.base, user_token(srv, client, username, USER_SCOPE))
        return {i.split("/")[1] for i in f.ids(f"Observation?subject=Patient/{data['pid']}")}

    assert sees(closed_app, cleared_user) == set()  # the user's clearance does not travel into any app
    assert sees(open_app, cleared_user) == {data["hiv"], data["std"]}
    assert sees(open_app, hiv_user) == {data["hiv"]}  # intersection: HIV + R only


def test_clearance_changes_apply_to_issued_tokens(protect_app, protect_server, data) -> None:
    from app.protect.clearance import parse_clearance, remove_clearance, set_clearance

    cid = backend_client(protect_app, "system/*.rs")
    f = Fhir(protect_server.base, token(protect_app, cid, "system/*.rs"))
    assert f.get(f"Observation/{data['std']}").status_code == 404
    set_clearance(engine_of(protect_app), "client", cid, parse_clearance(["STD"]), False)
    assert f.get(f"Observation/{data['std']}").status_code == 200
    assert remove_clearance(engine_of(protect_app), "client", cid)
    assert f.get(f"Observation/{data['std']}").status_code == 404


def test_clearance_cli(protect_app) -> None:
    from flask.cli import ScriptInfo

    from app.cli import main

    cid = backend_client(protect_app, "system/*.rs")
    info = ScriptInfo(create_app=lambda: protect_app)
    runner = protect_app.test_cli_runner()
    out = runner.invoke(main, ["clearance", "set", "--client", cid, "--labels", "R HIV"], obj=info)
    assert out.exit_code == 0, out.output
    assert "labels HIV R" in out.output
    out = runner.invoke(main, ["clearance", "list"], obj=info)
    assert f"client\t{cid}\tHIV R\tbreak-glass=no" in out.output
    out = runner.invoke(main, ["clearance", "set", "--client", "no-such-client", "--labels", "R"], obj=info)
    assert out.exit_code != 0 and "no client" in out.output
    out = runner.invoke(main, ["clearance", "set", "--client", cid, "--labels", "not a label!"], obj=info)
    assert out.exit_code != 0
    out = runner.invoke(main, ["clearance", "remove", "--client", cid], obj=info)
    assert out.exit_code == 0, out.output


def test_results_repo_load_labels_on_arrival(protect_app, protect_server, data, tmp_path) -> None:
    import orjson
    from flask.cli import ScriptInfo

    from app.cli import main

    oid = uid("load-")
    path = tmp_path / "results.ndjson"
    path.write_bytes(orjson.dumps(observation(oid, data["pid"], HIV_CODE)) + b"\n")
    out = protect_app.test_cli_runner().invoke(main, ["load", str(path)],
                                                obj=ScriptInfo(create_app=lambda: protect_app))
    assert out.exit_code == 0, out.output
    cleared = Fhir(protect_server.base, token(protect_app, backend_client(protect_app, "system/*.rs", "*"),
                                              "system/*.rs"))
    r = cleared.get(f"Observation/{oid}")
    assert r.status_code == 200, out.output
    assert {(ACT, "HIV"), (CONF, "R")} <= security_of(r.json())
    analyst = Fhir(protect_server.base, token(protect_app, backend_client(protect_app, "system/*.rs"), "system/*.rs"))
    assert analyst.get(f"Observation/{oid}").status_code == 404
    # loading the same file again is a no-op (the labels are part of the stored content)
    out = protect_app.test_cli_runner().invoke(main, ["load", str(path)], obj=ScriptInfo(create_app=lambda: protect_app))
    assert out.exit_code == 0, out.output
    assert cleared.get(f"Observation/{oid}").json()["meta"]["versionId"] == "1"


def test_labels_are_kept_when_a_patch_or_update_drops_them(protect_app, protect_server, data) -> None:
    """While the code stays sensitive, an update without labels is labelled again.  (The writer
    is cleared for the label: an uncleared one may not update it at all, test_withheld_writes.)"""
    w = Fhir(protect_server.base, token(protect_app, backend_client(protect_app, "system/*.cruds", "STD"),
                                        "system/*.cruds"))
    body = observation(data["std"], data["pid"], CHLAMYDIA_CODE)
    assert w.put(f"Observation/{data['std']}", {**body, "status": "amended"}).status_code == 200
    cleared = Fhir(protect_server.base, token(protect_app, backend_client(protect_app, "system/*.rs", "*"),
                                              "system/*.rs"))
    r = cleared.get(f"Observation/{data['std']}")
    assert r.json()["status"] == "amended" and (ACT, "STD") in security_of(r.json())
