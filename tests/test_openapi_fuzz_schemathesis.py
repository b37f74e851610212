"""Schemathesis against the service's own OpenAPI document: no generated request, valid or
not, may make the real app (security middleware included) answer 500."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from radproto.adapter.security import hash_api_key

ALL_ROLES_KEY = "fuzz-key-with-every-role"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    from radproto.adapter.fhir_client import FhirSettings
    from radproto.adapter.http_app import ServiceContext, create_app
    from radproto.adapter.settings import load_settings
    from radproto.adapter.store import open_store
    from radproto.model.catalog import default_catalog
    from tests.conftest import KeywordClassifier

    tmp = tmp_path_factory.mktemp("fuzz")
    keys = tmp / "api-keys.txt"
    keys.write_text("".join(f"{role} {hash_api_key(ALL_ROLES_KEY)}\n"
                            for role in ("integration", "radiologist", "admin")))
    url = f"sqlite:///{tmp / 'radproto.db'}"
    store = open_store(url)
    settings = load_settings(None, {"data_dir": tmp, "store": url})
    settings = settings.model_copy(update={"security": settings.security.model_copy(
        update={"api_keys_file": keys})})
    context = ServiceContext(settings=settings, store=store, catalog=default_catalog(),
                             classifier=KeywordClassifier(), model_status="ready")
    # No worker runs here: POST answers 202 at once instead of waiting for the Task.
    context.fhir_settings = FhirSettings(sync_wait_s=0)
    app = create_app(context)
    yield schemathesis.openapi.from_asgi("/openapi.json", app,
                                         headers={"X-API-Key": ALL_ROLES_KEY})
    store.close()


def _operations(schema):
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())  # an invalid schema fails here, naming the operation
    return operations


# The operations are driven with Hypothesis directly: schemathesis' pytest fixture loader
# (`schemathesis.pytest.from_fixture`) touches `Node._nodeid`, which pytest 9 removed.
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_request_gets_a_500(api_schema, mode):
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    operations = _operations(api_schema)
    assert len(operations) >= 10, [op.label for op in operations]
    failures: list[str] = []
    generation = GenerationMode(mode)
    for operation in operations:
        try:
            strategy = operation.as_strategy(generation_mode=generation)
        except Exception as exc:  # an operation with no negative form (nothing to break)
            if mode == "negative":
                continue
            raise AssertionError(f"{operation.label}: {exc}") from exc

        @given(case=strategy)
        @settings(max_examples=20, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(headers={"X-API-Key": ALL_ROLES_KEY})
            if response.status_code == 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.text[:200]}")
            assert response.status_code not in (401, 403), (
                f"{case.method} {case.path}: the fuzzing key holds every role")

        try:
            run()
        except Unsatisfiable:
            assert mode == "negative", operation.label  # nothing in it can be made invalid
    assert not failures, "\n".join(sorted(set(failures)))


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_undeclared_json_bodies_get_no_500(api_schema):
    """Routes that read their body themselves (FHIR resources) declare no request body in
    the OpenAPI document, so schemathesis sends none: feed them arbitrary JSON as well."""
    import re

    from hypothesis import given
    from hypothesis import strategies as st
    from starlette.testclient import TestClient

    scalars = (st.none() | st.booleans() | st.integers()
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
    json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                               | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                               max_leaves=20)
    resources = st.fixed_dictionaries(
        {"resourceType": st.sampled_from(["ServiceRequest", "Task", "Bundle", "Parameters",
                                          "Patient", ""])},
        optional={"id": scalars, "status": scalars, "intent": scalars, "code": json_values,
                  "subject": json_values, "entry": json_values, "focus": json_values,
                  "output": json_values, "hook": scalars, "context": json_values})
    bodies = resources | json_values
    targets = [(op.method.upper(), re.sub(r"\{[^}]+\}", "x1", op.path))
               for op in _operations(api_schema) if op.method.upper() in ("POST", "PUT")]
    assert targets
    failures: list[str] = []
    with TestClient(api_schema.app, raise_server_exceptions=False) as client:
        def fuzz(method: str, path: str):
            @given(body=bodies)
            @settings(max_examples=20, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(body):
                response = client.request(method, path, json=body, headers={
                    "X-API-Key": ALL_ROLES_KEY, "Content-Type": "application/fhir+json"})
                if response.status_code == 500:
                    failures.append(f"{method} {path} {body!r:.200}")

            return run

        for method, path in targets:
            fuzz(method, path)()
    assert not failures, "\n".join(failures[:20])
