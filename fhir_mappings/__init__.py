"""Pure mappings between HL7 v2 / FHIR and radproto's order and suggestion models."""
