#!/usr/bin/env python3
"""Builds the side-by-side table from a bench/run.sh results directory.

Usage: table.py RESULTS_DIR OUR_COMMIT COMMAND LABEL=VERSION [LABEL=VERSION...]
Each case NAME has NAME.ours.json and NAME.LABEL.json per Go release (loadtest reports; LABEL
is go-v1_104_7 for v1.104.7) and NAME.<server>.cpu ("ticks_before ticks_after CLK_TCK": the
server's utime + stime around the loadtest). Ratios are ours / each Go release, in the order
given; the last column says which direction is better ("info": neither). ceiling-SIZE.fwd.{json,cpu} are the
bare TCP forwarder runs (loadtest/examples/tcp_forwarder.rs): throughput cases get a "% of
ceiling" row (Mbit/s over the forwarder's Mbit/s at the same write size; TLS cases against the
plain-TCP ceiling), and the ceiling runs get their own table.
"""
import json
import os
import sys


def load(d, name, which):
    try:
        with open(os.path.join(d, f"{name}.{which}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cpu_secs(d, name, which, kind="cpu"):
    """Server CPU seconds of a case (kind "clientcpu": the load client's)."""
    try:
        with open(os.path.join(d, f"{name}.{which}.{kind}")) as f:
            before, after, hz = (float(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return (after - before) / hz if hz else None


def is_tput(name):
    return name.startswith(("tput", "overload", "sweep"))


def offered_pps(r):
    """Packets/s the client actually sent (open loop may fall short of the asked rate)."""
    secs = r.get("measured_secs", 0)
    return r.get("traffic", {}).get("sent", 0) / secs if secs else 0.0


def fairness(r):
    """(min/mean, Jain index) of per-flow deliveries, or None (see loadtest's Fairness)."""
    counts = r.get("extra", {}).get("flow_received")
    if not counts:
        return None
    n, total = len(counts), sum(counts)
    if not total:
        return (0.0, 0.0)
    mean = total / n
    return (min(counts) / mean, total * total / (n * sum(c * c for c in counts)))


def fairness_rows(r):
    f = fairness(r)
    if f is None:
        return []
    return [("slowest pair / mean", f[0], True), ("Jain fairness index", f[1], True)]


def size_of(name):
    """Write/packet size of a throughput case: tput-1300-plain -> 1300."""
    for part in name.split("-"):
        if part.isdigit():
            return int(part)
    return None


def extra_rows(d, name, which, r, ceilings):
    """Rows from outside the loadtest report: ceiling share and server CPU per GB."""
    if not is_tput(name):
        return []
    rows = []
    ceil = ceilings.get(size_of(name))
    mbit = r.get("traffic", {}).get("bits_per_sec", 0) / 1e6
    if ceil:
        rows.append(("% of ceiling Mbit/s", 100 * mbit / ceil, True))
    cpu = cpu_secs(d, name, which)
    gb = r.get("traffic", {}).get("bytes_received", 0) / 1e9
    rows.append(("server CPU s/GB", cpu / gb if cpu is not None and gb else 0.0, False))
    client = cpu_secs(d, name, which, "clientcpu")
    if client is not None and gb:
        rows.append(("load client CPU s/GB", client / gb, None))
    return rows


def metrics(name, r):
    """(label, value, higher_is_better) rows for one report."""
    t, lat, ex = r.get("traffic", {}), r.get("latency_us", {}), r.get("extra", {})
    if name.startswith("tput") or name.startswith("overload"):
        return [
            ("packets/s", t.get("packets_per_sec", 0), True),
            ("Mbit/s", t.get("bits_per_sec", 0) / 1e6, True),
            ("loss %", 100 * t.get("loss_ratio", 0), False),
            ("p50 µs", lat.get("p50", 0), False),
            ("p99 µs", lat.get("p99", 0), False),
        ] + fairness_rows(r)
    if name.startswith("sweep"):
        return [
            ("offered packets/s", offered_pps(r), None),
            ("delivered packets/s", t.get("packets_per_sec", 0), True),
            ("loss %", 100 * t.get("loss_ratio", 0), False),
            ("p50 µs", lat.get("p50", 0), False),
            ("p99 µs", lat.get("p99", 0), False),
        ] + fairness_rows(r)
    if name.startswith("latency"):
        return [
            ("packets/s", t.get("packets_per_sec", 0), True),
            ("p50 µs", lat.get("p50", 0), False),
            ("p99 µs", lat.get("p99", 0), False),
            ("loss %", 100 * t.get("loss_ratio", 0), False),
        ]
    if name.startswith("idle"):
        return [
            ("held", ex.get("held", 0), True),
            ("server bytes/conn", ex.get("server_bytes_per_conn", 0), False),
        ]
    if name.startswith("burst"):
        return [
            ("sent", t.get("sent", 0), None),
            ("received", t.get("received", 0), True),
            ("loss %", 100 * t.get("loss_ratio", 0), False),
            ("worst burst received", ex.get("worst_burst_received", 0), True),
            ("bursts complete", ex.get("bursts_complete", 0), True),
            ("p99 µs", lat.get("p99", 0), False),
        ]
    if name.startswith("flood"):
        return [
            ("canary sent", t.get("sent", 0), None),
            ("canary loss %", 100 * t.get("loss_ratio", 0), False),
            ("canary p50 µs", lat.get("p50", 0), False),
            ("canary p99 µs", lat.get("p99", 0), False),
            ("canary max µs", lat.get("max", 0), False),
            ("flood frames/s written", ex.get("flood_frames_per_sec", 0.0), None),
            ("flooder reconnects", ex.get("flooder_reconnects", 0), None),
        ]
    if name.startswith("storm"):
        return [
            ("handshakes/s", ex.get("handshakes_per_sec", 0), True),
            ("connect p99 µs", lat.get("p99", 0), False),
            ("failed", r.get("peers", {}).get("failed", 0), False),
        ]
    return []


def fmt(v):
    if isinstance(v, float):
        if abs(v) < 2:
            return f"{v:.3f}"  # fairness figures and small losses need the digits
        return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}"


def version_of(label):
    """go-v1_104_7 -> v1.104.7"""
    return label.removeprefix("go-").replace("_", ".")


def main():
    d, commit, command = sys.argv[1:4]
    gos = [a.split("=", 1) for a in sys.argv[4:]]
    servers = ["ours"] + [label for label, _ in gos]
    names = sorted({f.rsplit(".", 2)[0] for f in os.listdir(d) if f.endswith(".json")})
    ceil_names = sorted((n for n in names if n.startswith("ceiling-")), key=size_of)
    names = [n for n in names if not n.startswith("ceiling-")]
    ceilings = {}
    for n in ceil_names:
        r = load(d, n, "fwd")
        if r:
            ceilings[size_of(n)] = r.get("traffic", {}).get("bits_per_sec", 0) / 1e6
    releases = ", ".join(f"{version_of(label)} (`-version`: {v})" for label, v in gos)
    print(f"Ours ({commit}) vs Tailscale derper {releases}; loopback, same run, fresh server "
          "per case, order rotating.")
    print(f"Command: `{command}`; reports in `{os.path.relpath(d)}`.\n")
    head = ["case", "metric", "ours"] + [f"Tailscale {version_of(l)}" for l, _ in gos]
    head += [f"ours / {version_of(l)}" for l, _ in gos] + ["better"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * (2 * len(gos) + 1) + "---|")
    for name in names:
        reports = [load(d, name, s) for s in servers]
        missing = [s for s, r in zip(servers, reports) if r is None]
        if missing:
            print(f"| {name} | (missing {', '.join(missing)}) |" + " |" * (len(head) - 2))
            continue
        rows = [metrics(name, r) + extra_rows(d, name, s, r, ceilings)
                for s, r in zip(servers, reports)]
        for i, (label, ov, hib) in enumerate(rows[0]):
            vals = [ov] + [rows[k][i][1] for k in range(1, len(servers))]
            ratios = [f"{ov / gv:.2f}" if gv else "n/a" for gv in vals[1:]]
            better = "info" if hib is None else "higher" if hib else "lower"
            cells = [name, label] + [fmt(v) for v in vals] + ratios + [better]
            print("| " + " | ".join(cells) + " |")

    if gos:
        print_goals(d, gos[0][0], ceilings)
    stun = os.path.join(d, "stun.md")
    if os.path.exists(stun):
        print("\n" + open(stun).read().replace("## STUN", "STUN", 1))

    if ceil_names:
        print("\nPhysical ceiling: bare TCP forwarder on this box, same run "
              "(`loadtest/examples/tcp_forwarder.rs`: Rust/tokio, `copy_bidirectional`, no DERP "
              "framing or crypto; same pairs, every connection writing as fast as it can).\n")
        print("| case | write size B | writes/s | Mbit/s | forwarder CPU s/GB |")
        print("|---|---:|---:|---:|---:|")
        for n in ceil_names:
            r = load(d, n, "fwd")
            if r is None:
                print(f"| {n} | (missing) | | | |")
                continue
            t = r.get("traffic", {})
            cpu = cpu_secs(d, n, "fwd")
            gb = t.get("bytes_total", t.get("bytes_received", 0)) / 1e9
            cpu_gb = fmt(cpu / gb) if cpu is not None and gb else "n/a"
            print(f"| {n} | {fmt(size_of(n))} | {fmt(t.get('packets_per_sec', 0))} | "
                  f"{fmt(t.get('bits_per_sec', 0) / 1e6)} | {cpu_gb} |")


def goal_rows(d, new, ceilings):
    """(goal, measured text, met) for issue 12's goals; `new` is the newest Go release's label.
    A goal whose cases were not run is left out."""
    rows = []

    def pps(name, which):
        r = load(d, name, which)
        return r.get("traffic", {}).get("packets_per_sec", 0) if r else None

    def ratio_goal(text, name, want, metric=lambda r: r.get("traffic", {}).get("packets_per_sec", 0)):
        o, g = load(d, name, "ours"), load(d, name, new)
        if o and g and metric(g):
            v = metric(o) / metric(g)
            rows.append((text, f"{v:.2f}×", v >= want))

    peak = pps("tput-1300-plain", "ours")
    for pct in (150, 300):
        r = load(d, f"sweep-1300-{pct}", "ours")
        if r and peak:
            v = r["traffic"]["packets_per_sec"] / peak
            f = fairness(r)
            spread = f", slowest pair {f[0]:.2f} of mean, Jain {f[1]:.3f}" if f else ""
            rows.append((f"open loop at {pct} % of our peak: delivered ≥ 95 % of peak",
                         f"{100 * v:.1f} % (offered {offered_pps(r):,.0f}/s{spread})", v >= 0.95))
    ratio_goal("peak packets/s, 1 300 B plain ≥ 3× derper", "tput-1300-plain", 3.0)
    # The load client shares this box's cores: with client cost c and server cost s (CPU s/GB),
    # throughput is at most cores / (c + s), so no server can beat derper by more than
    # (c + s_derper) / c here, however cheap it is.
    o, g = load(d, "tput-1300-plain", "ours"), load(d, "tput-1300-plain", new)
    if o and g:
        gb_o, gb_g = o["traffic"]["bytes_received"] / 1e9, g["traffic"]["bytes_received"] / 1e9
        c = cpu_secs(d, "tput-1300-plain", "ours", "clientcpu")
        sg = cpu_secs(d, "tput-1300-plain", new)
        if c and sg and gb_o and gb_g:
            bound = (c / gb_o + sg / gb_g) / (c / gb_o)
            rows.append(("(bound on this box for the row above: a zero-cost server, same client)",
                         f"≤ {bound:.2f}×", None))
    ratio_goal("peak packets/s, 100 B plain ≥ 2× derper", "tput-100-plain", 2.0)
    ratio_goal("peak packets/s, 1 300 B TLS ≥ 2.5× derper", "tput-1300-tls", 2.5)
    o, g = load(d, "tput-1300-plain", "ours"), load(d, "tput-1300-plain", new)
    if o and g:
        co, cg = cpu_secs(d, "tput-1300-plain", "ours"), cpu_secs(d, "tput-1300-plain", new)
        bo, bg = o["traffic"]["bytes_received"] / 1e9, g["traffic"]["bytes_received"] / 1e9
        if co is not None and cg and bo and bg:
            v = (co / bo) / (cg / bg)
            rows.append(("server CPU s per GB ≤ ⅕ of derper's (1 300 B plain peak)", f"{v:.2f}×", v <= 0.2))
        ceil = ceilings.get(1300)
        if ceil:
            v = o["traffic"]["bits_per_sec"] / 1e6 / ceil
            rows.append(("≥ 70 % of the bare TCP forwarder (1 300 B)", f"{100 * v:.0f} %", v >= 0.7))
        p50 = o["latency_us"]["p50"] / g["latency_us"]["p50"] if g["latency_us"]["p50"] else 0
        p99 = o["latency_us"]["p99"] / g["latency_us"]["p99"] if g["latency_us"]["p99"] else 0
        rows.append(("closed-loop peak: p50 ≤ derper's, p99 lower", f"p50 {p50:.2f}×, p99 {p99:.2f}×",
                     p50 <= 1.0 and p99 < 1.0))
    hs = lambda r: r.get("extra", {}).get("handshakes_per_sec", 0)
    ratio_goal("handshakes/s plain ≥ 2× derper", "storm-plain", 2.0, hs)
    ratio_goal("handshakes/s TLS ≥ 2× derper", "storm-tls", 2.0, hs)
    try:
        for line in open(os.path.join(d, "stun.md")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0] == "ours-derper" and len(cells) >= 5:
                v = float(cells[4].rstrip("x"))
                rows.append(("STUN responses per server CPU second ≥ 2× derper", f"{v:.2f}×", v >= 2.0))
    except (OSError, ValueError):
        pass
    r = load(d, "latency-50", "ours")
    if r:
        v = 100 * r["traffic"]["loss_ratio"]
        rows.append(("loss below saturation (50 % of derper's peak) < 0.1 %", f"{v:.3f} %", v < 0.1))
    return rows


def print_goals(d, new, ceilings):
    rows = goal_rows(d, new, ceilings)
    if not rows:
        return
    print(f"\nGoals (issue 12), ours against {version_of(new)} in this run:\n")
    print("| goal | measured | met |")
    print("|---|---:|---|")
    for goal, measured, met in rows:
        verdict = "" if met is None else "yes" if met else "**no**"
        print(f"| {goal} | {measured} | {verdict} |")


if __name__ == "__main__":
    main()
