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


def cpu_secs(d, name, which):
    try:
        with open(os.path.join(d, f"{name}.{which}.cpu")) as f:
            before, after, hz = (float(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return (after - before) / hz if hz else None


def is_tput(name):
    return name.startswith("tput") or name.startswith("overload")


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
        ]
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


if __name__ == "__main__":
    main()
