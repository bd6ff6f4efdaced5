"""An in-memory registry with the interface of app.indexing.registry, for search tests.

Why a fake: the search stages must be testable without the spec-driven registry, and the tests
should state exactly which parameters (and types) they rely on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SP:
    code: str
    type: str
    expression: str = ""
    targets: tuple[str, ...] = ()
    components: tuple = ()
    column: str | None = None


def _common() -> dict[str, SP]:
    return {
        "_id": SP("_id", "token", "Resource.id", column="res_id"),
        "_lastUpdated": SP("_lastUpdated", "date", "Resource.meta.lastUpdated", column="last_updated"),
        "_profile": SP("_profile", "uri", "Resource.meta.profile"),
        "_tag": SP("_tag", "token", "Resource.meta.tag"),
    }


_code = SP("code", "token", "Observation.code")
_vq = SP("value-quantity", "quantity", "Observation.value")

PARAMS: dict[str, dict[str, SP]] = {
    "Patient": {
        "identifier": SP("identifier", "token"),
        "name": SP("name", "string"),
        "family": SP("family", "string"),
        "birthdate": SP("birthdate", "date"),
        "gender": SP("gender", "token"),
        "general-practitioner": SP("general-practitioner", "reference",
                                   targets=("Organization", "Practitioner", "PractitionerRole")),
        "organization": SP("organization", "reference", targets=("Organization",)),
        "link": SP("link", "reference", targets=("Patient", "RelatedPerson")),
    },
    "Organization": {
        "name": SP("name", "string"),
        "identifier": SP("identifier", "token"),
        "partof": SP("partof", "reference", targets=("Organization",)),
    },
    "Practitioner": {
        "name": SP("name", "string"),
        "identifier": SP("identifier", "token"),
    },
    "Observation": {
        "code": _code,
        "status": SP("status", "token"),
        "subject": SP("subject", "reference", targets=("Patient", "Group", "Device", "Location")),
        "patient": SP("patient", "reference", targets=("Patient",)),
        "date": SP("date", "date"),
        "value-quantity": _vq,
        "value-string": SP("value-string", "string"),
        "code-value-quantity": SP("code-value-quantity", "composite",
                                  components=((_code, "code"), (_vq, "value"))),
        "combo-code": SP("combo-code", "token"),
        "component-code-value-quantity": SP(
            "component-code-value-quantity", "composite",
            components=((SP("component-code", "token"), "code"),
                        (SP("component-value-quantity", "quantity"), "value"))),
        "_text": SP("_text", "special"),
    },
    "DiagnosticReport": {
        "code": SP("code", "token"),
        "subject": SP("subject", "reference", targets=("Patient", "Group", "Device", "Location")),
        "result": SP("result", "reference", targets=("Observation",)),
    },
    "RiskAssessment": {
        "probability": SP("probability", "number"),
        "subject": SP("subject", "reference", targets=("Patient", "Group")),
    },
}

COMPARTMENT = {
    "Patient": ("link",),
    "Observation": ("subject", "performer"),
    "DiagnosticReport": ("subject",),
    "RiskAssessment": ("subject",),
}


@dataclass
class FakeRegistry:
    params_by_type: dict[str, dict[str, SP]] = field(default_factory=lambda: PARAMS)

    def params(self, res_type: str) -> dict[str, SP]:
        if res_type not in self.params_by_type:
            return {}
        return {**_common(), **self.params_by_type[res_type]}

    def get(self, res_type: str, code: str) -> SP | None:
        return self.params(res_type).get(code)

    def compartment_params(self, res_type: str) -> tuple[str, ...]:
        return COMPARTMENT.get(res_type, ())


REGISTRY = FakeRegistry()
