#!/usr/bin/env python3
"""Builds the side-by-side tables from a bench/mesh.sh results directory.

Usage: mesh_table.py RESULTS_DIR OUR_COMMIT COMMAND LABEL=VERSION [LABEL=VERSION...]
Cases: rate-*.SERVER.json (fixed rate, both classes), peak-fF.SERVER.json (closed loop at
same-node fraction F) with .cpu ("ticks_before ticks_after CLK_TCK", both nodes), .meshwait
(ms until the region carried cross-node traffic before the case), and restart.tsv
(server, baseline|restart, round, ms[, failed probe runs]).
"""
import glob
import json
import os
import statistics
import sys


def load(d, name, which):
    try:
        with open(os.path.join(d, f"{name}.{which}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cpu_secs(d, name, which):
    try:
        with open(os.path.join(d, f"{name}.{which}.cpu")) as f:
            before, after, hz = (float(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return (after - before) / hz if hz else None


def read(d, name, which, suffix):
    try:
        with open(os.path.join(d, f"{name}.{which}.{suffix}")) as f:
            return f.read().strip()
    except OSError:
        return ""


def cls(r, c):
    return (r or {}).get("classes", {}).get(c)


def fmt_int(v):
    return f"{v:,.0f}".replace(",", " ")


def fmt_pct(v):
    return f"{100 * v:.2f} %" if v else "0 %"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "–"


def main():
    d, commit, cmd = sys.argv[1:4]
    labels = [kv.split("=", 1) for kv in sys.argv[4:]]
    servers = ["ours"] + [l for l, _ in labels]
    out = []
    p = out.append
    p(f"# Mesh benchmark, {os.path.basename(d)}\n")
    p(f"`{cmd}` — ours at {commit}; " + "; ".join(f"{l}: {v}" for l, v in labels) + "\n")
    p("Two relays meshed over TLS (`-certmode manual -hostname localhost`, a throwaway CA via "
      "`SSL_CERT_FILE`), fresh region per case, order rotating; loadtest over TLS "
      "(`--insecure`). One run on a shared 2-core box: only ratios mean anything.\n")
    hdr = "| case | " + " | ".join(servers) + " | " + " | ".join(f"ours / {l}" for l, _ in labels) + " |"
    sep = "|---|" + "---:|" * (len(servers) + len(labels))

    # Fixed rate.
    for f in sorted(glob.glob(os.path.join(d, "rate-*.ours.json"))):
        name = os.path.basename(f).split(".")[0]
        rs = {s: load(d, name, s) for s in servers}
        p(f"\n## {name}: open loop at a fixed rate\n")
        p(f"`{read(d, name, 'ours', 'cmd')}`\n")
        p(hdr)
        p(sep)
        for c in ("same_node", "cross_node"):
            for key, label in (("p50", "p50 µs"), ("p99", "p99 µs")):
                vals = [(cls(rs[s], c) or {}).get("latency_us", {}).get(key) for s in servers]
                row = [fmt_int(v) if v is not None else "–" for v in vals]
                rat = [ratio(vals[0], v) for v in vals[1:]]
                p(f"| {c} {label} | " + " | ".join(row) + " | " + " | ".join(rat) + " |")
            vals = [(cls(rs[s], c) or {}).get("traffic", {}) for s in servers]
            row = [f"{fmt_pct(t.get('loss_ratio', 0))} of {fmt_int(t.get('sent', 0))}" for t in vals]
            p(f"| {c} loss | " + " | ".join(row) + " | " + " | ".join("" for _ in labels) + " |")
        vals = [cpu_secs(d, name, s) for s in servers]
        secs = [(rs[s] or {}).get("measured_secs") or 0 for s in servers]
        row = [f"{v:.2f}" if v is not None else "–" for v in vals]
        p("| server CPU s, both nodes (whole case) | " + " | ".join(row) + " | "
          + " | ".join(ratio(vals[0], v) for v in vals[1:]) + " |")
        errs = [str((rs[s] or {}).get("errors_total", "–")) for s in servers]
        p("| errors | " + " | ".join(errs) + " | " + " | ".join("" for _ in labels) + " |")

    # Closed-loop peak.
    peaks = sorted(glob.glob(os.path.join(d, "peak-f*.ours.json")),
                   key=lambda f: -float(os.path.basename(f).split(".ours")[0][6:] or 0))
    if peaks:
        p("\n## Closed-loop peak (`--max --window`), packets/s and packets per server CPU second\n")
        p("Packets per CPU second = packets delivered / (utime + stime of both nodes over the "
          "case), i.e. packets/s per fully busy server core.\n")
        p(hdr)
        p(sep)
    for f in peaks:
        name = os.path.basename(f).split(".ours")[0]
        frac = name[6:]
        rs = {s: load(d, name, s) for s in servers}
        cpus = {s: cpu_secs(d, name, s) for s in servers}
        rows = []
        for c in ("same_node", "cross_node"):
            vals = [(cls(rs[s], c) or {}).get("traffic", {}).get("packets_per_sec") for s in servers]
            if all(v in (None, 0) for v in vals):
                continue
            rows.append((f"f={frac}: {c} packets/s", vals))
        tot = [(rs[s] or {}).get("traffic", {}).get("packets_per_sec") for s in servers]
        if len(rows) > 1:
            rows.append((f"f={frac}: all packets/s", tot))
        for c in ("same_node", "cross_node"):
            vals = []
            for s in servers:
                t = (cls(rs[s], c) or {}).get("traffic", {})
                vals.append(t.get("received", 0) / cpus[s] if cpus[s] else None)
            if all(v in (None, 0) for v in vals):
                continue
            what = {"same_node": "local deliveries", "cross_node": "cross-node (forwarded) deliveries"}[c]
            rows.append((f"f={frac}: {what} per server CPU s", vals))
        if len(rows) > 3:
            vals = [((rs[s] or {}).get("traffic", {}).get("received", 0) / cpus[s]) if cpus[s] else None
                    for s in servers]
            rows.append((f"f={frac}: all deliveries per server CPU s", vals))
        rows.append((f"f={frac}: server CPU s, both nodes", [cpus[s] for s in servers]))
        for label, vals in rows:
            row = [(f"{v:.1f}" if "CPU s," in label else fmt_int(v)) if v is not None else "–" for v in vals]
            p(f"| {label} | " + " | ".join(row) + " | " + " | ".join(ratio(vals[0], v) for v in vals[1:]) + " |")
        loss = [fmt_pct((rs[s] or {}).get("traffic", {}).get("loss_ratio", 0)) for s in servers]
        p(f"| f={frac}: loss | " + " | ".join(loss) + " | " + " | ".join("" for _ in labels) + " |")
        p99 = [(rs[s] or {}).get("latency_us", {}).get("p99") for s in servers]
        p(f"| f={frac}: p50 / p99 µs | " + " | ".join(
            f"{fmt_int((rs[s] or {}).get('latency_us', {}).get('p50', 0))} / {fmt_int(v or 0)}"
            for s, v in zip(servers, p99)) + " | " + " | ".join("" for _ in labels) + " |")
    if peaks:
        p("\nCommands (per server the same but the URLs):\n")
        for f in peaks:
            name = os.path.basename(f).split(".ours")[0]
            p(f"- `{read(d, name, 'ours', 'cmd')}`")

    # Restart.
    tsv = os.path.join(d, "restart.tsv")
    if os.path.exists(tsv):
        rows = {}
        with open(tsv) as fh:
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                rows.setdefault((parts[0], parts[1]), []).append(parts[3:])
        p("\n## Restart: node 1 SIGKILLed and started again; ms from it accepting connections "
          "until a cross-node pair passes route probes both ways\n")
        p("Measured by back-to-back `loadtest mesh --pairs 1 --same-node-fraction 0 --rate 20 "
          "--duration 1ms --drain 1s` runs (route probes every 50 ms, 5 s per run); baseline = "
          "the same command on the healthy region (process start, two TLS handshakes, probes).\n")
        p("| server | baseline ms (3 runs) | restart → cross-node traffic, ms (each round) | median | failed probe runs |")
        p("|---|---:|---:|---:|---:|")
        for s in servers:
            base = [r[0] for r in rows.get((s, "baseline"), [])]
            rest = rows.get((s, "restart"), [])
            ms = [int(r[0]) for r in rest if r[0].isdigit()]
            med = f"{statistics.median(ms):.0f}" if ms else "–"
            p(f"| {s} | {' / '.join(base)} | {' / '.join(r[0] for r in rest)} | {med} | "
              f"{' / '.join(r[1] if len(r) > 1 else '' for r in rest)} |")

    # Mesh set-up waits.
    waits = {}
    for f in glob.glob(os.path.join(d, "*.meshwait")):
        base = os.path.basename(f)[: -len(".meshwait")]
        which = base.rsplit(".", 1)[1] if base.count(".") else base
        for s in servers:
            if base.endswith("." + s):
                waits.setdefault(s, []).append(open(f).read().strip())
    if waits:
        p("\n## Region start: ms from both nodes listening until a 2-pair cross-node run passed\n")
        p("| server | ms, each region |")
        p("|---|---|")
        for s in servers:
            p(f"| {s} | {', '.join(sorted(waits.get(s, []), key=lambda x: (len(x), x)))} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
