"""A recording fake Pulse platform for the systemd container test (stdlib only).

It runs inside the container as a transient unit, on 127.0.0.1, and appends every request it
gets to a JSON-lines file: path and the decoded form, token included, so the check can see what
the service sent and with which token. Each send-message is answered as the platform does.
"""

from __future__ import annotations

import argparse
import itertools
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    ids = itertools.count(1)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
            with open(args.log, "a", encoding="utf-8") as log:
                log.write(json.dumps({"path": self.path, "form": form}) + "\n")
            reply = json.dumps({"type": "success", "id": str(next(ids))}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
