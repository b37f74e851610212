"""The stored form of a FHIR order: a collection Bundle of the ServiceRequest (first) and the
Patient / Conditions fetched for it. Pure functions: pack, unpack, and map to an `Order`."""

from __future__ import annotations

import json
from typing import Any

from radproto.fhir_mappings.fhir import service_request_to_order
from radproto.model.order import Order

#: The content type of a stored FHIR order (and of the FHIR API).
FHIR_JSON = "application/fhir+json"


def pack_message(sr: dict[str, Any], related: dict[str, dict[str, Any]]) -> str:
    """The stored form of an order: a collection Bundle, the request first."""
    entries = [{"fullUrl": f"ServiceRequest/{sr['id']}", "resource": sr}]
    entries += [{"fullUrl": ref, "resource": res} for ref, res in related.items()]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries},
                      separators=(",", ":"), sort_keys=True)


def unpack_message(raw: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    bundle = json.loads(raw)
    if bundle.get("resourceType") == "ServiceRequest":
        return bundle, {}
    entries = bundle.get("entry") or []
    return entries[0]["resource"], {e["fullUrl"]: e["resource"] for e in entries[1:]}


def stored_bundle_to_order(raw: str, *, raw_message_id: str = "") -> Order:
    """The order of a stored FHIR message (what `pack_message` wrote)."""
    sr, related = unpack_message(raw)
    subject = (sr.get("subject") or {}).get("reference", "")
    order = service_request_to_order(sr, patient=related.get(subject), conditions=related,
                                     raw_message_id=raw_message_id)
    # The store keys an order by its placer number; a FHIR order's is its ServiceRequest id.
    return order.model_copy(update={
        "placer_order_number": sr["id"],
        "extra": {**order.extra, "placer_identifier": order.placer_order_number}})


def order_refs(order: Order) -> tuple[str, str]:
    """(ServiceRequest reference, Patient reference or "") of a stored FHIR order."""
    subject = str(order.extra.get("subject", ""))
    sr_id = order.extra.get("fhir_id") or order.placer_order_number
    return f"ServiceRequest/{sr_id}", "" if subject.startswith("#") else subject
