#!/usr/bin/env python3
"""Calls the test gRPC service through a proxy (no xDS): a plain channel to --target with the
:authority set to --authority, as an app behind a sidecar would. Runs --count unary Say calls and
one server-streaming Count call of --stream messages; prints one JSON line
{"unary_ok": n, "unary_failed": m, "stream": [..messages..], "errors": [...]}.

    .venv/bin/python tests/peers/grpc_call.py --target 127.0.0.1:15001 --authority echo.grpc.svc.cluster.local
"""

import argparse
import json
import sys

import grpc


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--authority", required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--stream", type=int, default=50)
    p.add_argument("--timeout-secs", type=float, default=10.0)
    a = p.parse_args()
    channel = grpc.insecure_channel(a.target, options=[("grpc.default_authority", a.authority)])
    say = channel.unary_unary("/jalur.test.Echo/Say")
    count = channel.unary_stream("/jalur.test.Echo/Count")
    ok, failed, errors, stream = 0, 0, [], []
    for i in range(a.count):
        try:
            reply = say(f"hello-{i}".encode(), timeout=a.timeout_secs, wait_for_ready=True)
            ok += reply.endswith(f"hello-{i}".encode())
        except grpc.RpcError as e:
            failed += 1
            if len(errors) < 5:
                errors.append(f"{e.code()}: {e.details()}")
    try:
        stream = [m.decode() for m in count(str(a.stream).encode(), timeout=a.timeout_secs)]
    except grpc.RpcError as e:
        errors.append(f"stream {e.code()}: {e.details()}")
    print(json.dumps({"unary_ok": ok, "unary_failed": failed, "stream": stream, "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
