#!/usr/bin/env node
// A proxyless gRPC client (grpc-js + @grpc/grpc-js-xds) for jalur's tests; the same contract as
// tests/peers/grpc_xds_client.py.
//
// It writes an xDS bootstrap naming the control plane (node.locality is mandatory for grpc-js),
// points GRPC_XDS_BOOTSTRAP at it, then calls /jalur.test.Echo/Say --count times on --target
// (raw bytes, waitForReady). All calls share one deadline, --timeout-secs from the start; calls
// left when it has passed count as failed without being made. It prints ONE JSON line:
//   {"ok": n, "failed": m, "replies": {"<reply>": count}, "errors": ["first few errors"]}
// and exits 0 whenever it ran (2 on bad arguments).
//
//   node tests/peers/node/xds_client.js --xds 127.0.0.1:15010 \
//       --target xds:///echo.default.svc.cluster.local --count 10 --node-id c1 --timeout-secs 10
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

const METHOD = '/jalur.test.Echo/Say';
const MAX_ERRORS = 5;

function usage(message) {
  process.stderr.write(
    `xds_client.js: ${message}\n` +
      'usage: xds_client.js --xds HOST:PORT --target xds:///NAME --count N --node-id ID ' +
      '--timeout-secs S [--cluster C] [--zone Z] [--metadata JSON] [--message TEXT]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = { cluster: 'jalur-test', zone: 'z1', metadata: '{}', message: 'hello' };
  const names = {
    '--xds': 'xds',
    '--target': 'target',
    '--count': 'count',
    '--node-id': 'nodeId',
    '--timeout-secs': 'timeoutSecs',
    '--cluster': 'cluster',
    '--zone': 'zone',
    '--metadata': 'metadata',
    '--message': 'message',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key) usage(`unknown argument ${argv[i]}`);
    if (i + 1 >= argv.length) usage(`${argv[i]} needs a value`);
    args[key] = argv[i + 1];
  }
  for (const flag of ['--xds', '--target', '--count', '--node-id', '--timeout-secs']) {
    if (args[names[flag]] === undefined) usage(`${flag} is required`);
  }
  args.count = Number.parseInt(args.count, 10);
  args.timeoutSecs = Number.parseFloat(args.timeoutSecs);
  if (!Number.isFinite(args.count) || args.count < 0) usage('--count must be a number >= 0');
  if (!Number.isFinite(args.timeoutSecs)) usage('--timeout-secs must be a number');
  try {
    args.metadata = JSON.parse(args.metadata);
  } catch (err) {
    usage(`--metadata is not JSON: ${err.message}`);
  }
  if (args.metadata === null || typeof args.metadata !== 'object' || Array.isArray(args.metadata)) {
    usage('--metadata must be a JSON object');
  }
  return args;
}

function bootstrap(args) {
  return {
    xds_servers: [
      {
        server_uri: args.xds,
        channel_creds: [{ type: 'insecure' }],
        server_features: ['xds_v3'],
      },
    ],
    node: {
      id: args.nodeId,
      cluster: args.cluster,
      locality: { zone: args.zone },
      metadata: args.metadata,
    },
  };
}

function describe(err) {
  if (err && typeof err.code === 'number') {
    const grpc = require('@grpc/grpc-js');
    const name = grpc.status[err.code] || String(err.code);
    return `${name}: ${err.details}`;
  }
  return String(err);
}

async function run(args) {
  // Loaded only once GRPC_XDS_BOOTSTRAP is set.
  const grpc = require('@grpc/grpc-js');
  require('@grpc/grpc-js-xds').register();

  const result = { ok: 0, failed: 0, replies: {}, errors: [] };
  const fail = (text) => {
    result.failed += 1;
    if (result.errors.length < MAX_ERRORS && !result.errors.includes(text)) {
      result.errors.push(text);
    }
  };
  const deadline = Date.now() + args.timeoutSecs * 1000;
  const identity = (x) => x;
  const client = new grpc.Client(args.target, grpc.credentials.createInsecure());
  const request = Buffer.from(args.message, 'utf8');
  try {
    for (let i = 0; i < args.count; i += 1) {
      if (Date.now() >= deadline) {
        fail(`DEADLINE_EXCEEDED: ${args.timeoutSecs}s for all calls passed before this call`);
        continue;
      }
      const metadata = new grpc.Metadata({ waitForReady: true });
      try {
        const reply = await new Promise((resolve, reject) => {
          client.makeUnaryRequest(METHOD, identity, identity, request, metadata, { deadline },
            (err, value) => (err ? reject(err) : resolve(value)));
        });
        const text = reply.toString('utf8');
        result.ok += 1;
        result.replies[text] = (result.replies[text] || 0) + 1;
      } catch (err) {
        fail(describe(err));
      }
    }
  } finally {
    client.close();
  }
  return result;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jalur-xds-bootstrap-'));
  const file = path.join(dir, 'bootstrap.json');
  let result;
  try {
    fs.writeFileSync(file, JSON.stringify(bootstrap(args)));
    process.env.GRPC_XDS_BOOTSTRAP = file;
    result = await run(args);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  // The xDS client keeps its control-plane stream open; do not wait for it to wind down.
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`xds_client.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
