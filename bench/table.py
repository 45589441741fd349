#!/usr/bin/env python3
"""Builds the side-by-side table from a bench/run.sh results directory.

Usage: table.py RESULTS_DIR GO_VERSION OUR_COMMIT COMMAND
Each case NAME has NAME.go.json and NAME.ours.json (loadtest reports) and NAME.{go,ours}.cpu
("ticks_before ticks_after CLK_TCK": the server's utime + stime around the loadtest). Ratios are
ours / Go; the last column says which direction is better. ceiling-SIZE.fwd.{json,cpu} are the
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


def main():
    d, go_version, commit, command = sys.argv[1:5]
    names = sorted({f.rsplit(".", 2)[0] for f in os.listdir(d) if f.endswith(".json")})
    ceil_names = sorted((n for n in names if n.startswith("ceiling-")), key=size_of)
    names = [n for n in names if not n.startswith("ceiling-")]
    ceilings = {}
    for n in ceil_names:
        r = load(d, n, "fwd")
        if r:
            ceilings[size_of(n)] = r.get("traffic", {}).get("bits_per_sec", 0) / 1e6
    print(f"Tailscale derper {go_version} vs ours ({commit}), loopback, same run.")
    print(f"Command: `{command}`; reports in `{os.path.relpath(d)}`.\n")
    print("| case | metric | Tailscale derper | ours | ours / Go | better |")
    print("|---|---|---:|---:|---:|---|")
    for name in names:
        go, ours = load(d, name, "go"), load(d, name, "ours")
        if go is None or ours is None:
            print(f"| {name} | (missing {'go' if go is None else 'ours'}) | | | | |")
            continue
        go_rows = metrics(name, go) + extra_rows(d, name, "go", go, ceilings)
        our_rows = metrics(name, ours) + extra_rows(d, name, "ours", ours, ceilings)
        for (label, gv, hib), (_, ov, _) in zip(go_rows, our_rows):
            ratio = f"{ov / gv:.2f}" if gv else "n/a"
            print(f"| {name} | {label} | {fmt(gv)} | {fmt(ov)} | {ratio} | {'higher' if hib else 'lower'} |")

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
