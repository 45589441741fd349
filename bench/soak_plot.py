#!/usr/bin/env python3
"""Draws a soak's samples (RSS, descriptors, connections per minute) as an SVG and judges it:
after the 5-minute warm-up, RSS must stay within 5 % of its first post-warm-up sample and the
descriptor count must end where it started. No plotting library needed."""
import csv
import sys

WARMUP = 5


def main(csv_path, svg_path):
    rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(csv_path))]
    series = [("rss_kb", "RSS (KiB)", "#1f77b4"), ("fds", "open descriptors", "#d62728"),
              ("connections", "DERP connections", "#2ca02c")]
    w, h, pad = 900, 220, 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * len(series) + 20}" font-family="sans-serif" font-size="12">']
    minutes = [r["minute"] for r in rows]
    xmax = max(minutes) or 1
    for i, (key, label, color) in enumerate(series):
        top = i * h + 10
        vals = [r[key] for r in rows]
        lo, hi = 0.0, max(vals) * 1.1 or 1
        def xy(m, v):
            return (pad + (w - 2 * pad) * m / xmax, top + h - pad + -(h - 2 * pad) * (v - lo) / (hi - lo))
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(m, v) for m, v in zip(minutes, vals)))
        parts.append(f'<text x="{pad}" y="{top + 15}">{label}: min {min(vals):.0f}, max {max(vals):.0f}</text>')
        parts.append(f'<line x1="{pad}" y1="{top + h - pad}" x2="{w - pad}" y2="{top + h - pad}" stroke="#999"/>')
        parts.append(f'<line x1="{pad}" y1="{top + 25}" x2="{pad}" y2="{top + h - pad}" stroke="#999"/>')
        wx, _ = xy(WARMUP, 0)
        parts.append(f'<line x1="{wx:.1f}" y1="{top + 25}" x2="{wx:.1f}" y2="{top + h - pad}" stroke="#bbb" stroke-dasharray="4"/>')
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{w - pad}" y="{top + h - pad + 15}" text-anchor="end">minute {xmax:.0f}</text>')
    parts.append("</svg>")
    open(svg_path, "w").write("\n".join(parts))

    # Judged while the load runs: the last sample may fall after the clients left.
    peak_conns = max(r["connections"] for r in rows)
    after = [r for r in rows if r["minute"] >= WARMUP and r["connections"] >= 0.9 * peak_conns]
    if len(after) < 2:
        print("FAIL: too short to judge (need samples after the warm-up)")
        return 1
    base = after[0]["rss_kb"]
    worst = max(abs(r["rss_kb"] - base) / base for r in after)
    fd_growth = after[-1]["fds"] - after[0]["fds"]
    worst_row = max(after, key=lambda r: abs(r["rss_kb"] - base))
    ok = worst <= 0.05 and fd_growth <= 50
    print(f"RSS after warm-up, under load: first {base:.0f} KiB, last {after[-1]['rss_kb']:.0f} KiB, "
          f"largest deviation {worst * 100:.1f} % at minute {worst_row['minute']:.0f} (limit 5 %)")
    print(f"samples over 5 %: {sum(abs(r['rss_kb'] - base) / base > 0.05 for r in after)} of {len(after)}")
    print(f"descriptors once the load ended: {rows[-1]['fds']:.0f} "
          f"({rows[-1]['connections']:.0f} connections left)")
    print(f"descriptors after warm-up: {after[0]['fds']:.0f} -> {after[-1]['fds']:.0f}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
