"""A minimal OTLP/HTTP trace receiver for tests: ``python -m harness.otlp_receiver --port P --out spans.jsonl``.

It takes what any OTLP exporter posts to ``/v1/traces`` (protobuf, optionally gzip), decodes it with
``opentelemetry-proto``, and appends one JSON line per span: trace and span ids, parent, name, kind, the resource's
``service.name``, start and end (ns) and attributes. Loopback only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(v: dict):
    """An OTLP AnyValue (as MessageToDict writes it) as plain JSON."""
    if not v:
        return None
    kind, value = next(iter(v.items()))
    if kind == "arrayValue":
        return [_value(x) for x in value.get("values", [])]
    return int(value) if kind == "intValue" else value


def spans_of(body: bytes) -> list[dict]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    rows = []
    for resource_spans in request.resource_spans:
        resource = {a.key: MessageToDict(a.value) for a in resource_spans.resource.attributes}
        service = _value(resource.get("service.name", {}))
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                rows.append({
                    "service": service, "name": span.name, "kind": span.kind,
                    "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex() or None,
                    "start_ns": span.start_time_unix_nano, "end_ns": span.end_time_unix_nano,
                    "status": span.status.code,
                    "attributes": {a.key: _value(MessageToDict(a.value)) for a in span.attributes}})
    return rows


def serve(port: int, out: Path) -> None:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            rows = spans_of(body)
            with lock, out.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def do_GET(self) -> None:  # noqa: N802 — a health probe for whoever started it
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    serve(args.port, args.out)


if __name__ == "__main__":
    main()
