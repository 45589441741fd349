//! A latency histogram picture (SVG), written next to the JSON report.
//!
//! Log-scale x axis (microseconds, one bar per histogram bucket), linear y axis (share of
//! packets), with p50/p99 marked. Hand-written SVG: no plotting dependency for one chart.

use std::fmt::Write as _;

use crate::report::Report;
use crate::stats::Histogram;

const W: f64 = 800.0;
const H: f64 = 320.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// Renders the report's latency histogram; `None` when it holds no samples.
pub fn latency_svg(report: &Report) -> Option<String> {
    let h = &report.latency_us.histogram;
    if h.count == 0 {
        return None;
    }
    let lo = (h.min.max(1) as f64).log10().floor();
    let hi = (h.max.max(2) as f64).log10().ceil().max(lo + 1.0);
    let x = |v: f64| LEFT + (v.max(1.0).log10() - lo) / (hi - lo) * (W - LEFT - RIGHT);
    let peak = h.buckets.values().copied().max().unwrap_or(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14">{} latency, {} — {} samples, p50 {} µs, p99 {} µs</text>"#,
        esc(&report.scenario),
        esc(&report.target),
        h.count,
        report.latency_us.p50,
        report.latency_us.p99
    );
    for (b, c) in &h.buckets {
        let (l, u) = Histogram::bucket_bounds(*b);
        let (x0, x1) = (x(l as f64), x(u as f64 + 1.0));
        let bh = (*c as f64 / peak) * (H - TOP - BOTTOM);
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#4a7bd0"/>"##,
            H - BOTTOM - bh,
            (x1 - x0).max(1.0)
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>"#,
        H - BOTTOM,
        W - RIGHT
    );
    let mut d = lo;
    while d <= hi {
        let v = 10f64.powf(d);
        let label = match v {
            v if v >= 1e6 => format!("{} s", v / 1e6),
            v if v >= 1e3 => format!("{} ms", v / 1e3),
            v => format!("{v} µs"),
        };
        let _ = write!(
            s,
            r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="black"/><text x="{0:.1}" y="{3}" text-anchor="middle">{label}</text>"#,
            x(v),
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 20.0
        );
        d += 1.0;
    }
    for (name, v, color) in [
        ("p50", report.latency_us.p50, "#2a2"),
        ("p99", report.latency_us.p99, "#d22"),
    ] {
        let px = x(v as f64);
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{0}" stroke="{color}" stroke-dasharray="4 3"/><text x="{px:.1}" y="{1}" fill="{color}" text-anchor="middle">{name}</text>"#,
            H - BOTTOM,
            TOP - 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{0}" y="{1}" text-anchor="middle">one-way latency (log scale)</text></svg>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 8.0
    );
    Some(s)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_and_markers() {
        let mut r = Report::new("pairs", "http://a<b>/derp");
        for v in [80, 100, 120, 150, 2_000, 30_000] {
            r.latency_us.histogram.record(v);
        }
        r.finalize();
        let svg = latency_svg(&r).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a&lt;b&gt;"));
        assert!(svg.matches("fill=\"#4a7bd0\"").count() >= 5);
        assert!(svg.contains(">p99<"));
        assert!(latency_svg(&Report::new("idle", "x")).is_none());
    }
}
