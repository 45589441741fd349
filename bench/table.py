#!/usr/bin/env python3
"""Builds the side-by-side table from a bench/run.sh results directory.

Usage: table.py RESULTS_DIR GO_VERSION OUR_COMMIT COMMAND
Each case NAME has NAME.go.json and NAME.ours.json (loadtest reports). Ratios are ours / Go;
the last column says which direction is better.
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
    print(f"Tailscale derper {go_version} vs ours ({commit}), loopback, same run.")
    print(f"Command: `{command}`; reports in `{os.path.relpath(d)}`.\n")
    print("| case | metric | Tailscale derper | ours | ours / Go | better |")
    print("|---|---|---:|---:|---:|---|")
    for name in names:
        go, ours = load(d, name, "go"), load(d, name, "ours")
        if go is None or ours is None:
            print(f"| {name} | (missing {'go' if go is None else 'ours'}) | | | | |")
            continue
        for (label, gv, hib), (_, ov, _) in zip(metrics(name, go), metrics(name, ours)):
            ratio = f"{ov / gv:.2f}" if gv else "n/a"
            print(f"| {name} | {label} | {fmt(gv)} | {fmt(ov)} | {ratio} | {'higher' if hib else 'lower'} |")


if __name__ == "__main__":
    main()
