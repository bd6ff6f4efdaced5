"""Validation of incoming FHIR R4 JSON: structure, primitive formats and the NHS-number rule.

Two passes, because neither alone is enough (see docs/decisions/0002-r4b-models-for-r4.md):

1. A fast, type-aware walk over the parsed JSON, driven by metadata read once from the
   fhir.resources R4B models. It enforces the FHIR JSON rules the pydantic models let through in
   lax mode: ``"true"`` for a boolean, ``"1"`` for an integer, ``"1.5"`` for a decimal, a JSON
   *string* where an object is expected (the models would parse it as JSON!), ``{}``, ``[]``,
   ``null`` and ``""``, Python field names such as ``active__ext`` accepted by
   ``populate_by_name``, several ``value[x]`` at once, and unknown ``resourceType`` in
   ``contained`` / ``Bundle.entry.resource`` (which crashes the models with a KeyError). The same
   walk checks every NHS-number Identifier, at any depth.
2. ``model_validate`` with the R4B model, which checks cardinality, required elements and the
   value format of each primitive (dates, ids, codes, decimals...).

Issues from both passes are merged (one issue per element path), capped, and raised as one
FhirError, so a client sees all its mistakes at once rather than one per round trip.
"""

from __future__ import annotations

import decimal
import logging
import math
import re
import types
import typing
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import ValidationError

from app.fhir import nhs_number
from app.fhir.errors import FhirError, Issue
from app.fhir.jsonutil import MAX_JSON_DEPTH, too_deep
from app.fhir.narrative import div_problems

logger = logging.getLogger(__name__)

MAX_ISSUES = 50

# Every resource type of FHIR R4 4.0.1 (the R4 Patient CompartmentDefinition lists all of them but
# Parameters). R4B-only types (Citation, SubscriptionTopic, ...) have models but are not R4, so they
# are treated as unknown; the 18 R4 types R4B dropped (MedicinalProduct*, Substance{NucleicAcid,
# Polymer,...}, EffectEvidenceSynthesis, RiskEvidenceSynthesis) have no model and cannot be checked.
R4_RESOURCE_TYPES: frozenset[str] = frozenset(
    """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse
    AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle
    CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem ChargeItemDefinition Claim
    ClaimResponse ClinicalImpression CodeSystem Communication CommunicationRequest
    CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage
    CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device
    DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement DiagnosticReport
    DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter Endpoint
    EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
    EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal
    GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization
    ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan
    Invoice Library Linkage List Location Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProduct MedicinalProductAuthorization
    MedicinalProductContraindication MedicinalProductIndication MedicinalProductIngredient
    MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged
    MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition
    MessageHeader MolecularSequence NamingSystem NutritionOrder Observation
    ObservationDefinition OperationDefinition OperationOutcome Organization
    OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation Person
    PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire
    QuestionnaireResponse RelatedPerson RequestGroup ResearchDefinition
    ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
    RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
    SpecimenDefinition StructureDefinition StructureMap Subscription Substance
    SubstanceNucleicAcid SubstancePolymer SubstanceProtein SubstanceReferenceInformation
    SubstanceSourceMaterial SubstanceSpecification SupplyDelivery SupplyRequest Task
    TerminologyCapabilities TestReport TestScript ValueSet VerificationResult
    VisionPrescription
    """.split()
)

# --------------------------------------------------------------------------------------------
# Model metadata for the walk
# --------------------------------------------------------------------------------------------

# JSON kinds an element can take.
_STR, _BOOL, _INT, _DEC, _COMPLEX, _RESOURCE, _PEXT, _ANY, _URI, _XHTML = range(10)
_PRIMITIVE_KINDS = frozenset((_STR, _BOOL, _INT, _DEC, _URI, _XHTML))
_URI_TYPES = frozenset(("Uri", "Url", "Canonical", "Oid", "Uuid", "UuidVersion"))
_MAX_STRING = 1024 * 1024  # R4: "strings SHALL NOT exceed 1MB"
_WHITESPACE = re.compile(r"\s")
# Narrative is rendered by apps: refuse the constructs R4 forbids in it (scripts, forms, frames,
# objects, event attributes, javascript: URLs). A cheap screen, not a full XHTML validator.
_KIND_NAMES = {
    _STR: "a JSON string",
    _BOOL: "a JSON boolean (true/false)",
    _INT: "a JSON number without a fraction",
    _DEC: "a JSON number",
    _COMPLEX: "a JSON object",
    _RESOURCE: "a JSON object with a resourceType",
    _PEXT: "a JSON object",
    _URI: "a JSON string",
    _XHTML: "a JSON string",
}


class _Field(typing.NamedTuple):
    is_list: bool
    kind: int
    model: type[FHIRAbstractModel] | None
    choice: str | None  # "value" for valueQuantity etc.
    r4_only: bool = False  # R4 allows it, the R4B model does not (see _r4_open_type_shim)
    codes: frozenset[str] | None = None  # a required binding's complete code list


class _Spec(typing.NamedTuple):
    fields: dict[str, _Field]
    is_resource: bool
    is_identifier: bool
    required: tuple[str, ...]  # checked by the walk too: pydantic skips them after a field error


_SPECS: dict[type, _Spec] = {}
_RESOURCE_MODELS: dict[str, type[FHIRAbstractModel] | None] = {}
_NONE_TYPE = type(None)


def _unwrap(annotation: Any) -> tuple[bool, Any] | None:
    """Strip Optional/List wrappers; None for shapes that are not FHIR elements (fhir_comments)."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(annotation) if a is not _NONE_TYPE]
            if len(args) != 1:
                return None
            annotation = args[0]
        elif origin is list:
            is_list = True
            annotation = typing.get_args(annotation)[0]
        else:
            return is_list, annotation


def _field_kind(annotation: Any) -> tuple[int, type[FHIRAbstractModel] | None]:
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        names = {type(m).__name__ for m in metadata}
        if names & _URI_TYPES:
            return _URI, None
        if "Xhtml" in names:
            return _XHTML, None
        annotation = base
    if annotation is bool:
        return _BOOL, None
    if annotation is int:
        return _INT, None
    if annotation is decimal.Decimal:
        return _DEC, None
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        model = annotation.get_model_klass()
        if issubclass(annotation, FhirElementOrResourceBase):
            return (_RESOURCE, None) if model.__name__ == "Resource" else (_ANY, None)
        if model.__name__ == "FHIRPrimitiveExtension":
            return _PEXT, model
        return _COMPLEX, model
    # str, date/datetime/time (JSON strings), bytes (base64Binary), UUID, AnyUrl ...
    return _STR, None


def _codes(info: Any) -> frozenset[str] | None:
    """The complete code list of a required binding, as the models record it; a list ending in
    "+" is only the start of a longer value set, so it cannot be enforced."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    values = extra.get("enum_values")
    if not values or "+" in values:
        return None
    return frozenset(values)


def _spec(model: type[FHIRAbstractModel]) -> _Spec:
    spec = _SPECS.get(model)
    if spec is not None:
        return spec
    choice_of: dict[str, str] = {}
    try:
        groups = model.get_one_of_many_fields(None)  # type: ignore[arg-type]  # uses no state
    except Exception:  # pragma: no cover - defensive against a model that does
        groups = {}
    for prefix, names in groups.items():
        for name in names:
            choice_of[name] = prefix
    fields: dict[str, _Field] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        if alias == "fhir_comments":
            continue  # not part of FHIR R4 JSON
        unwrapped = _unwrap(info.annotation)
        if unwrapped is None:
            continue
        is_list, inner = unwrapped
        kind, sub = _field_kind(inner)
        fields[alias] = _Field(is_list, kind, sub, choice_of.get(name), codes=_codes(info))
    _r4_open_type_shim(fields)
    required = [info.alias or name for name, info in model.model_fields.items() if info.is_required()]
    try:
        required += [alias for alias, _ in model.get_required_fields(None)]  # type: ignore[arg-type]
    except Exception:  # pragma: no cover - defensive, as above
        pass
    spec = _Spec(
        fields,
        model.has_resource_base(),
        model.__name__ == "Identifier",
        tuple(dict.fromkeys(r for r in required if r in fields)),
    )
    _SPECS[model] = spec
    return spec


_R4B_ONLY_OPEN_TYPES = ("CodeableReference", "RatioRange")


def _r4_open_type_shim(fields: dict[str, _Field]) -> None:
    """Make R4B's "open type" choices (Extension.value[x] and the like) match R4 again.

    R4B added CodeableReference and RatioRange to the open types and dropped Meta. Both
    directions matter: an R4 client may send ``valueMeta`` (valid R4, unknown to the model) and must
    not be able to store ``valueRatioRange`` (no R4 reader could parse it back).
    """
    open_prefixes = {
        f.choice
        for alias, f in fields.items()
        if f.choice is not None and alias == f"{f.choice}RatioRange"
    }
    if not open_prefixes:
        return
    meta = get_fhir_model_class("Meta")
    for prefix in open_prefixes:
        for suffix in _R4B_ONLY_OPEN_TYPES:
            fields.pop(prefix + suffix, None)
        fields[prefix + "Meta"] = _Field(False, _COMPLEX, meta, prefix, True)


def resource_model(resource_type: str) -> type[FHIRAbstractModel] | None:
    """The R4B model used to validate an R4 resource type, or None when there is none.

    Cached because ``get_fhir_model_class`` imports by string and this runs for every write.
    """
    try:
        return _RESOURCE_MODELS[resource_type]
    except KeyError:
        pass
    model = None
    if resource_type in R4_RESOURCE_TYPES:
        try:
            candidate = get_fhir_model_class(resource_type)
        except (ValueError, ImportError):
            candidate = None
        if candidate is not None and candidate.has_resource_base():
            model = candidate
    if len(_RESOURCE_MODELS) < 1024:  # arbitrary strings from clients must not grow it forever
        _RESOURCE_MODELS[resource_type] = model
    return model


# --------------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 40) -> str:
    """A bounded rendering of client input: diagnostics must never echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Walker:
    __slots__ = ("issues", "business", "full", "r4_only")

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.business: list[Issue] = []
        self.full = False
        self.r4_only: list[tuple[str, Any, type[FHIRAbstractModel]]] = []

    def add(self, code: str, path: str, message: str) -> None:
        if len(self.issues) >= MAX_ISSUES:
            self.full = True
            return
        self.issues.append(Issue(code, f"{path}: {message}", "error", [path]))

    def resource(self, obj: dict, path: str) -> None:
        rt = obj.get("resourceType")
        if not isinstance(rt, str):
            self.add("structure", path, "a contained or inline resource needs a resourceType")
            return
        model = resource_model(rt)
        if model is None:
            self.add("structure", f"{path}.resourceType", f"Unknown resourceType {_short(rt)}")
            return
        self.element(obj, _spec(model), path)

    def element(self, obj: dict, spec: _Spec, path: str) -> None:
        if not obj:
            self.add("structure", path, "empty objects are not allowed in FHIR JSON")
            return
        fields = spec.fields
        choices: set[str] | None = None
        for key, value in obj.items():
            f = fields.get(key)
            if f is None:
                if key == "resourceType" and spec.is_resource:
                    continue
                self.add("structure", f"{path}.{key}", "unknown element")
                continue
            if f.choice is not None:
                if choices is None:
                    choices = set()
                if f.choice in choices:
                    self.add(
                        "structure",
                        f"{path}.{f.choice}[x]",
                        f"only one {f.choice}[x] type may be present",
                    )
                choices.add(f.choice)
            if value is None:
                self.add("structure", f"{path}.{key}", "null is not allowed; omit the element")
                continue
            if f.r4_only:
                self.r4_only.append((f"{path}.{key}", value, f.model))  # type: ignore[arg-type]
            if f.is_list:
                if type(value) is not list:
                    self.add(
                        "structure",
                        f"{path}.{key}",
                        f"expected a JSON array, found a JSON {_json_type(value)}",
                    )
                    continue
                if not value:
                    self.add("structure", f"{path}.{key}", "empty arrays are not allowed")
                    continue
                for i, item in enumerate(value):
                    if item is None:
                        self._null_item(obj, key, f.kind, i, f"{path}.{key}[{i}]")
                    else:
                        self.value(item, f, path, key, i)
            else:
                self.value(value, f, path, key, None)
            if self.full:
                return
        for alias in spec.required:
            if alias not in obj and "_" + alias not in obj:
                self.add("required", f"{path}.{alias}", "required element is missing")
        if spec.is_resource:
            rid = obj.get("id")
            if type(rid) is str and len(rid) > 64:
                self.add("value", f"{path}.id", "a resource id is at most 64 characters")
        if spec.is_identifier and obj.get("system") == nhs_number.NHS_NUMBER_SYSTEM:
            self._nhs_number(obj.get("value"), f"{path}.value")

    def value(self, value: Any, f: _Field, path: str, key: str, index: int | None) -> None:
        kind = f.kind
        t = type(value)
        if kind == _STR:
            if t is str:
                if not value:
                    self.add("value", _p(path, key, index), "empty strings are not allowed")
                elif len(value) > _MAX_STRING:
                    self.add("value", _p(path, key, index), "strings may not exceed 1 MB")
                elif f.codes is not None and value not in f.codes:
                    self.add(
                        "code-invalid",
                        _p(path, key, index),
                        f"{_short(value)} is not one of the allowed codes: {', '.join(sorted(f.codes))}",
                    )
                return
        elif kind == _URI:
            if t is str:
                if not value:
                    self.add("value", _p(path, key, index), "empty strings are not allowed")
                elif _WHITESPACE.search(value):
                    self.add("value", _p(path, key, index), "a URI may not contain whitespace")
                return
        elif kind == _XHTML:
            if t is str:
                if not value.startswith("<div") or "http://www.w3.org/1999/xhtml" not in value:
                    self.add(
                        "value",
                        _p(path, key, index),
                        "narrative must be a <div> in the XHTML namespace",
                    )
                elif problems := div_problems(value):  # app/fhir/narrative.py: active content
                    self.add(
                        "value",
                        _p(path, key, index),
                        "narrative may not contain active content (scripts, forms, frames, objects, "
                        "styles or event attributes; FHIR txt-1): " + "; ".join(problems[:5]),
                    )
                return
        elif kind == _COMPLEX or kind == _PEXT:
            if t is dict:
                self.element(value, _spec(f.model), _p(path, key, index))  # type: ignore[arg-type]
                return
        elif kind == _DEC:
            if t is int or t is float:
                if t is float and not math.isfinite(value):
                    self.add("value", _p(path, key, index), "decimal must be finite")
                return
        elif kind == _INT:
            if t is int:
                return
        elif kind == _BOOL:
            if t is bool:
                return
        elif kind == _RESOURCE:
            if t is dict:
                self.resource(value, _p(path, key, index))
                return
        else:
            return
        self.add(
            "structure",
            _p(path, key, index),
            f"expected {_KIND_NAMES[kind]}, found a JSON {_json_type(value)}",
        )

    def _null_item(self, obj: dict, key: str, kind: int, i: int, path: str) -> None:
        # A null in a primitive array is FHIR's placeholder that lines values up with the
        # `_name` extension array (and vice versa); it is valid only if the partner is not null.
        if kind in _PRIMITIVE_KINDS:
            partner = obj.get("_" + key)
        elif kind == _PEXT and key.startswith("_"):
            partner = obj.get(key[1:])
        else:
            partner = None
        if type(partner) is list and i < len(partner) and partner[i] is not None:
            return
        self.add("structure", path, "null is not allowed here")

    def _nhs_number(self, value: Any, path: str) -> None:
        if not isinstance(value, str):
            return  # a missing/odd value is a structural problem reported elsewhere
        if nhs_number.is_valid(value) and nhs_number.normalise(value) == value:
            return
        if nhs_number.is_valid(value):
            message = (
                f"NHS number {_short(value, 20)} must be written as 10 digits without spaces "
                f"or hyphens ({nhs_number.normalise(value)})"
            )
        else:
            message = f"{_short(value, 20)} is not a valid NHS number (Modulus 11 check failed)"
        if len(self.business) < MAX_ISSUES:
            self.business.append(Issue("business-rule", message, "error", [path]))


def _p(path: str, key: str, index: int | None) -> str:
    return f"{path}.{key}" if index is None else f"{path}.{key}[{index}]"


# --------------------------------------------------------------------------------------------
# pydantic errors -> issues
# --------------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:__ext)?|_[A-Za-z][A-Za-z0-9]*")
_CHOICE_LIST = re.compile(r"list \[([^\]]*)\]")
_STRUCTURE_TYPES = frozenset(
    (
        "extra_forbidden",
        "model_validation_format",
        "json_invalid",
        "model_type",
        "model_attributes_type",
        "dict_type",
        "list_type",
        "string_type",
        "bool_type",
        "int_type",
        "float_type",
        "decimal_type",
        "bytes_type",
        "date_type",
        "datetime_type",
        "time_type",
        "uuid_type",
        "url_type",
        "is_instance_of",
    )
)
_REQUIRED_TYPES = frozenset(("missing", "model_field_validation.missing"))


def _loc_to_path(root: str, loc: tuple) -> str:
    parts = [root]
    for part in loc:
        if type(part) is int:
            parts.append(f"[{part}]")
        elif part == "resource_type":
            parts.append(".resourceType")
        elif part == "root":
            continue
        elif isinstance(part, str) and _NAME.fullmatch(part):
            if part.endswith("__ext"):
                part = "_" + part[:-5]
            parts.append("." + part)
        # anything else is pydantic-internal ("function-wrap[...]", "str", "list[str]", ...)
    return "".join(parts)


def _issue_from_error(root: str, error: dict) -> Issue:
    etype = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    msg = str(error.get("msg", "invalid value"))
    path = _loc_to_path(root, loc)
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "field value is expected from this list" in msg or "field value from this list" in msg:
        # the choice-type checks report on the parent element with the full list of names
        found = _CHOICE_LIST.search(msg)
        names = re.findall(r"'([^']+)'", found.group(1)) if found else []
        prefix = _common_prefix(names)
        if prefix:
            path = f"{path}.{prefix}[x]"
        if "got multiple" in msg:
            return Issue("structure", f"{path}: only one {prefix}[x] type may be present", "error", [path])
        return Issue("required", f"{path}: a {prefix}[x] value is required", "error", [path])
    if etype == "extra_forbidden":
        code, text = "structure", "unknown element"
    elif etype in _REQUIRED_TYPES:
        code, text = "required", "required element is missing"
    elif etype == "fhir-validation-wrong-resource-type":
        code, text = "invalid", "resourceType does not match the resource being validated"
    elif etype == "json_invalid":
        code, text = "structure", "expected a JSON object"
    elif etype == "list_type" and "None is not allowed" in msg:
        code, text = "structure", "null is not allowed in this array"
    elif etype in _STRUCTURE_TYPES:
        code, text = "structure", msg
    elif (
        etype == "value_error"
        or etype.endswith("_parsing")
        or etype.startswith(("string_", "date_", "datetime_", "time_", "int_", "url_", "uuid_"))
        or etype in ("greater_than_equal", "less_than_equal", "greater_than", "less_than")
        or etype.startswith("base64")
    ):
        code, text = "value", msg
    else:
        code, text = "invalid", msg
    if len(text) > 200:
        text = text[:197] + "..."
    return Issue(code, f"{path}: {text}", "error", [path])


def _common_prefix(names: list[str]) -> str:
    if not names:
        return ""
    first = names[0]
    end = len(first)
    for name in names[1:]:
        end = min(end, len(name))
        for i in range(end):
            if first[i] != name[i]:
                end = i
                break
    prefix = first[:end]
    # cut back to the last lower-case run: "value" from "valueBoolean"/"valueBase64Binary"
    while prefix and prefix[-1].isupper():
        prefix = prefix[:-1]
    return prefix


def _covered(path: str, reported: set[str]) -> bool:
    """True if the walk already reported this element or one of its ancestors."""
    if path in reported:
        return True
    for i, ch in enumerate(path):
        if (ch == "." or ch == "[") and path[:i] in reported:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Public interface
# --------------------------------------------------------------------------------------------


def _validate_r4_only(walker: _Walker) -> None:
    """Validate elements the R4B model cannot (valueMeta) with their own datatype model."""
    for path, value, model in walker.r4_only:
        if type(value) is not dict:
            continue  # the walk has reported it
        try:
            model.model_validate(value)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_context=False, include_input=False):
                walker.issues.append(_issue_from_error(path, error))
        except Exception:  # pragma: no cover - same guard as for whole resources
            walker.issues.append(Issue("invalid", f"{path}: invalid value", "error", [path]))
        if len(walker.issues) >= MAX_ISSUES:
            walker.full = True
            return


def _dom_2(data: dict, rt: str, walker: _Walker) -> None:
    """R4 invariant dom-2: a contained resource holds no contained resources of its own."""
    contained = data.get("contained")
    if not isinstance(contained, list):
        return
    for i, item in enumerate(contained):
        if isinstance(item, dict) and "contained" in item:
            walker.add("invariant", f"{rt}.contained[{i}].contained",
                       "a contained resource cannot contain resources (dom-2)")


def validate_resource(data: Any, expected_type: str | None = None) -> None:
    """Raise FhirError unless ``data`` is a valid FHIR R4 resource (of ``expected_type``, if given).

    400 with ``structure``/``required``/``value``/``invalid`` issues for malformed content, 422
    ``business-rule`` when the content is well-formed but an NHS number fails its check digit.
    Whether the type is enabled on this server is the caller's concern.
    """
    if not isinstance(data, dict):
        raise FhirError(400, "structure", "A resource must be a JSON object")
    if too_deep(data):
        # The walker and pydantic recurse; direct callers (loader, bundles) get a 400 too.
        raise FhirError(
            400, "structure", f"The resource nests objects and arrays deeper than {MAX_JSON_DEPTH} levels"
        )
    rt = data.get("resourceType")
    if not isinstance(rt, str) or not rt:
        raise FhirError(
            400, "structure", "The resource has no resourceType string", ["resourceType"]
        )
    if expected_type is not None and rt != expected_type:
        raise FhirError(
            400,
            "invalid",
            f"resourceType {_short(rt)} does not match the expected type '{expected_type}'",
            ["resourceType"],
        )
    model = resource_model(rt)
    if model is None:
        if rt in R4_RESOURCE_TYPES:
            message = f"Resource type '{rt}' is not supported: the server's R4B models lack it"
        else:
            message = f"Unknown resourceType {_short(rt)}"
        raise FhirError(400, "structure", message, ["resourceType"])

    walker = _Walker()
    walker.element(data, _spec(model), rt)
    _dom_2(data, rt, walker)
    issues = walker.issues

    if not walker.full:
        _validate_r4_only(walker)
    if not walker.full:
        try:
            model.model_validate(data)
        except ValidationError as exc:
            reported = {i.expression[0] for i in issues if i.expression}
            reported.update(path for path, _, _ in walker.r4_only)  # the shim's, not errors
            for error in exc.errors(include_url=False, include_context=False, include_input=False):
                issue = _issue_from_error(rt, error)
                path = issue.expression[0] if issue.expression else rt
                if _covered(path, reported):
                    continue
                reported.add(path)
                issues.append(issue)
                if len(issues) >= MAX_ISSUES:
                    walker.full = True
                    break
        except Exception as exc:  # a model bug must become a 400, never a 500
            if not issues:
                logger.warning("model_validate(%s) raised %s", rt, type(exc).__name__, exc_info=True)
                issues.append(
                    Issue("invalid", f"{rt}: the resource could not be validated", "error", [rt])
                )

    if issues:
        if walker.full:
            issues = issues[:MAX_ISSUES]
            issues.append(
                Issue("too-costly", f"Validation stopped after {MAX_ISSUES} issues", "information")
            )
        raise FhirError.from_issues(400, issues)
    if walker.business:
        raise FhirError.from_issues(422, walker.business)


def validate_json_bytes(raw: bytes | str, expected_type: str | None = None) -> dict:
    """Parse and validate a request body, returning the parsed resource for indexing/storage.

    Parsing with orjson and validating the dict is cheaper than pydantic's
    ``model_validate_json`` (which would leave us without a dict and force a second parse).
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's message gives line/column but no content from the body
        raise FhirError(400, "structure", f"The body is not valid JSON: {exc}") from None
    validate_resource(data, expected_type)
    return data
