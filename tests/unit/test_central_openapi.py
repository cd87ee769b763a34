"""The shipped OpenAPI document: structurally valid, matches the served routes, and real answers fit it.

jsonschema is not installed, so a small validator below covers exactly the JSON Schema keywords the
document uses (type, properties, required, items, enum, additionalProperties, $ref, pattern); a
keyword it does not know fails the test, so the document cannot quietly outgrow the check.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route
from test_central_api import OFFICE_A, Central, device_doc, make_central, punch
from test_forward import make_config, punches, store_punches

from gateway.central import openapi_bytes
from gateway.forwarder import Forwarder
from gateway.store.db import create_db_engine, upgrade
from gateway.store.repo import Store

pytestmark = pytest.mark.timeout(60)

SPEC: dict[str, Any] = json.loads(openapi_bytes())
_KNOWN = {"type", "properties", "required", "items", "enum", "additionalProperties", "$ref", "pattern",
          "description", "format", "default", "minimum", "maximum", "maxLength"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _resolve(ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = SPEC
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _type_ok(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Errors of ``value`` against ``schema`` (the subset of JSON Schema 2020-12 the document uses)."""
    unknown = set(schema) - _KNOWN
    assert not unknown, f"validator does not know {unknown} (at {where})"
    if "$ref" in schema:
        return validate(value, _resolve(schema["$ref"]), where)
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            return [f"{where}: {value!r:.60} is not {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], f"{where}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(v, schema["additionalProperties"], f"{where}.{k}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected {k!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += validate(v, schema["items"], f"{where}[{i}]")
    return errors


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
    for ref in set(_refs(SPEC)):
        assert _resolve(ref), ref
    for name, schema in SPEC["components"]["schemas"].items():
        validate(None, {"type": ["null"]})  # the validator itself runs
        assert set(schema.get("required", [])) <= set(schema.get("properties", {})), name
        validate({}, schema)  # every keyword used is one the validator knows (asserts inside)


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


def _schema(path: str, method: str = "get", code: str = "200") -> dict[str, Any]:
    return SPEC["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]


def test_real_answers_validate_against_the_document(tmp_path: Path, sqlite_url: str) -> None:
    c: Central = make_central(sqlite_url, tmp_path)
    try:
        auth_gw = {"Authorization": f"Bearer {c.gw_a}"}
        batch = {"batch_id": "b1", "gateway": {"office_code": OFFICE_A, "hostname": "gw"},
                 "punches": [punch("1"), punch("2"), punch("3", office_code="9999"),
                             punch("4", local_time=None, utc_time=None, device_time="2000-02-31 08:00:00",
                                   flags=["impossible_date"])]}
        req_schema = SPEC["paths"]["/api/v1/ingest/punches"]["post"]["requestBody"]["content"]["application/json"]
        assert validate(batch, req_schema["schema"]) == []
        r = c.client.post("/api/v1/ingest/punches", json=batch, headers=auth_gw)
        assert validate(r.json(), _schema("/api/v1/ingest/punches", "post")) == []
        health = {"devices": [device_doc("lobby")]}
        assert validate(health, {"$ref": "#/components/schemas/HealthBatch"}) == []
        r = c.client.post("/api/v1/ingest/health", json=health, headers=auth_gw)
        assert validate(r.json(), _schema("/api/v1/ingest/health", "post")) == []
        for path, params in (("/api/v1/punches", {"limit": 2}), ("/api/v1/recap/daily", {"date": "2026-11-02"}),
                             ("/api/v1/completeness", {"from": "2026-11-01", "to": "2026-11-03"}),
                             ("/api/v1/devices", {}), ("/api/v1/gateways", {})):
            doc = c.get(path, **params).json()
            assert validate(doc, _schema(path)) == [], path
            assert doc.get("items", doc.get("devices"))  # not an empty, trivially valid answer
        for bad in (c.client.get("/api/v1/punches"), c.get("/api/v1/punches", cursor="zzz"),
                    c.client.post("/api/v1/ingest/punches", content=b"[", headers={**auth_gw,
                                                                                  "Content-Type": "application/json"})):
            code = str(bad.status_code)
            assert validate(bad.json(), _schema(bad.url.path, bad.request.method.lower(), code)) == []
        served = c.client.get("/api/v1/openapi.json")
        assert served.status_code == 200 and served.json() == SPEC
        # The validator does reject what does not fit.
        assert validate({"items": [{"office_code": 5}], "next_cursor": "x", "count": 1, "has_more": False},
                        _schema("/api/v1/punches"))
    finally:
        c.client.close()
        c.engine.dispose()


def test_what_the_forwarder_sends_fits_the_document(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    engine = create_db_engine(sqlite_url)
    upgrade(engine)
    store = Store(engine, config.site.office_code)
    store.sync_devices(config.devices)
    store_punches(store, punches(3))
    sent: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        doc = json.loads(request.content)
        sent.append((request.url.path, doc))
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"office_code": "x", "devices": 1})
        return httpx.Response(200, json={"results": [{"index": i, "status": "accepted"}
                                                     for i in range(len(doc["punches"]))]})

    fwd = Forwarder(config, engine, transport=httpx.MockTransport(handler), rng=random.Random(1))
    try:
        fwd.run_once()
    finally:
        fwd.stop(1)
        engine.dispose()
    schemas = {"/api/v1/ingest/punches": "IngestBatch", "/api/v1/ingest/health": "HealthBatch"}
    assert {p for p, _ in sent} == set(schemas)
    for path, doc in sent:
        assert validate(doc, {"$ref": f"#/components/schemas/{schemas[path]}"}) == [], path
