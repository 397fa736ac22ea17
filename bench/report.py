#!/usr/bin/env python3
"""Turns the raw outputs of bench/proxy.sh (bench/out/ROW/...) into one markdown table, the goal
ratios of issue 3, and bench/RESULTS.md.

    python3 bench/report.py OUT_DIR "ROWS" [RESULTS_MD]

Hand-written notes in RESULTS.md below the KEEP marker survive a re-run.
"""

import json
import re
import sys
from pathlib import Path

KEEP = "<!-- hand-written notes below this line are kept when bench/proxy.sh rewrites this file -->"

LABELS = {
    "direct": "direct (no proxy)",
    "jalur-1": "jalur proxy, 1 hop",
    "envoy-1": "Envoy 1.40, 1 hop",
    "nginx-1": "nginx, 1 hop",
    "haproxy-1": "haproxy, 1 hop",
    "jalur-2": "jalur proxy, 2 hops (sidecar pair)",
    "envoy-2": "Envoy 1.40, 2 hops (sidecar pair)",
    "nginx-2": "nginx, 2 hops (chained)",
    "haproxy-2": "haproxy, 2 hops (chained)",
    "jalur-2-mtls": "jalur proxy, 2 hops, mTLS between them (STRICT)",
    "envoy-2-mtls": "Envoy 1.40 + jalur agent (SDS), 2 hops, mTLS (STRICT)",
    "jalur-2-mtls-authz": "jalur proxy, 2 hops, mTLS + AuthorizationPolicy of 50 rules",
    "envoy-2-mtls-authz": "Envoy 1.40 + jalur agent, 2 hops, mTLS + AuthorizationPolicy of 50 rules",
    "jalur-gw-mutual": "jalur proxy, MUTUAL gateway",
    "envoy-gw-mutual": "Envoy 1.40 + jalur agent (SDS files), MUTUAL gateway",
    "haproxy-gw-mutual": "haproxy, `ssl ... verify required`",
}

# Goals of issue 3 and the public anchors it quotes.
GOAL_P99_VS_ENVOY = 0.5
GOAL_P99_MS = 0.2
GOAL_RPS_VS_ENVOY = 1.2
GOAL_RSS_MB = 12.0
GOAL_VCPU = 0.05


def read(path, default=""):
    try:
        return Path(path).read_text()
    except OSError:
        return default


def kv(text):
    out = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out[k.strip()] = v.strip()
    return out


def seconds(tok):
    m = re.fullmatch(r"(\d+)m([\d.]+)s", tok)
    return int(m.group(1)) * 60 + float(m.group(2)) if m else 0.0


def snapshot(path):
    """wall, {cpuN: (busy, total)}, {pid: ticks} of the proxies, {pid: ticks} of the load CPU's
    processes, CPU seconds of the script's finished children (the load generator)."""
    wall, cpus, pids, lpids, children = None, {}, {}, {}, 0.0
    lines = read(path).splitlines()
    for i, line in enumerate(lines):
        f = line.split()
        if not f:
            continue
        if f[0] == "wall":
            wall = float(f[1])
        elif f[0].startswith("cpu"):
            v = [int(x) for x in f[1:]]
            # user nice system idle iowait irq softirq steal ...
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            steal = v[7] if len(v) > 7 else 0
            total = sum(v[:8])
            cpus[f[0]] = (total - idle - steal, total)
        elif f[0] in ("pid", "lpid") and len(f) >= 3 and f[2].isdigit():
            (pids if f[0] == "pid" else lpids)[f[1]] = int(f[2])
        elif f[0] == "times" and i + 2 < len(lines):
            children = sum(seconds(t) for t in lines[i + 2].split())
    return wall, cpus, pids, lpids, children


def window(dirpath, name, clk, proxy_cpu, load_cpu):
    """CPU use between snap_NAME_before and snap_NAME_after."""
    w0, c0, p0, l0, ch0 = snapshot(dirpath / f"snap_{name}_before")
    w1, c1, p1, l1, ch1 = snapshot(dirpath / f"snap_{name}_after")
    if w0 is None or w1 is None:
        return None
    wall = w1 - w0
    proxy_s = sum(p1[p] - p0[p] for p in p1 if p in p0) / clk
    # On the load CPU: the backend and the control plane, and the load generator, which ran
    # to completion inside the window (wrk/oha's own CPU time, from the shell's `times`).
    load_s = sum(l1[p] - l0[p] for p in l1 if p in l0) / clk + (ch1 - ch0)

    def other(core, ours):
        core = f"cpu{core}"
        if core not in c0 or core not in c1:
            return None
        busy = (c1[core][0] - c0[core][0]) / clk
        total = (c1[core][1] - c0[core][1]) / clk
        # Busy time not charged to our processes: other work on the machine (plus what the
        # kernel does not charge to any process).
        return max(0.0, busy - ours) / total if total > 0 else None

    return {
        "wall": wall,
        "proxy_cpu_s": proxy_s,
        "load_cpu_s": load_s,
        "foreign": other(proxy_cpu, proxy_s),
        "foreign_load": other(load_cpu, load_s),
    }


def rss_samples(path):
    rows = []
    for line in read(path).splitlines():
        vals = [int(x) for x in line.split() if x.isdigit()]
        if vals:
            rows.append(vals)
    return rows


def parse_wrk(text):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = dict(zip(["connect", "read", "write", "timeout"], map(int, m.groups()))) if m else {}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    r["errors"] = r["non2xx"] + sum(r["socket_errors"].values())
    return r


def parse_oha(text):
    try:
        j = json.loads(text)
    except ValueError:
        return None
    pct = j.get("latencyPercentiles", {})
    codes = {str(k): int(v) for k, v in (j.get("statusCodeDistribution") or {}).items()}
    errs = {str(k): int(v) for k, v in (j.get("errorDistribution") or {}).items()}
    ok = codes.get("200", 0)
    summary = j.get("summary", {})
    return {
        "p50": pct.get("p50"),
        "p99": pct.get("p99"),
        "p999": pct.get("p99.9"),
        "ok": ok,
        "requests": sum(codes.values()) + sum(errs.values()),
        "non200": sum(v for k, v in codes.items() if k != "200"),
        "codes": codes,
        "errors": errs,
        "rps": summary.get("requestsPerSec"),
        "total": summary.get("total"),
    }


def load_row(out, name, clk, proxy_cpu, load_cpu):
    d = out / name
    row = {"name": name, "label": LABELS.get(name, name)}
    if not d.is_dir():
        row["failed"] = "not run"
        return row
    if (d / "handshake_row").exists():
        return load_handshake_row(d, row, clk, proxy_cpu, load_cpu)
    if (d / "failed").exists():
        row["failed"] = read(d / "failed").strip()
        return row
    row["n_procs"] = len([p for p in read(d / "pids").split() if p])
    idle = [int(x) for x in read(d / "rss_idle").split() if x.isdigit()]
    row["rss_idle_kb"] = sum(idle) if idle else None
    samples = rss_samples(d / "rss_max") + rss_samples(d / "rss_fixed")
    if samples:
        row["rss_load_kb"] = max(sum(s) for s in samples)
        row["rss_load_per_proc_kb"] = max(max(s) for s in samples)
    else:
        row["rss_load_kb"] = row["rss_load_per_proc_kb"] = None
    row["wrk"] = parse_wrk(read(d / "wrk.txt"))
    row["warmup"] = parse_wrk(read(d / "warmup.txt"))
    row["oha"] = parse_oha(read(d / "oha.json"))
    row["oha_stderr"] = read(d / "oha.err").strip()
    row["max_win"] = window(d, "max", clk, proxy_cpu, load_cpu)
    row["fixed_win"] = window(d, "fixed", clk, proxy_cpu, load_cpu)
    row["died"] = [line.split()[0] for line in read(d / "alive").splitlines() if "DIED" in line]
    row["handshakes"] = parse_s_time(read(d / "s_time.txt"), window(d, "hs", clk, proxy_cpu, load_cpu))
    return row


def load_handshake_row(d, row, clk, proxy_cpu, load_cpu):
    """A row that only measures new TLS handshakes (issue 11's MUTUAL gateways)."""
    row["kind"] = "handshake"
    if (d / "failed").exists():
        row["failed"] = read(d / "failed").strip()
        return row
    row["died"] = [line.split()[0] for line in read(d / "alive").splitlines() if "DIED" in line]
    row["handshakes"] = parse_s_time(read(d / "s_time.txt"), window(d, "hs", clk, proxy_cpu, load_cpu))
    return row


def parse_s_time(text, win):
    """openssl s_time: 'N connections in T real seconds' of the -new run -> rates."""
    m = re.search(r"(\d+) connections in ([\d.]+) real seconds", text)
    if not m:
        return None
    conns, secs = int(m.group(1)), float(m.group(2))
    cpu = win["proxy_cpu_s"] if win else None
    return {
        "conns": conns,
        "per_s": conns / secs if secs > 0 else None,
        "server_cpu_s": cpu,
        "per_cpu_s": conns / cpu if cpu else None,
    }


def ms(seconds):
    return None if seconds is None else seconds * 1000.0


def fmt(v, digits=2, suffix=""):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return f"{v:,.{digits}f}{suffix}"


def derive(rows):
    direct = next((r for r in rows if r["name"] == "direct" and "failed" not in r), None)
    direct_p99 = ms(direct["oha"]["p99"]) if direct and direct.get("oha") else None
    direct_p50 = ms(direct["oha"]["p50"]) if direct and direct.get("oha") else None
    for r in rows:
        if "failed" in r:
            continue
        o = r.get("oha")
        r["p50_ms"] = ms(o["p50"]) if o else None
        r["p99_ms"] = ms(o["p99"]) if o else None
        r["p999_ms"] = ms(o["p999"]) if o else None
        r["added_p99_ms"] = (
            r["p99_ms"] - direct_p99 if r["name"] != "direct" and r["p99_ms"] is not None and direct_p99 is not None else None
        )
        r["added_p50_ms"] = (
            r["p50_ms"] - direct_p50 if r["name"] != "direct" and r["p50_ms"] is not None and direct_p50 is not None else None
        )
        mw, fw = r["max_win"], r["fixed_win"]
        r["max_rps"] = r["wrk"]["rps"]
        if r["name"] != "direct" and mw and mw["wall"] > 0:
            r["proxy_busy_at_max"] = mw["proxy_cpu_s"] / mw["wall"]
            r["rps_per_cpu_s"] = r["wrk"]["requests"] / mw["proxy_cpu_s"] if mw["proxy_cpu_s"] > 0 else None
        else:
            r["proxy_busy_at_max"] = r["rps_per_cpu_s"] = None
        if r["name"] != "direct" and fw and o and o["requests"] > 0 and fw["wall"] > 0:
            r["cpu_s_per_1k"] = fw["proxy_cpu_s"] / (o["requests"] / 1000.0)
            achieved = o["requests"] / fw["wall"]
            r["vcpu_per_1k_rps"] = (fw["proxy_cpu_s"] / fw["wall"]) / (achieved / 1000.0)
        else:
            r["cpu_s_per_1k"] = r["vcpu_per_1k_rps"] = None
        r["foreign_max"] = mw["foreign"] if mw else None
        r["foreign_fixed"] = fw["foreign"] if fw else None
        r["foreign_load_max"] = mw["foreign_load"] if mw else None
        r["foreign_load_fixed"] = fw["foreign_load"] if fw else None
        r["errors_wrk"] = r["wrk"]["errors"]
        r["errors_oha"] = (o["non200"] + sum(o["errors"].values())) if o else None
    return rows


def table(rows):
    head = [
        "row",
        "max rps @32c",
        "proxy CPU at max",
        "rps per proxy CPU-s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "added p99 ms",
        "RSS idle MB",
        "RSS load MB",
        "CPU s / 1k req",
        "vCPU / 1k rps",
        "errors (wrk / oha)",
        "other load, max run (CPU 0 / 1)",
        "other load, fixed run (CPU 0 / 1)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['label']} | FAILED: {r['failed']} |" + " |" * (len(head) - 2))
            continue
        mb = lambda kb: None if kb is None else kb / 1024.0  # noqa: E731
        died = " **(proxy died)**" if r["died"] else ""
        pct = lambda x: "–" if x is None else f"{100 * x:.0f}%"  # noqa: E731
        cells = [
            r["label"] + died,
            fmt(r["max_rps"], 0),
            fmt(None if r["proxy_busy_at_max"] is None else 100 * r["proxy_busy_at_max"], 0, "%"),
            fmt(r["rps_per_cpu_s"], 0),
            fmt(r["p50_ms"], 3),
            fmt(r["p99_ms"], 3),
            fmt(r["p999_ms"], 3),
            fmt(r["added_p99_ms"], 3) if r["name"] != "direct" else "—",
            fmt(mb(r["rss_idle_kb"]), 1) if r["name"] != "direct" else "—",
            fmt(mb(r["rss_load_kb"]), 1) if r["name"] != "direct" else "—",
            fmt(r["cpu_s_per_1k"], 4) if r["name"] != "direct" else "—",
            fmt(r["vcpu_per_1k_rps"], 4) if r["name"] != "direct" else "—",
            f"{r['errors_wrk']} / {fmt(r['errors_oha'], 0)}",
            f"{pct(r['foreign_max'])} / {pct(r['foreign_load_max'])}",
            f"{pct(r['foreign_fixed'])} / {pct(r['foreign_load_fixed'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(rows):
    by = {r["name"]: r for r in rows if "failed" not in r}
    out = []

    def line(goal, value, ok, detail):
        state = "n/a" if ok is None else ("**met**" if ok else "**not met**")
        out.append(f"| {goal} | {value} | {state} | {detail} |")

    j1, e1, h1 = by.get("jalur-1"), by.get("envoy-1"), by.get("haproxy-1")
    j2, e2 = by.get("jalur-2"), by.get("envoy-2")

    # 1. two-hop added p99 <= half of Envoy's
    if j2 and e2 and j2["added_p99_ms"] is not None and e2["added_p99_ms"] is not None:
        ja, ea = j2["added_p99_ms"], e2["added_p99_ms"]
        limit = GOAL_P99_VS_ENVOY * ea
        ok = ja <= limit
        ratio = f"{ja / ea:.2f}× Envoy's" if ea > 0 else "Envoy added ≤ 0"
        detail = (
            f"limit {limit:.3f} ms; "
            + (f"{limit - ja:.3f} ms under it" if ok else f"{ja - limit:.3f} ms over it ({ja / limit:.1f}× the limit)" if limit > 0 else f"{ja - limit:.3f} ms over it")
        )
        line("2-hop added p99 ≤ 0.5 × Envoy's 2-hop", f"{ja:.3f} ms vs {ea:.3f} ms ({ratio})", ok, detail)
    else:
        line("2-hop added p99 ≤ 0.5 × Envoy's 2-hop", "–", None, "a row is missing")
    # 2. two-hop added p99 <= 0.2 ms
    if j2 and j2["added_p99_ms"] is not None:
        ja = j2["added_p99_ms"]
        ok = ja <= GOAL_P99_MS
        detail = f"{GOAL_P99_MS - ja:.3f} ms under" if ok else f"{ja - GOAL_P99_MS:.3f} ms over ({ja / GOAL_P99_MS:.1f}× the goal)"
        line("2-hop added p99 ≤ 0.2 ms (two ztunnels: 0.20 ms)", f"{ja:.3f} ms", ok, detail)
    else:
        line("2-hop added p99 ≤ 0.2 ms", "–", None, "jalur-2 missing")
    # 3. max rps per core >= 1.2 x Envoy
    if j1 and e1 and j1["max_rps"] and e1["max_rps"]:
        ratio = j1["max_rps"] / e1["max_rps"]
        ok = ratio >= GOAL_RPS_VS_ENVOY
        need = GOAL_RPS_VS_ENVOY * e1["max_rps"]
        detail = (
            f"need ≥ {need:,.0f} rps; " + (f"{(ratio / GOAL_RPS_VS_ENVOY - 1) * 100:.0f}% above" if ok else f"{(1 - ratio / GOAL_RPS_VS_ENVOY) * 100:.0f}% short ({need - j1['max_rps']:,.0f} rps)")
        )
        if j1["rps_per_cpu_s"] and e1["rps_per_cpu_s"]:
            detail += f"; per proxy CPU-second {j1['rps_per_cpu_s'] / e1['rps_per_cpu_s']:.2f}× Envoy"
        if j2 and e2 and j2["max_rps"] and e2["max_rps"]:
            detail += f"; 2 hops {j2['max_rps'] / e2['max_rps']:.2f}×"
        line("max rps per core ≥ 1.2 × Envoy (1 hop)", f"{j1['max_rps']:,.0f} vs {e1['max_rps']:,.0f} ({ratio:.2f}×)", ok, detail)
    else:
        line("max rps per core ≥ 1.2 × Envoy", "–", None, "a row is missing")
    # 4. max rps per core >= haproxy
    if j1 and h1 and j1["max_rps"] and h1["max_rps"]:
        ratio = j1["max_rps"] / h1["max_rps"]
        ok = ratio >= 1.0
        detail = f"{(ratio - 1) * 100:.0f}% above" if ok else f"{(1 - ratio) * 100:.0f}% short ({h1['max_rps'] - j1['max_rps']:,.0f} rps)"
        if j1["rps_per_cpu_s"] and h1["rps_per_cpu_s"]:
            detail += f"; per proxy CPU-second {j1['rps_per_cpu_s'] / h1['rps_per_cpu_s']:.2f}× haproxy"
        line("max rps per core ≥ haproxy (1 hop)", f"{j1['max_rps']:,.0f} vs {h1['max_rps']:,.0f} ({ratio:.2f}×)", ok, detail)
    else:
        line("max rps per core ≥ haproxy", "–", None, "a row is missing")
    # 5. RSS under load <= 12 MB per sidecar
    if j1 and j1["rss_load_kb"]:
        worst = j1["rss_load_kb"] / 1024.0
        where = "1-hop sidecar"
        if j2 and j2["rss_load_per_proc_kb"]:
            w2 = j2["rss_load_per_proc_kb"] / 1024.0
            where += f"; largest of the 2-hop pair {w2:.1f} MB"
            worst = max(worst, w2)
        ok = worst <= GOAL_RSS_MB
        detail = f"{GOAL_RSS_MB - worst:.1f} MB under" if ok else f"{worst - GOAL_RSS_MB:.1f} MB over ({worst / GOAL_RSS_MB:.2f}× the goal)"
        line("RSS under load ≤ 12 MB per sidecar (ztunnel: 12 MB)", f"{j1['rss_load_kb'] / 1024.0:.1f} MB ({where})", ok, detail)
    else:
        line("RSS under load ≤ 12 MB", "–", None, "jalur-1 missing")
    # 6. CPU <= 0.05 vCPU per 1000 rps per sidecar
    if j1 and j1["vcpu_per_1k_rps"] is not None:
        v = j1["vcpu_per_1k_rps"]
        extra = ""
        if j2 and j2["vcpu_per_1k_rps"] is not None:
            extra = f"; 2-hop pair {j2['vcpu_per_1k_rps']:.4f} (both sidecars)"
        if e1 and e1["vcpu_per_1k_rps"]:
            extra += f"; Envoy 1 hop {e1['vcpu_per_1k_rps']:.4f}"
        ok = v <= GOAL_VCPU
        detail = f"{GOAL_VCPU - v:.4f} under" if ok else f"{v - GOAL_VCPU:.4f} over ({v / GOAL_VCPU:.1f}× the goal)"
        line("CPU ≤ 0.05 vCPU per 1,000 rps per sidecar (Istio sidecar 0.20, ztunnel 0.06)", f"{v:.4f} vCPU{extra}", ok, detail)
    else:
        line("CPU ≤ 0.05 vCPU per 1,000 rps", "–", None, "jalur-1 missing")
    return "| goal (issue 3) | this run | verdict | by how much |\n|---|---|---|---|\n" + "\n".join(out)


def goals_mtls(rows):
    """Issue 10: the mTLS pair against Envoy's mTLS pair, and new handshakes per core."""
    by = {r["name"]: r for r in rows if "failed" not in r}
    jm, em = by.get("jalur-2-mtls"), by.get("envoy-2-mtls")
    if not jm and not em:
        return ""
    out = []

    def line(goal, value, ok, detail):
        state = "n/a" if ok is None else ("**met**" if ok else "**not met**")
        out.append(f"| {goal} | {value} | {state} | {detail} |")

    def ratio_goal(goal, key, unit, digits):
        if jm and em and jm.get(key) is not None and em.get(key):
            j, e = jm[key], em[key]
            ok = j <= GOAL_P99_VS_ENVOY * e
            line(goal, f"{j:.{digits}f} {unit} vs {e:.{digits}f} {unit} ({j / e:.2f}× Envoy's)", ok,
                 f"limit {GOAL_P99_VS_ENVOY * e:.{digits}f} {unit}")
        else:
            line(goal, "–", None, "a row is missing")

    ratio_goal("mTLS pair added p99 ≤ 0.5 × Envoy's mTLS pair", "added_p99_ms", "ms", 3)
    ratio_goal("mTLS pair CPU per request ≤ 0.5 × Envoy's mTLS pair", "cpu_s_per_1k", "CPU-s/1k req", 4)
    if jm and jm.get("added_p99_ms") is not None:
        ja = jm["added_p99_ms"]
        ok = ja <= GOAL_P99_MS
        line("mTLS pair added p99 ≤ 0.20 ms (two ztunnels with mTLS: 0.20 ms)", f"{ja:.3f} ms", ok,
             f"{GOAL_P99_MS - ja:.3f} ms under" if ok else f"{ja - GOAL_P99_MS:.3f} ms over ({ja / GOAL_P99_MS:.1f}× the goal)")
    for r in (jm, em):
        if not r:
            continue
        h = r.get("handshakes")
        if h and h.get("per_s"):
            per_cpu = f"{h['per_cpu_s']:,.0f} per server CPU-second" if h.get("per_cpu_s") else "server CPU not measured"
            line(f"new mTLS handshakes/s into the server sidecar ({r['label']})", f"{h['per_s']:,.0f}/s ({h['conns']} in the run)", None, per_cpu)
        else:
            line(f"new mTLS handshakes/s ({r['label']})", "–", None, "openssl s_time gave no result (see s_time.txt)")
    return "| goal (issue 10, mTLS) | this run | verdict | by how much |\n|---|---|---|---|\n" + "\n".join(out)


def goals_issue11(rows):
    """Issue 11: an AuthorizationPolicy of 50 rules at a sidecar (its added CPU per request and
    p99 over the same pair without it), and new handshakes per core on a MUTUAL gateway. The
    issue sets no numbers: the goals are jalur at or under Envoy's cost, and at or over Envoy's
    and haproxy's handshakes per core."""
    by = {r["name"]: r for r in rows}
    names = ("jalur-2-mtls-authz", "envoy-2-mtls-authz", "jalur-gw-mutual", "envoy-gw-mutual", "haproxy-gw-mutual")
    if not any(n in by for n in names):
        return ""
    out = []

    def line(goal, value, ok, detail):
        state = "n/a" if ok is None else ("**met**" if ok else "**not met**")
        out.append(f"| {goal} | {value} | {state} | {detail} |")

    added = {}
    for impl, base, authz in (("jalur", "jalur-2-mtls", "jalur-2-mtls-authz"), ("Envoy", "envoy-2-mtls", "envoy-2-mtls-authz")):
        b, a = by.get(base), by.get(authz)
        if a is None:
            continue
        goal = f"AuthorizationPolicy of 50 rules, {impl} pair: added CPU per request, added p99"
        if "failed" in a:
            line(goal, "–", None, a["failed"])
            continue
        if not b or "failed" in b or None in (b.get("cpu_s_per_1k"), a.get("cpu_s_per_1k"), b.get("p99_ms"), a.get("p99_ms")):
            line(goal, "–", None, f"needs the {base} row of the same run")
            continue
        dcpu, dp99 = a["cpu_s_per_1k"] - b["cpu_s_per_1k"], a["p99_ms"] - b["p99_ms"]
        added[impl] = (dcpu, dp99)
        line(goal, f"{1000 * dcpu:+.1f} µs CPU per request ({100 * dcpu / b['cpu_s_per_1k']:+.0f}%), p99 {dp99:+.3f} ms", None,
             f"{a['cpu_s_per_1k']:.4f} vs {b['cpu_s_per_1k']:.4f} CPU-s/1k req; p99 {a['p99_ms']:.3f} vs {b['p99_ms']:.3f} ms")
    if "jalur" in added and "Envoy" in added:
        (jc, jp), (ec, ep) = added["jalur"], added["Envoy"]
        line("the policy's added CPU per request: jalur ≤ Envoy", f"{1000 * jc:+.1f} vs {1000 * ec:+.1f} µs", jc <= ec,
             f"{1000 * (jc - ec):+.1f} µs against Envoy's")
        line("the policy's added p99: jalur ≤ Envoy", f"{jp:+.3f} vs {ep:+.3f} ms", jp <= ep, f"{jp - ep:+.3f} ms against Envoy's")
    per_cpu = {}
    for n in ("jalur-gw-mutual", "envoy-gw-mutual", "haproxy-gw-mutual"):
        r = by.get(n)
        if r is None:
            continue
        goal = f"new mutual-TLS handshakes/s, {r['label']}"
        h = r.get("handshakes")
        if "failed" in r:
            line(goal, "–", None, r["failed"])
        elif h and h.get("per_s"):
            per_cpu[n] = h.get("per_cpu_s")
            detail = f"{h['per_cpu_s']:,.0f} per proxy CPU-second" if h.get("per_cpu_s") else "proxy CPU not measured"
            line(goal, f"{h['per_s']:,.0f}/s ({h['conns']} in the run)", None, detail)
        else:
            line(goal, "–", None, "openssl s_time gave no result (see s_time.txt)")
    j = per_cpu.get("jalur-gw-mutual")
    for other, name in (("envoy-gw-mutual", "Envoy"), ("haproxy-gw-mutual", "haproxy")):
        o = per_cpu.get(other)
        if j and o:
            line(f"MUTUAL gateway handshakes per core: jalur ≥ {name}", f"{j:,.0f} vs {o:,.0f} per CPU-s ({j / o:.2f}×)", j >= o,
                 f"{100 * (j / o - 1):+.0f}%")
    return "| goal (issue 11) | this run | verdict | by how much |\n|---|---|---|---|\n" + "\n".join(out)


def notes(rows, machine):
    n = []
    n.append(
        f"Load average when the run started: {machine.get('loadavg_start', '?')}; when it ended: {machine.get('loadavg_end', '?')}. "
        "The 'other load' columns are the share of each CPU's time that was busy but not charged to this "
        "benchmark's processes (CPU 0: the proxies; CPU 1: backend, control plane, wrk/oha) — other work on the "
        "machine; the higher they are, the noisier that row."
    )
    noisy = [
        r["label"]
        for r in rows
        if "failed" not in r
        and max(x or 0 for x in (r["foreign_max"], r["foreign_fixed"], r["foreign_load_max"], r["foreign_load_fixed"])) > 0.10
    ]
    if noisy:
        n.append(
            "Other work took more than 10% of a benchmark CPU during: " + ", ".join(noisy) + ". Treat those rows as noisy; "
            "re-run on a quiet machine (or with BENCH_NICE=-10) before drawing conclusions from small differences."
        )
    for r in rows:
        if "failed" in r:
            n.append(f"**{r['label']}**: {r['failed']}.")
            continue
        if r["died"]:
            n.append(f"**{r['label']}**: proxy process(es) {', '.join(r['died'])} exited during the run (see bench/out/{r['name']}/).")
        errs = []
        w = r["wrk"]
        if w["errors"]:
            errs.append(f"wrk: {w['non2xx']} non-2xx, socket errors {w['socket_errors']} of {w['requests']:,} requests")
        if r["warmup"]["errors"]:
            errs.append(f"warmup: {r['warmup']['non2xx']} non-2xx, socket errors {r['warmup']['socket_errors']}")
        o = r["oha"]
        if o is None:
            errs.append(f"oha produced no result ({r['oha_stderr'][:200]})")
        elif o["non200"] or o["errors"]:
            errs.append(f"oha: status codes {o['codes']}, errors {o['errors']} of {o['requests']:,}")
        if errs:
            n.append(f"**{r['label']}** errors — " + "; ".join(errs) + ".")
        if r["name"] != "direct" and r["proxy_busy_at_max"] is not None and r["proxy_busy_at_max"] < 0.85:
            n.append(
                f"{r['label']}: the proxy used only {100 * r['proxy_busy_at_max']:.0f}% of its core during the max-rps run, so "
                f"its max rps was bounded elsewhere (other load on CPU 1 was {100 * (r['foreign_load_max'] or 0):.0f}%; "
                "the load generator + backend on CPU 1, or waiting); 'rps per proxy CPU-s' is the fairer throughput figure for it."
            )
        if o and o["rps"] and o["rps"] < 0.95 * float(machine.get("rate", 1000)):
            n.append(f"{r['label']}: the fixed-rate run reached only {o['rps']:.0f} rps.")
    return n


def main():
    out = Path(sys.argv[1])
    names = sys.argv[2].split()
    results = sys.argv[3] if len(sys.argv) > 3 else ""
    machine = kv(read(out / "machine"))
    clk = int(machine.get("clk_tck", "100"))
    proxy_cpu = int(machine.get("proxy_cpu", "0"))
    load_cpu = int(machine.get("load_cpu", "1"))
    loaded = [load_row(out, n, clk, proxy_cpu, load_cpu) for n in names]
    # Handshake-only rows have no wrk/oha runs: they show in issue 11's table alone.
    rows = derive([r for r in loaded if r.get("kind") != "handshake"])
    t = table(rows)
    g = goals(rows)
    gm = goals_mtls(rows)
    if gm:
        g += "\n\n" + gm
    g11 = goals_issue11(loaded)
    if g11:
        g += "\n\n" + g11
    nl = notes(rows, machine)
    (out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))

    print()
    print(t)
    print()
    print(g)
    print()
    for x in nl:
        print("- " + x)

    if not results:
        return
    path = Path(results)
    kept = ""
    old = read(path)
    if KEEP in old:
        kept = old.split(KEEP, 1)[1].lstrip("\n")
    doc = f"""# jalur proxy benchmark — latest results

Written by `bench/proxy.sh` (see bench/README.md for the method and the columns). Not a test:
numbers from one run on one machine.

- date: {machine.get('date', '?')}, runtime {machine.get('runtime_s', '?')} s
- machine: {machine.get('nproc', '?')} CPUs ({machine.get('cpu', '?')}), kernel {machine.get('kernel', '?')}
- jalur {machine.get('jalur', '?')}, Envoy {machine.get('envoy', '?')} (`--concurrency 1`), nginx {machine.get('nginx', '?')} (1 worker), haproxy {machine.get('haproxy', '?')} (`nbthread 1`), wrk {machine.get('wrk', '?')}, oha {machine.get('oha', '?')}
- proxies pinned to CPU 0; backend (nginx, static 29-byte body), jalur control, wrk and oha on CPU 1
- max rps: wrk, 1 thread, {machine.get('conns', '?')} connections, {machine.get('max_duration', '?')} s after a {machine.get('warmup', '?')} s warmup; latency: oha, {machine.get('rate', '?')} rps open loop with latency correction, {machine.get('conns', '?')} connections, {machine.get('fixed_duration', '?')} s
{('- note: ' + machine['note']) if machine.get('note') else ''}

{t}

{g}

## Notes from this run (generated)

""" + "\n".join("- " + x for x in nl) + f"""

{KEEP}

{kept}"""
    path.write_text(doc.rstrip() + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
