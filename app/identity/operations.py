"""How the identity operations appear in the CapabilityStatement (Patient resource entry)."""

from __future__ import annotations

OWN = "urn:results-repo:OperationDefinition"

CAPABILITY_OPERATIONS: list[dict] = [
    {
        "name": "match",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
        "documentation": "Scores candidates by NHS number (certain) or family, given, birth date, gender and "
        "postcode (probable/possible); advisory only, never links. Needs Patient search.",
    },
    {
        "name": "merge",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-merge",
        "documentation": "The R5 operation's parameters (source-patient[-identifier], target-patient[-identifier], "
        "preview). Re-points every result to the target in one transaction and records a Provenance. Needs "
        "unrestricted update on Patient and the affected types (system/ or practitioner user/ scopes).",
    },
    {
        "name": "unmerge",
        "definition": f"{OWN}/Patient-unmerge",
        "documentation": "Parameters source-patient (reference), optional target-patient, preview, reason: restores "
        "the exact pre-merge versions if nothing changed since; recorded as a Provenance.",
    },
    {
        "name": "correct-nhs-number",
        "definition": f"{OWN}/Patient-correct-nhs-number",
        "documentation": "POST Patient/{id}/$correct-nhs-number with nhs-number and reason: the only way besides "
        "a merge to change a Patient's NHS number; recorded as a Provenance.",
    },
]
