"""The operator's sensitivity policy: which labels are withheld, which codes are labelled on arrival.

Configuration (config.py / environment, see docs/security.md):

- ``SENSITIVE_LABELS``: the labels withheld from tokens without clearance (default
  ``R V HIV STD ETH PSY SDV SEX``); empty switches withholding off.
- ``SENSITIVE_CODES``: a mapping ``"system|code" -> [labels]``; and/or ``SENSITIVE_CODES_FILE``,
  a JSON file holding such a mapping (keys starting with ``_`` are comments).  A resource whose
  ``code``, ``type`` or ``procedureCode`` carries one of these codings gets the labels added to
  its ``meta.security`` before it is stored: on create, update, patch, every transaction or batch
  entry, and ``results-repo load`` (all of them pass through one validation step).

Why labelling at arrival and not at read: the label is then in the stored JSON and the search
index like any label a sender set, so withholding is one compiled predicate on every path, and a
labelled resource stays labelled in exports and history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.protect.labels import DEFAULT_SENSITIVE, Label, parse_label, parse_labels

_CODED_ELEMENTS = ("code", "type", "procedureCode")
_KEY = "results_repo_protect_policy"


@dataclass(frozen=True)
class SensitivityPolicy:
    sensitive: frozenset[Label]
    rules: dict[Label, tuple[Label, ...]] = field(default_factory=dict)

    def withheld_for(self, clearance: frozenset[Label] | None) -> frozenset[Label]:
        """The labels a caller with ``clearance`` may not see (None = cleared for everything)."""
        if clearance is None:
            return frozenset()
        return self.sensitive - clearance

    def label(self, body: dict) -> None:
        """Add the configured labels for the resource's codes to its ``meta.security`` (in place)."""
        if not self.rules:
            return
        wanted: list[Label] = []
        for name in _CODED_ELEMENTS:
            for coding in _codings(body.get(name)):
                for lab in self.rules.get(coding, ()):
                    if lab not in wanted:
                        wanted.append(lab)
        if not wanted:
            return
        meta = body.get("meta")
        if not isinstance(meta, dict):
            meta = body["meta"] = {}
        sec = meta.get("security")
        if not isinstance(sec, list):
            sec = meta["security"] = []
        have = {(c.get("system") or "", c.get("code")) for c in sec if isinstance(c, dict)}
        for system, code in wanted:
            if (system, code) not in have:
                sec.append({"system": system, "code": code})


def _codings(value: Any):
    """(system, code) of the codings of a CodeableConcept, or of a list of them."""
    concepts = value if isinstance(value, list) else [value]
    for cc in concepts:
        if not isinstance(cc, dict):
            continue
        for c in cc.get("coding") or []:
            if isinstance(c, dict) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str):
                yield c["system"], c["code"]


def parse_rules(mapping: Any, where: str) -> dict[Label, tuple[Label, ...]]:
    """``{"system|code": ["HIV", "R"], ...}`` -> rules; ValueError naming ``where`` when malformed."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: expected a JSON object mapping \"system|code\" to a list of labels")
    out: dict[Label, tuple[Label, ...]] = {}
    for key, labels in mapping.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        system, bar, code = key.rpartition("|")
        if not bar or not system or not code:
            raise ValueError(f"{where}: key {key[:100]!r} must be system|code (e.g. http://loinc.org|7918-6)")
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{where}: {key[:100]!r} needs a non-empty list of labels")
        out[(system, code)] = tuple(dict.fromkeys(parse_label(x) for x in labels))
    return out


def build_policy(config: Any) -> SensitivityPolicy:
    """From the app config; ValueError on a malformed setting (start-up stops)."""
    raw = config.get("SENSITIVE_LABELS", DEFAULT_SENSITIVE)
    sensitive = parse_labels(raw if raw is not None else ())
    rules: dict[Label, tuple[Label, ...]] = {}
    path = config.get("SENSITIVE_CODES_FILE")
    if path:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"SENSITIVE_CODES_FILE {path}: {exc}") from None
        rules.update(parse_rules(doc, f"SENSITIVE_CODES_FILE {path}"))
    if config.get("SENSITIVE_CODES"):
        rules.update(parse_rules(config["SENSITIVE_CODES"], "SENSITIVE_CODES"))
    return SensitivityPolicy(sensitive, rules)


def policy_of(app: Any) -> SensitivityPolicy:
    """The app's policy, built once (a malformed configuration raises RuntimeError)."""
    pol = app.extensions.get(_KEY)
    if pol is None:
        try:
            pol = build_policy(app.config)
        except ValueError as exc:
            raise RuntimeError(f"Sensitive-results configuration: {exc}") from None
        app.extensions[_KEY] = pol
    return pol
