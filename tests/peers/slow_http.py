#!/usr/bin/env python3
"""An HTTP/1.1 backend for jalur's tests that a test can SIGKILL mid-request.

GET /slow?ms=N&tag=T answers 200 `<name>` after N milliseconds; GET /inflight?tag=T answers how
many /slow requests tagged T are being served right now; anything else answers 200 `<name>` at
once. Keep-alive
(HTTP/1.1), one thread per connection. It binds 127.0.0.1:0 and prints `PORT <n>` as its first
stdout line; it exits when stdin closes (so a harness holding the pipe cannot leak it) or when
killed, which is the point.

    .venv/bin/python tests/peers/slow_http.py --name b1
"""

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the body of every answer")
    args = parser.parse_args()
    body = args.name.encode()
    lock = threading.Lock()
    inflight = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, text):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.send_header("x-backend", args.name)
            self.end_headers()
            self.wfile.write(text)

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            tag = query.get("tag", [""])[0]
            if url.path == "/inflight":
                with lock:
                    self.answer(str(inflight.get(tag, 0)).encode())
                return
            if url.path == "/slow":
                ms = int(query.get("ms", ["1000"])[0])
                with lock:
                    inflight[tag] = inflight.get(tag, 0) + 1
                try:
                    time.sleep(ms / 1000.0)
                finally:
                    with lock:
                        inflight[tag] -= 1
            self.answer(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
