#!/usr/bin/env bash
# Benchmark of `jalur control` at fleet scale (issue 12): simulated Envoy-like ADS clients
# (crates/jalur-xds/examples/ads_load.rs) against one control plane on this machine.
#
#   bench/control.sh          # builds, runs every row, prints the table, writes it into bench/RESULTS.md
#
# Per row: a fresh config directory of CONTROL_SERVICES services × CONTROL_ENDPOINTS endpoints
# (ServiceEntry + VirtualService each), a fresh `jalur control` on it (plaintext ADS on a free
# port, debounce CONTROL_DEBOUNCE), and CLIENTS clients of one mode spread over 20 deployments.
# The tool measures the initial sync of all clients, then CONTROL_ENDPOINT_CHANGES endpoint
# changes and CONTROL_ROUTE_CHANGES route changes, each until every client received and ACKed
# it, and reads the plane's RSS and CPU from /proc. The load tool and the plane share the
# machine (as the issue's goals say). Knobs (environment):
#   CONTROL_ROWS              rows CLIENTS-MODE[-scoped], e.g. "1000-sotw 1000-delta-scoped"
#                             (default: 1k, 5k, 10k in both modes, and 10k scoped in both);
#                             `-scoped`: each deployment has an Istio Sidecar admitting
#                             CONTROL_SCOPED (4) services besides the two that change
#   CONTROL_SERVICES=20 CONTROL_ENDPOINTS=3 CONTROL_DEBOUNCE=100ms
#   CONTROL_ENDPOINT_CHANGES=5 CONTROL_ROUTE_CHANGES=3 CONTROL_CONNECT_RATE=2000 (streams/s)
#   CONTROL_LOAD_THREADS=1    worker threads of the load tool
#   BENCH_NO_BUILD=1          use the binaries already built
#   BENCH_NO_RESULTS=1        print the table but leave bench/RESULTS.md alone
#   BENCH_NOTE="..."          a line added under the table in RESULTS.md
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROWS="${CONTROL_ROWS:-1000-sotw 1000-delta 5000-sotw 5000-delta 10000-sotw 10000-delta 10000-sotw-scoped 10000-delta-scoped}"
SCOPED="${CONTROL_SCOPED:-4}"
SERVICES="${CONTROL_SERVICES:-20}"
ENDPOINTS="${CONTROL_ENDPOINTS:-3}"
DEBOUNCE="${CONTROL_DEBOUNCE:-100ms}"
ENDPOINT_CHANGES="${CONTROL_ENDPOINT_CHANGES:-5}"
ROUTE_CHANGES="${CONTROL_ROUTE_CHANGES:-3}"
CONNECT_RATE="${CONTROL_CONNECT_RATE:-2000}"
LOAD_THREADS="${CONTROL_LOAD_THREADS:-1}"
OUT="$ROOT/bench/out/control"   # raw outputs of the last run (ignored by git)
JALUR="$ROOT/target/release/jalur"
LOAD="$ROOT/target/release/examples/ads_load"

say() { printf '[control-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "FATAL: $*"; exit 1; }

PIDS=()
cleanup() {
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
  say "cargo build --release -p jalur -p jalur-xds --example ads_load"
  cargo build --release -q -p jalur -p jalur-xds --example ads_load
fi
[[ -x "$JALUR" && -x "$LOAD" ]] || die "missing $JALUR or $LOAD (unset BENCH_NO_BUILD)"

# 10,000 streams need 10,000 descriptors in each process (the plane's and the load tool's).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= 12000 )) || die "ulimit -n is $(ulimit -n); 10,000 clients need 12,000 (raise the hard limit)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rm -rf "$OUT"; mkdir -p "$OUT"
for row in $ROWS; do
  clients="${row%%-*}"; mode="${row#*-}"; mode="${mode%-scoped}"
  scoped=0; [[ "$row" == *-scoped ]] && scoped="$SCOPED"
  dir="$OUT/$row"; mkdir -p "$dir/config"
  "$LOAD" --config-dir "$dir/config" --init-config --services "$SERVICES" --endpoints "$ENDPOINTS" --scoped "$scoped"
  xds_port="$(free_port)"; status_port="$(free_port)"
  "$JALUR" control --insecure-xds --config "$dir/config" --state-dir "$dir/state" \
    --xds-addr "127.0.0.1:$xds_port" --status-addr "127.0.0.1:$status_port" \
    --debounce "$DEBOUNCE" >"$dir/control.log" 2>&1 &
  plane=$!; PIDS+=("$plane")
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$status_port/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$status_port/ready" >/dev/null || die "$row: control plane not ready (see $dir/control.log)"
  say "$row: $clients $mode clients on $SERVICES services × $ENDPOINTS endpoints"
  "$LOAD" --config-dir "$dir/config" --services "$SERVICES" --endpoints "$ENDPOINTS" \
    --xds "127.0.0.1:$xds_port" --clients "$clients" --mode "$mode" \
    --connect-rate "$CONNECT_RATE" --endpoint-changes "$ENDPOINT_CHANGES" \
    --route-changes "$ROUTE_CHANGES" --threads "$LOAD_THREADS" --control-pid "$plane" \
    --label "$row" >"$dir/result.json" 2>"$dir/load.log" || say "$row: load tool failed (see $dir/load.log)"
  tail -n 3 "$dir/load.log" >&2 || true
  kill "$plane" 2>/dev/null || true; wait "$plane" 2>/dev/null || true
done

python3 - "$OUT" "$ROWS" "${BENCH_NO_RESULTS:-}" "${BENCH_NOTE:-}" <<'PY'
import json, os, platform, subprocess, sys, datetime
out, rows, no_results, note = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]
results = []
for row in rows:
    try:
        with open(os.path.join(out, row, "result.json")) as f:
            results.append(json.loads(f.read().strip().splitlines()[-1]))
    except Exception as e:
        results.append({"label": row, "error": str(e)})

def mode(r):
    return r["mode"] + (", Sidecar-scoped" if r["label"].endswith("-scoped") else "")

def s(v, unit=" s"):
    return "–" if v is None or v != v else f"{v:.2f}{unit}"

head = ("| clients | mode | synced | initial sync (all / p50) | endpoint change → all ACKed p50 / p99 / max "
        "| route change p50 / p99 / max | RSS synced / end | CPU-s per endpoint change | dropped streams |")
lines = [head, "|" + "---|" * 9]
for r in results:
    if "error" in r:
        lines.append(f"| {r['label']} | failed: {r['error']} |" + " |" * 7)
        continue
    lines.append(
        f"| {r['clients']:,} | {mode(r)} | {r['synced']:,} | {s(r['initial_sync_s'])} / {s(r['initial_sync_p50_s'])} "
        f"| {s(r.get('endpoint_p50_s'))} / {s(r.get('endpoint_p99_s'))} / {s(r.get('endpoint_max_s'))} "
        f"| {s(r.get('route_p50_s'))} / {s(r.get('route_p99_s'))} / {s(r.get('route_max_s'))} "
        f"| {r['rss_mib_synced']:.0f} / {r['rss_mib_end']:.0f} MiB | {s(r.get('endpoint_cpu_s_per_change'), '')} "
        f"| {r['dropped_streams']} |")

# The issue's goals, judged on the 10,000-client rows.
goals = []
for r in results:
    if "error" in r or r["clients"] < 10000:
        continue
    def judge(name, value, limit, unit):
        ok = value == value and value <= limit
        goals.append(f"- {mode(r)} 10,000: {name} {value:.2f}{unit} vs goal ≤ {limit}{unit}: "
                     + ("**met**" if ok else f"**missed** by {value - limit:.2f}{unit}"))
    judge("RSS", r["rss_mib_end"] / 1024, 1.0, " GiB")
    judge("initial sync", r["initial_sync_s"], 10.0, " s")
    judge("endpoint change p99", r.get("endpoint_p99_s", float("nan")), 1.0, " s")
    judge("route change p99", r.get("route_p99_s", float("nan")), 2.0, " s")
    goals.append(f"- {mode(r)} 10,000: dropped streams {r['dropped_streams']} vs goal 0: "
                 + ("**met**" if r["dropped_streams"] == 0 and r["synced"] == r["clients"] else "**missed**"))

table = "\n".join(lines)
print(table)
print("\n".join(goals))
if no_results:
    sys.exit(0)
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
section = (f"## Control plane at fleet scale (bench/control.sh)\n\n"
           f"{datetime.date.today()}, {os.cpu_count()} CPUs ({cpu}), commit {rev}; load tool and plane on the same machine, "
           f"{os.environ.get('CONTROL_SERVICES', '20')} services × {os.environ.get('CONTROL_ENDPOINTS', '3')} endpoints, "
           f"clients over 20 deployments; scoped rows: each deployment's `Sidecar` admits {os.environ.get('CONTROL_SCOPED', '4')} services plus the two that change.\n\n{table}\n\nGoals (issue 12):\n\n" + "\n".join(goals) + "\n")
if note:
    section += f"\n{note}\n"
path = "bench/RESULTS.md"
text = open(path).read()
start = text.find("## Control plane at fleet scale")
if start >= 0:
    end = text.find("\n## ", start + 1)
    text = text[:start] + section + ("" if end < 0 else text[end + 1:])
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
print(f"wrote {path}")
PY
