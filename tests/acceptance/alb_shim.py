"""A local stand-in for an ALB with a Lambda target: HTTP in → the ALB's Lambda event → handler → HTTP out.

Run as ``python alb_shim.py --port P --handler module.function`` with the function's code on PYTHONPATH (the
test puts only the unpacked Lambda zip there, so the handler runs with what the zip holds). Event and
response follow the documented ALB ↔ Lambda contract (single-value headers, lower-cased names, a base64
body for anything that is not UTF-8 text). ``GET /__shim/modules`` lists the top-level modules the
process has imported (the test checks the front needs nothing outside the standard library and boto3).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml")


def to_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The event an ALB sends a Lambda target (multi-value headers off)."""
    parts = urlsplit(target)
    content_type = headers.get("content-type", "")
    text = content_type.startswith(TEXT_TYPES) or not body
    if text:
        try:
            payload, encoded = body.decode("utf-8"), False
        except UnicodeDecodeError:
            payload, encoded = base64.b64encode(body).decode(), True
    else:
        payload, encoded = base64.b64encode(body).decode(), True
    return {
        "requestContext": {
            "elb": {
                "targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                "targetgroup/shim/0123456789abcdef"
            }
        },
        "httpMethod": method,
        "path": parts.path,
        "queryStringParameters": dict(parse_qsl(parts.query)),
        "headers": headers,
        "body": payload,
        "isBase64Encoded": encoded,
    }


def make_handler(function: Callable[[dict[str, Any], Any], dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    """An HTTP request handler class that calls ``function`` as the ALB would."""

    class Shim(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.command == "GET" and self.path == "/__shim/modules":
                names = sorted({m.split(".")[0] for m in sys.modules})
                return self._send(200, {"Content-Type": "application/json"}, json.dumps(names).encode())
            headers = {k.lower(): v for k, v in self.headers.items()}
            result = function(to_event(self.command, self.path, headers, body), None)
            raw = result.get("body") or ""
            out = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode("utf-8")
            self._send(int(result["statusCode"]), dict(result.get("headers") or {}), out)

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = _serve
        do_POST = _serve
        do_PUT = _serve

    return Shim


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--handler", required=True, help="module.function")
    args = parser.parse_args()
    module_name, _, function_name = args.handler.rpartition(".")
    function = getattr(importlib.import_module(module_name), function_name)
    print(f"handler from {sys.modules[module_name].__file__}", flush=True)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(function))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
