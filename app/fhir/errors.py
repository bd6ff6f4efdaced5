"""FhirError: the one exception type that becomes an OperationOutcome response.

Every layer (storage, indexing, search, interactions) raises FhirError with an HTTP status and a
FHIR issue-type code (http://hl7.org/fhir/R4/valueset-issue-type.html); the HTTP layer renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Issue:
    code: str  # issue-type: invalid, structure, required, value, not-found, not-supported, ...
    diagnostics: str
    severity: str = "error"
    expression: list[str] | None = None

    def to_json(self) -> dict:
        out: dict = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


@dataclass
class FhirError(Exception):
    status: int
    code: str
    diagnostics: str
    expression: list[str] | None = None
    extra_issues: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        Exception.__init__(self, f"{self.status} {self.code}: {self.diagnostics}")

    @property
    def issues(self) -> list[Issue]:
        first = Issue(self.code, self.diagnostics, "error", self.expression)
        return [first, *self.extra_issues]

    def outcome(self) -> dict:
        return operation_outcome(self.issues)

    @classmethod
    def from_issues(cls, status: int, issues: list[Issue]) -> FhirError:
        first, *rest = issues
        return cls(status, first.code, first.diagnostics, first.expression, list(rest))


def operation_outcome(issues: list[Issue]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def info_outcome(diagnostics: str, code: str = "informational") -> dict:
    return operation_outcome([Issue(code, diagnostics, "information")])
