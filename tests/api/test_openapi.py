"""The OpenAPI document and the docs pages, in process (no servers): valid, every ``$ref`` resolves,
security schemes, one error shape, descriptions and examples everywhere, and /docs and /redoc served
from the package with no external URL in any page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from api.main import create_app
from api.openapi import example_of


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


@pytest.fixture(scope="module")
def doc(client: TestClient) -> dict[str, Any]:
    got = client.get("/openapi.json")
    assert got.status_code == 200
    document: dict[str, Any] = got.json()
    return document


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]


def test_the_document_is_valid_and_every_ref_resolves(doc: dict[str, Any]) -> None:
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    refs = set(_refs(doc))
    assert "#/components/schemas/JobOptions" in refs and "#/components/schemas/BatchRequest" in refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[-1] in doc["components"]["schemas"], f"dangling {ref}"


def test_security_schemes_and_each_authenticated_operation_uses_them(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
    authenticated = [(m, p, op) for m, p, op in _operations(doc) if "401" in op["responses"]]
    assert len(authenticated) > 20
    for method, path, op in authenticated:
        assert op.get("security") == [{"bearer": []}, {"apiKey": []}], (method, path)
    assert "security" not in doc["paths"]["/health"]["get"]


def test_errors_have_the_servers_shape_and_an_example_of_their_own_status(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    codes_by_status: dict[str, set[str]] = {}
    for method, path, op in _operations(doc):
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
            error = content["example"]["error"]
            assert set(error) == {"code", "message"} and error["message"]
            codes_by_status.setdefault(status, set()).add(error["code"])
    assert codes_by_status["422"] == {"invalid_request"}
    assert codes_by_status["401"] == {"unauthorized"}
    assert len({code for codes in codes_by_status.values() for code in codes}) >= 8  # not one body for all


def test_every_operation_has_a_description_and_its_success_an_example(doc: dict[str, Any]) -> None:
    for method, path, op in _operations(doc):
        assert len(op.get("description", "")) > 20, (method, path)
        for status, response in op["responses"].items():
            if status.startswith("2"):
                for media, content in response.get("content", {}).items():
                    if media.startswith(("audio/", "application/zip")):
                        continue  # binary
                    assert "example" in content or "examples" in content, (method, path, status, media)


def test_the_websocket_endpoints_are_described(doc: dict[str, Any]) -> None:
    text = doc["info"]["description"]
    for path in ("/v1/stream", "/api/ws", "/vosk"):
        assert f"**`{path}`**" in text


def test_examples_are_made_from_schemas() -> None:
    components = {
        "Thing": {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"enum": ["a", "b"]}}}
    }
    schema = {"type": "array", "items": {"$ref": "#/components/schemas/Thing"}}
    assert example_of(schema, components) == [{"n": 0, "s": "a"}]
    assert example_of({"anyOf": [{"type": "null"}, {"type": "string", "format": "date-time"}]}, {}).endswith(
        "Z"
    )


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_are_served_from_the_package_with_no_external_url(client: TestClient, page: str) -> None:
    got = client.get(page)
    assert got.status_code == 200
    assert not re.search(r"https?://", got.text), "a docs page loads something from outside the server"
    assets = re.findall(r'(?:src|href)="([^"]+)"', got.text)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        assert asset.startswith("/docs-static/"), asset
        answer = client.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 1000, asset
    assert client.get("/openapi.json").status_code == 200


def test_metrics_refuse_a_client_that_is_not_on_this_machine(client: TestClient) -> None:
    """Without TONE_METRICS_TOKEN only loopback clients may scrape (TestClient's host is "testclient")."""
    refused = client.get("/metrics")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert client.get("/livez").json() == {"status": "ok"}
