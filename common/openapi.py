"""An OpenAPI 3.1 document generated from the protocol models, so schema and code cannot drift."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common.protocol import ID_PATTERN, ErrorResponse

REF = "#/components/schemas/{model}"
ERRORS = {"400": "bad input", "401": "missing or wrong API key", "404": "not found", "413": "body too large",
          "429": "queue full (Retry-After)", "500": "internal error", "503": "not ready (Retry-After)",
          "504": "time limit"}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    stream: bool = False  # also answers text/event-stream when the body asks for "stream": true
    content_type: str = "application/json"


def build_openapi(title: str, version: str, routes: list[Route], api_key: bool) -> dict:
    models = {m for r in routes for m in (r.request, r.response) if m} | {ErrorResponse}
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                 ref_template=REF)
    paths: dict = {}
    for r in routes:
        op: dict = {"summary": r.summary, "operationId": f"{r.method}_{r.path}".replace("/", "_").strip("_"),
                    "responses": {}}
        if "{" in r.path:
            name = r.path.split("{")[1].split("}")[0]
            op["parameters"] = [{"name": name, "in": "path", "required": True,
                                 "schema": {"type": "string", "pattern": ID_PATTERN}}]
        if r.request:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": REF.format(model=r.request.__name__)}}}}
        ok: dict = {"description": "OK", "content": {}}
        ok["content"][r.content_type] = (
            {"schema": {"$ref": REF.format(model=r.response.__name__)}} if r.response else {"schema": {}})
        if r.stream:
            ok["content"]["text/event-stream"] = {"schema": {}}  # events carry deltas, steps, errors: see README
        op["responses"]["200"] = ok
        error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
        for status, description in ERRORS.items():
            op["responses"][status] = {"description": description, **error}
        if api_key and r.path != "/health":
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method] = op
    doc = {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
           "components": {"schemas": defs.get("$defs", {})}}
    if api_key:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
