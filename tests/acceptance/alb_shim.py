"""A local stand-in for an ALB with a Lambda target: HTTP in → the ALB's Lambda event → handler → HTTP out.

Run as ``python alb_shim.py --port P --handler module.function`` with the function's code on PYTHONPATH (the
test puts only the unpacked Lambda zip there, so the handler runs with what the zip holds). Event and
response follow the documented ALB ↔ Lambda contract (single-value headers, lower-cased names, a base64
body for anything that is not UTF-8 text). ``GET /__shim/modules`` lists the top-level modules the
process has imported (the test checks the front needs nothing outside the standard library and boto3).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml")


def to_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The event an ALB sends a Lambda target (multi-value headers off; tests/lambdakit.py builds it)."""
    from lambdakit import alb_event

    content_type = headers.get("content-type", "")
    binary = bool(body) and not content_type.startswith(TEXT_TYPES)
    if not binary:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            binary = True
    event = alb_event(urlsplit(target).path, body, method=method, headers=headers, binary=binary)
    event["queryStringParameters"] = dict(parse_qsl(urlsplit(target).query))
    return event


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
            from lambdakit import alb_body, alb_headers

            headers = {k.lower(): v for k, v in self.headers.items()}
            result = function(to_event(self.command, self.path, headers, body), None)
            self._send(int(result["statusCode"]), alb_headers(result), alb_body(result))

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
    # tests/ for lambdakit, after PYTHONPATH: the handler's own code comes from the unpacked zip alone
    sys.path.append(str(Path(__file__).resolve().parents[1]))
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
