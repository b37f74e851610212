"""Structural validation of FHIR R4 resources, plus the code bindings fhir.resources skips.

fhir.resources (R4B models) checks shapes and types but accepts any string for a `code`, so
`status: "bogus"` passes; the required bindings this service depends on are checked here.
Every problem names its element as a FHIRPath-like location (`ServiceRequest.code.coding[0]`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from radproto.model.errors import MappingError

#: Required bindings of R4 (value sets "RequestStatus", "RequestIntent", "RequestPriority",
#: "TaskStatus", "TaskIntent"): element -> allowed codes.
REQUIRED_BINDINGS: dict[str, dict[str, frozenset[str]]] = {
    "ServiceRequest": {
        "status": frozenset({"draft", "active", "on-hold", "revoked", "completed",
                             "entered-in-error", "unknown"}),
        "intent": frozenset({"proposal", "plan", "directive", "order", "original-order",
                             "reflex-order", "filler-order", "instance-order", "option"}),
        "priority": frozenset({"routine", "urgent", "asap", "stat"}),
    },
    "Task": {
        "status": frozenset({"draft", "requested", "received", "accepted", "rejected", "ready",
                             "cancelled", "in-progress", "on-hold", "failed", "completed",
                             "entered-in-error"}),
        "intent": frozenset({"unknown", "proposal", "plan", "order", "original-order",
                             "reflex-order", "filler-order", "instance-order", "option"}),
        "priority": frozenset({"routine", "urgent", "asap", "stat"}),
    },
    "Condition": {},
    "Patient": {"gender": frozenset({"male", "female", "other", "unknown"})},
}
#: Elements a resource needs before this service can use it (beyond FHIR's own cardinality).
REQUIRED_ELEMENTS: dict[str, tuple[str, ...]] = {
    "ServiceRequest": ("status", "intent", "subject"),
    "Task": ("status", "intent"),
}
_MODULES = {
    "ServiceRequest": "servicerequest", "Task": "task", "Condition": "condition",
    "Patient": "patient", "Provenance": "provenance", "Bundle": "bundle",
    "Subscription": "subscription", "Parameters": "parameters",
}


@dataclass(frozen=True)
class Issue:
    location: str  # e.g. "ServiceRequest.status"
    message: str
    code: str = "invalid"  # OperationOutcome issue type: invalid, required, code-invalid, ...


class FhirValidationError(MappingError):
    """A resource is not valid FHIR R4 (or lacks what this service needs); names each element."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        first = issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(first.message + more, location=first.location)


def model_class(resource_type: str) -> type:
    """The fhir.resources R4B model of a resource type."""
    module = _MODULES.get(resource_type, resource_type.lower())
    try:
        return getattr(importlib.import_module(f"fhir.resources.R4B.{module}"), resource_type)
    except (ImportError, AttributeError) as exc:
        raise FhirValidationError(
            [Issue("resourceType", f"unknown resource type '{resource_type}'", "not-supported")]
        ) from exc


def validate_resource(resource: Any, expected: str | None = None) -> None:
    """Raise FhirValidationError listing every problem with `resource` (a JSON object)."""
    if not isinstance(resource, Mapping):
        raise FhirValidationError([Issue("(root)", "a FHIR resource must be a JSON object",
                                         "structure")])
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirValidationError([Issue("resourceType", "resourceType is missing", "required")])
    if expected and resource_type != expected:
        raise FhirValidationError([Issue(
            "resourceType", f"expected a {expected}, got '{resource_type}'", "not-supported")])
    issues = binding_issues(resource)
    try:
        model_class(resource_type).model_validate(dict(resource))
    except ValidationError as exc:
        issues += [_issue_from_pydantic(resource_type, err) for err in exc.errors()]
    except (TypeError, ValueError) as exc:  # fhir.resources root validators raise these too
        issues.append(Issue(resource_type, str(exc)))
    if issues:
        raise FhirValidationError(_unique(issues))


def binding_issues(resource: Mapping[str, Any]) -> list[Issue]:
    """Missing required elements and codes outside their required value set."""
    resource_type = str(resource.get("resourceType"))
    issues = [
        Issue(f"{resource_type}.{name}", f"{resource_type}.{name} is required", "required")
        for name in REQUIRED_ELEMENTS.get(resource_type, ())
        if resource.get(name) in (None, "", [], {})
    ]
    for name, allowed in REQUIRED_BINDINGS.get(resource_type, {}).items():
        value = resource.get(name)
        if value is not None and value not in allowed:
            issues.append(Issue(
                f"{resource_type}.{name}",
                f"'{value}' is not a valid {resource_type}.{name} "
                f"(one of {', '.join(sorted(allowed))})",
                "code-invalid",
            ))
    for index, contained in enumerate(resource.get("contained") or []):
        if isinstance(contained, Mapping):
            issues += [
                Issue(f"{resource_type}.contained[{index}].{i.location.split('.', 1)[-1]}",
                      i.message, i.code)
                for i in binding_issues(contained)
                if contained.get("resourceType") in REQUIRED_BINDINGS
            ]
    return issues


def _issue_from_pydantic(resource_type: str, error: Mapping[str, Any]) -> Issue:
    path = resource_type
    for part in error.get("loc", ()):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("__root__",):
            path += "." + ("for" if part == "for_fhir" else str(part))
    kind = str(error.get("type", ""))
    code = {"missing": "required", "extra_forbidden": "structure"}.get(kind, "value")
    message = str(error.get("msg", "invalid"))
    if kind == "extra_forbidden":
        message = "unknown element"
    return Issue(path, f"{path}: {message}", code)


def _unique(issues: list[Issue]) -> list[Issue]:
    seen: set[tuple[str, str]] = set()
    out = []
    for issue in issues:
        key = (issue.location, issue.code)  # fhir.resources repeats our own findings
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


def operation_outcome(issues: list[Issue] | None = None, *, severity: str = "error",
                      text: str = "", code: str = "processing") -> dict[str, Any]:
    """An OperationOutcome with one issue per problem, each naming its element."""
    if not issues:
        return {"resourceType": "OperationOutcome", "issue": [
            {"severity": severity, "code": code, "diagnostics": text or code}]}
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": severity, "code": i.code, "diagnostics": i.message,
             "expression": [i.location]}
            for i in issues
        ],
    }
