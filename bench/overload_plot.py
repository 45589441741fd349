#!/usr/bin/env python3
"""Draws delivered vs offered packets/s (1 300 B, plain) for every server of a bench/run.sh
results directory, as an SVG next to its table. Points: the open-loop cases at fixed rates
(latency-*, sweep-*) and the unbounded one (overload-1300-plain), each at the rate the client
actually offered; a dashed line marks our closed-loop peak and 95 % of it (issue 12's overload
goal), and the diagonal is "everything offered was delivered". No plotting library needed.

Usage: overload_plot.py RESULTS_DIR OUT.svg
"""
import json
import os
import sys

COLORS = {"ours": "#1f77b4"}
GO_COLORS = ["#d62728", "#ff7f0e", "#2ca02c"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def points(d):
    """{server: [(offered, delivered), ...]} sorted by offered."""
    out = {}
    for f in sorted(os.listdir(d)):
        if not f.endswith(".json"):
            continue
        name, server, _ = f.rsplit(".", 2)
        if not (name.startswith(("latency-", "sweep-1300-")) or name == "overload-1300-plain"):
            continue
        r = load(os.path.join(d, f))
        secs = r.get("measured_secs", 0) if r else 0
        if not secs:
            continue
        t = r.get("traffic", {})
        out.setdefault(server, []).append((t.get("sent", 0) / secs, t.get("packets_per_sec", 0)))
    return {s: sorted(p) for s, p in out.items()}


def main(d, svg_path):
    pts = points(d)
    if not pts:
        sys.exit("no open-loop cases in " + d)
    peak_report = load(os.path.join(d, "tput-1300-plain.ours.json"))
    peak = peak_report.get("traffic", {}).get("packets_per_sec", 0) if peak_report else 0
    xmax = max(x for p in pts.values() for x, _ in p) * 1.05 or 1
    ymax = max([y for p in pts.values() for _, y in p] + [peak]) * 1.1 or 1
    w, h, pad = 760, 440, 70

    def xy(x, y):
        return pad + (w - 2 * pad) * x / xmax, h - pad - (h - 2 * pad) * y / ymax

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             'font-family="sans-serif" font-size="12">',
             f'<text x="{pad}" y="20">Delivered vs offered packets/s, 1 300 B plain, open loop '
             '(bench/run.sh)</text>']
    # Axes with ticks.
    parts.append(f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>')
    parts.append(f'<line x1="{pad}" y1="{pad - 20}" x2="{pad}" y2="{h - pad}" stroke="#999"/>')
    for i in range(6):
        x, _ = xy(xmax * i / 5, 0)
        _, y = xy(0, ymax * i / 5)
        parts.append(f'<text x="{x:.0f}" y="{h - pad + 16}" text-anchor="middle">'
                     f'{xmax * i / 5 / 1000:.0f}k</text>')
        parts.append(f'<text x="{pad - 6}" y="{y + 4:.0f}" text-anchor="end">'
                     f'{ymax * i / 5 / 1000:.0f}k</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">offered packets/s '
                 '(what the client sent)</text>')
    parts.append(f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" '
                 'text-anchor="middle">delivered packets/s</text>')
    # Diagonal: delivered = offered.
    x0, y0 = xy(0, 0)
    d = min(xmax, ymax)
    x1, y1 = xy(d, d)
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#ccc" '
                 'stroke-dasharray="2 4"/>')
    if peak:
        for frac, label in ((1.0, "our closed-loop peak"), (0.95, "95 % of it")):
            _, y = xy(0, peak * frac)
            parts.append(f'<line x1="{pad}" y1="{y:.1f}" x2="{w - pad}" y2="{y:.1f}" '
                         'stroke="#1f77b4" stroke-opacity="0.4" stroke-dasharray="6 4"/>')
            parts.append(f'<text x="{w - pad - 4}" y="{y - 4:.1f}" text-anchor="end" '
                         f'fill="#1f77b4">{label}</text>')
    servers = ["ours"] + sorted(s for s in pts if s != "ours")
    for i, server in enumerate(s for s in servers if s in pts):
        color = COLORS.get(server) or GO_COLORS[(i - 1) % len(GO_COLORS)]
        coords = [xy(x, y) for x, y in pts[server]]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>'
                     for x, y in coords)
        label = server.replace("go-", "Tailscale ").replace("_", ".")
        parts.append(f'<rect x="{pad + 10}" y="{pad - 12 + 18 * i}" width="12" height="3" '
                     f'fill="{color}"/><text x="{pad + 28}" y="{pad - 6 + 18 * i}">{label}</text>')
    parts.append("</svg>")
    with open(svg_path, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
