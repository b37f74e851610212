"""The service: MLLP listener, FHIR REST, CDS Hooks, worker and store."""
