"""The shipped OpenAPI document: structurally valid, matches the served routes, and real answers fit it.

Validation is jsonschema's Draft 2020-12 validator (OpenAPI 3.1 schemas are 2020-12 schemas). The whole
document is registered as one resource (``referencing``), so ``#/components/schemas/...`` references
resolve inside it. Real answers and what the forwarder sends are checked against a *strict* copy in
which every documented object forbids undocumented properties: a field the API returns or the
forwarder sends must be in the document. Unknown schema keywords fail the test (jsonschema would
silently ignore a typo such as "requried").
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route

from gateway.central.api import openapi_bytes
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from tests.support.central import OFFICE_A, Central, device_doc, make_central, make_forwarder, punch
from tests.support.config import forward_config
from tests.support.punches import punch_batch, store_punches

pytestmark = pytest.mark.timeout(60)

SPEC: dict[str, Any] = json.loads(openapi_bytes())
SPEC_URI = "urn:fpgw:openapi"
#: JSON Schema 2020-12 keywords (validation + annotations + core) and OpenAPI 3.1's schema extensions.
_KEYWORDS = set(Draft202012Validator.VALIDATORS) | {
    "$schema", "$id", "$defs", "$anchor", "$dynamicAnchor", "$comment", "$vocabulary", "title", "description",
    "default", "examples", "deprecated", "readOnly", "writeOnly", "contentMediaType", "contentEncoding",
    "contentSchema", "discriminator", "xml", "externalDocs", "example"}
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems", "not", "if", "then",
               "else", "contains", "propertyNames", "contentSchema")


def _subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """A schema and every schema nested in it."""
    if not isinstance(schema, dict):
        return
    yield schema
    for key in _SCHEMA_MAPS:
        for sub in (schema.get(key) or {}).values():
            yield from _subschemas(sub)
    for key in _SCHEMA_LISTS:
        for sub in schema.get(key) or ():
            yield from _subschemas(sub)
    for key in _SCHEMA_ONE:
        yield from _subschemas(schema.get(key))


def _document_schemas(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every schema object of the document: components and the inline ones of paths, with what they nest."""
    for schema in spec["components"]["schemas"].values():
        yield from _subschemas(schema)
    for item in spec["paths"].values():
        for op in item.values():
            for p in op.get("parameters", []):
                yield from _subschemas(p["schema"])
            for body in (op.get("requestBody", {}), *op["responses"].values()):
                for media in body.get("content", {}).values():
                    yield from _subschemas(media.get("schema"))


def _strict(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy where every object schema with documented properties forbids undocumented ones."""
    strict = copy.deepcopy(spec)
    for schema in _document_schemas(strict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    return strict


def _registry(spec: dict[str, Any]) -> Registry:
    return Registry().with_resource(SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012))


REGISTRY, STRICT = _registry(SPEC), _registry(_strict(SPEC))
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    # RFC 3339: date, "T", time and an offset (jsonschema checks date-time only with an extra package).
    if not isinstance(value, str):
        return True
    if "T" not in value.upper():
        raise ValueError("no time part")
    if datetime.fromisoformat(value).tzinfo is None:
        raise ValueError("no UTC offset")
    return True


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def errors(value: Any, pointer: str, *, strict: bool = True) -> list[str]:
    """Validation errors of ``value`` against the schema at ``pointer`` in the document (JSON Pointer)."""
    validator = Draft202012Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=STRICT if strict else REGISTRY,
                                     format_checker=FORMATS)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(value)]


def component(name: str) -> str:
    """Pointer to a component schema."""
    return _pointer("components", "schemas", name)


def response(path: str, method: str = "get", code: str = "200") -> str:
    """Pointer to the JSON schema of one documented response."""
    return _pointer("paths", path, method, "responses", code, "content", "application/json", "schema")


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_document_is_structurally_valid_openapi_3() -> None:
    assert re.fullmatch(r"3\.1\.\d+", SPEC["openapi"])
    assert SPEC["info"]["title"] and SPEC["info"]["version"]
    assert SPEC["paths"]
    schemes = SPEC["components"]["securitySchemes"]
    op_ids = []
    for path, item in SPEC["paths"].items():
        assert path.startswith("/api/v1/")
        for method, op in item.items():
            assert method in {"get", "post", "put", "delete", "patch"}, (path, method)
            op_ids.append(op["operationId"])
            assert op["summary"] and op["responses"]
            assert any(code.startswith("2") for code in op["responses"]), (path, method)
            for resp in op["responses"].values():
                assert resp["description"]
            for req in op.get("security", []):
                assert set(req) <= set(schemes)
            for p in op.get("parameters", []):
                assert p["in"] in {"query", "path", "header"} and p["name"] and "schema" in p
    assert len(op_ids) == len(set(op_ids))
    resolver = REGISTRY.resolver()
    for ref in set(_refs(SPEC)):
        assert ref.startswith("#/components/schemas/"), ref
        assert resolver.lookup(SPEC_URI + ref).contents, ref
    for name, schema in SPEC["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)  # a valid 2020-12 schema (types, enums, patterns, ...)
        assert set(schema.get("required", [])) <= set(schema.get("properties", {})), name
    for schema in _document_schemas(SPEC):
        assert set(schema) <= _KEYWORDS, f"unknown schema keyword(s) {set(schema) - _KEYWORDS} in {schema}"
        if "pattern" in schema:
            re.compile(schema["pattern"])


def test_every_served_route_is_documented_and_every_documented_route_is_served(tmp_path: Path,
                                                                               sqlite_url: str) -> None:
    c = make_central(sqlite_url, tmp_path)
    try:
        served = {(r.path, m.lower()) for r in c.api.routes() if isinstance(r, Route) for m in (r.methods or ())
                  if m != "HEAD"}
    finally:
        c.client.close()
        c.engine.dispose()
    documented = {(p, m) for p, item in SPEC["paths"].items() for m in item}
    assert served == documented


def test_real_answers_validate_against_the_document(tmp_path: Path, sqlite_url: str) -> None:
    c: Central = make_central(sqlite_url, tmp_path)
    try:
        auth_gw = {"Authorization": f"Bearer {c.gw_a}"}
        batch = {"batch_id": "b1", "gateway": {"office_code": OFFICE_A, "hostname": "gw"},
                 "punches": [punch("1"), punch("2"), punch("3", office_code="9999"),
                             punch("4", local_time=None, utc_time=None, device_time="2000-02-31 08:00:00",
                                   flags=["impossible_date"])]}
        assert errors(batch, _pointer("paths", "/api/v1/ingest/punches", "post", "requestBody", "content",
                                      "application/json", "schema")) == []
        r = c.client.post("/api/v1/ingest/punches", json=batch, headers=auth_gw)
        assert errors(r.json(), response("/api/v1/ingest/punches", "post")) == []
        health = {"gateway": {"office_code": OFFICE_A, "office_name": "Dinas Kesehatan", "outbox_depth": 0},
                  "devices": [device_doc("lobby")]}
        assert errors(health, component("HealthBatch")) == []
        r = c.client.post("/api/v1/ingest/health", json=health, headers=auth_gw)
        assert errors(r.json(), response("/api/v1/ingest/health", "post")) == []
        for path, params in (("/api/v1/punches", {"limit": 2}), ("/api/v1/recap/daily", {"date": "2026-11-02"}),
                             ("/api/v1/completeness", {"from": "2026-11-01", "to": "2026-11-03"}),
                             ("/api/v1/devices", {}), ("/api/v1/gateways", {})):
            doc = c.get(path, **params).json()
            assert errors(doc, response(path)) == [], path
            assert doc.get("items", doc.get("devices"))  # not an empty, trivially valid answer
        [gw] = c.get("/api/v1/gateways").json()["items"]
        assert gw["silent"] is False and gw["office_name"] == "Dinas Kesehatan"
        for bad in (c.client.get("/api/v1/punches"), c.get("/api/v1/punches", cursor="zzz"),
                    c.client.post("/api/v1/ingest/punches", content=b"[", headers={**auth_gw,
                                                                                  "Content-Type": "application/json"})):
            code = str(bad.status_code)
            assert errors(bad.json(), response(bad.url.path, bad.request.method.lower(), code)) == []
        served = c.client.get("/api/v1/openapi.json")
        assert served.status_code == 200 and served.json() == SPEC
        # The validation does reject what does not fit: a wrong type, a missing field, a bad date-time, and
        # (strict) a field the document does not describe.
        page = {"items": [{"office_code": 5}], "next_cursor": "x", "count": 1, "has_more": False}
        assert errors(page, response("/api/v1/punches"), strict=False)
        assert errors({"items": [{**gw, "silent": "no"}]}, response("/api/v1/gateways"))
        assert errors({"items": [{k: v for k, v in gw.items() if k != "silent"}]}, response("/api/v1/gateways"))
        assert errors({"items": [{**gw, "last_seen_at": "2026-11-02 07:00"}]}, response("/api/v1/gateways"))
        leaky = {"items": [{**gw, "silent_notified_at": gw["last_seen_at"]}]}
        assert errors(leaky, response("/api/v1/gateways")) and not errors(leaky, response("/api/v1/gateways"),
                                                                          strict=False)
    finally:
        c.client.close()
        c.engine.dispose()


def test_what_the_forwarder_sends_fits_the_document(tmp_path: Path, sqlite_url: str) -> None:
    config = forward_config(tmp_path, sqlite_url)
    engine = create_db_engine(sqlite_url)
    upgrade(engine)
    store = Store(engine, config.site.office_code)
    store.sync_devices(config.devices)
    store_punches(store, punch_batch(3))
    sent: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        doc = json.loads(request.content)
        sent.append((request.url.path, doc))
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"office_code": "x", "devices": 1})
        return httpx.Response(200, json={"results": [{"index": i, "status": "accepted"}
                                                     for i in range(len(doc["punches"]))]})

    fwd = make_forwarder(config, engine, transport=httpx.MockTransport(handler), rng=random.Random(1))
    try:
        fwd.run_once()
    finally:
        fwd.stop(1)
        engine.dispose()
    schemas = {"/api/v1/ingest/punches": "IngestBatch", "/api/v1/ingest/health": "HealthBatch"}
    assert {p for p, _ in sent} == set(schemas)
    for path, doc in sent:
        assert errors(doc, component(schemas[path])) == [], path
        assert doc["gateway"]["office_code"] == config.site.office_code
