#!/usr/bin/env python3
"""A gRPC backend for jalur's tests: /jalur.test.Echo/Say (unary) and /Count (server streaming).

Say answers `<name>:<request bytes>` (raw bytes in, raw bytes out, no protobuf), so a test can
tell which backend a client reached; Count takes a decimal N and streams `<name>:0` ... `<name>:N-1`. It binds 127.0.0.1:0 unless told otherwise and
prints `PORT <n>` as its first stdout line. It exits on SIGTERM/SIGINT or when stdin closes
(so a test harness that holds the pipe cannot leak it); pass --ignore-stdin to run it by hand
with stdin at /dev/null.

    .venv/bin/python tests/peers/grpc_backend.py --name b1
"""

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "jalur.test.Echo"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="prefix of every reply")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ignore-stdin", action="store_true", help="do not exit at stdin EOF")
    return parser.parse_args()


def main():
    args = parse_args()
    prefix = args.name.encode() + b":"

    def say(request, _context):
        return prefix + request

    def count(request, _context):
        for i in range(int(request or b"0")):
            yield prefix + str(i).encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        print(f"cannot bind {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 1
    server.start()
    print(f"PORT {port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if not args.ignore_stdin:

        def watch_stdin():
            while sys.stdin.buffer.read(4096):
                pass
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()

    # A timed wait keeps the main thread able to run the signal handlers.
    while not stop.wait(0.2):
        pass
    server.stop(grace=0.2).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
