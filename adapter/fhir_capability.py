"""The CapabilityStatement of the FHIR API (GET /fhir/metadata)."""

from __future__ import annotations

from typing import Any

CAPABILITY_STATEMENT: dict[str, Any] = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "date": "2026-11-28",
    "publisher": "radproto",
    "kind": "instance",
    "software": {"name": "radproto"},
    "implementation": {"description": "radproto imaging protocol suggestions"},
    "fhirVersion": "4.0.1",
    "format": ["application/fhir+json", "json"],
    "rest": [{
        "mode": "server",
        "resource": [
            {"type": "ServiceRequest",
             "interaction": [{"code": "create"}, {"code": "update"}]},
            {"type": "Task",
             "interaction": [{"code": "read"}, {"code": "update"}, {"code": "search-type"}],
             "searchParam": [{"name": "focus", "type": "reference"}]},
        ],
        "interaction": [{"code": "transaction"}, {"code": "batch"}],
        "operation": [{"name": "subscription-notification",
                       "definition": "http://hl7.org/fhir/uv/subscriptions-backport/"
                                     "StructureDefinition/backport-subscription-notification-r4"}],
    }],
}
