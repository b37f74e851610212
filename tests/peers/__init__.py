"""Real peers for the FHIR tests (Node scripts here) and the Python side that runs them."""
