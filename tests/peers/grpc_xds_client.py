#!/usr/bin/env python3
"""A proxyless gRPC client (grpcio's built-in xDS) for jalur's tests.

It writes an xDS bootstrap naming the control plane, points GRPC_XDS_BOOTSTRAP at it, then calls
/jalur.test.Echo/Say --count times on --target (raw bytes, wait_for_ready). All calls share one
deadline, --timeout-secs from the start; calls left when it has passed count as failed without
being made. It prints ONE JSON line on stdout:

    {"ok": n, "failed": m, "replies": {"<reply>": count}, "errors": ["first few errors"]}

and exits 0 whenever it ran, whatever the calls did (2 on bad arguments). A plain target such as
127.0.0.1:PORT works too (no xDS), which is how the script itself is checked.

    .venv/bin/python tests/peers/grpc_xds_client.py --xds 127.0.0.1:15010 \
        --target xds:///echo.default.svc.cluster.local --count 10 --node-id c1 --timeout-secs 10
"""

import argparse
import json
import os
import sys
import tempfile
import time

METHOD = "/jalur.test.Echo/Say"
MAX_ERRORS = 5


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xds", required=True, help="control plane HOST:PORT (plaintext)")
    parser.add_argument("--target", required=True, help="e.g. xds:///echo")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--timeout-secs", type=float, required=True)
    parser.add_argument("--cluster", default="jalur-test", help="node.cluster")
    parser.add_argument("--zone", default="z1", help="node.locality.zone")
    parser.add_argument("--metadata", default="{}", help="node.metadata as a JSON object")
    parser.add_argument("--message", default="hello", help="request bytes (UTF-8)")
    args = parser.parse_args()
    try:
        args.metadata = json.loads(args.metadata)
    except ValueError as err:
        parser.error(f"--metadata is not JSON: {err}")
    if not isinstance(args.metadata, dict):
        parser.error("--metadata must be a JSON object")
    return args


def bootstrap(args):
    return {
        "xds_servers": [
            {
                "server_uri": args.xds,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {
            "id": args.node_id,
            "cluster": args.cluster,
            "locality": {"zone": args.zone},
            "metadata": args.metadata,
        },
    }


def describe(err):
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else None
    if code is not None:
        return f"{code.name}: {details}"
    return f"{type(err).__name__}: {err}"


def run(args):
    # Imported only once GRPC_XDS_BOOTSTRAP is set: grpc reads it when the xds resolver starts.
    import grpc

    result = {"ok": 0, "failed": 0, "replies": {}, "errors": []}

    def fail(text):
        result["failed"] += 1
        if len(result["errors"]) < MAX_ERRORS and text not in result["errors"]:
            result["errors"].append(text)

    deadline = time.monotonic() + args.timeout_secs
    request = args.message.encode()
    with grpc.insecure_channel(args.target) as channel:
        say = channel.unary_unary(METHOD)
        for _ in range(args.count):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                fail(f"DEADLINE_EXCEEDED: {args.timeout_secs}s for all calls passed before this call")
                continue
            try:
                reply = say(request, timeout=remaining, wait_for_ready=True)
            except grpc.RpcError as err:
                fail(describe(err))
                continue
            text = reply.decode("utf-8", errors="replace")
            result["ok"] += 1
            result["replies"][text] = result["replies"].get(text, 0) + 1
    return result


def main():
    args = parse_args()
    fd, path = tempfile.mkstemp(prefix="jalur-xds-bootstrap-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(bootstrap(args), out)
        os.environ["GRPC_XDS_BOOTSTRAP"] = path
        result = run(args)
    finally:
        os.unlink(path)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
