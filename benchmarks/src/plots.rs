//! The figures of a run, each as PNG and SVG: latency percentiles against concurrency, tokens/s per
//! model, the TTFT distribution and the share of requests per model.
//!
//! Text is drawn with plotters' `ab_glyph` renderer from a TTF file loaded at run time (no system
//! font lookup): `--font`, else `$POLYLLM_FONT`, else DejaVu Sans from Debian's `fonts-dejavu-core`.
use crate::record::RequestRecord;
use crate::stats::{SummaryRow, ALL};
use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Loads the plots' font ([`polyllm_common::font`]). Returns the file used.
pub fn init_font(explicit: Option<&Path>) -> Result<PathBuf> {
    Ok(polyllm_common::font::init_font(explicit)?)
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn e<T: std::fmt::Display>(x: T) -> anyhow::Error {
    anyhow!("plot: {x}")
}

/// Latency p50/p95/p99 (ms) against concurrency, one set of lines per workload.
fn latency_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, rows: &[SummaryRow], title: &str) -> Result<()> {
    root.fill(&WHITE).map_err(e)?;
    let all: Vec<&SummaryRow> = rows.iter().filter(|r| r.model == ALL).collect();
    let mut workloads: Vec<String> = all.iter().map(|r| r.workload.clone()).collect();
    workloads.dedup();
    let xmax = all.iter().map(|r| r.concurrency).max().unwrap_or(1) as f64;
    let ymax = all.iter().filter_map(|r| r.latency_p99_ms).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5f64..xmax + 0.5, 0f64..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("concurrency")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    let mut k = 0;
    for w in &workloads {
        let mut pts: Vec<&&SummaryRow> = all.iter().filter(|r| &r.workload == w).collect();
        pts.sort_by_key(|r| r.concurrency);
        for (pname, get) in [
            ("p50", (|r: &SummaryRow| r.latency_p50_ms) as fn(&SummaryRow) -> Option<f64>),
            ("p95", |r: &SummaryRow| r.latency_p95_ms),
            ("p99", |r: &SummaryRow| r.latency_p99_ms),
        ] {
            let color = COLORS[k % COLORS.len()];
            k += 1;
            let data: Vec<(f64, f64)> = pts.iter().filter_map(|r| get(r).map(|v| (r.concurrency as f64, v))).collect();
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
                .map_err(e)?
                .label(format!("{w} {pname}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(data.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// A bar chart of one value per category.
fn bar_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    ydesc: &str,
    bars: &[(String, f64)],
) -> Result<()> {
    root.fill(&WHITE).map_err(e)?;
    let n = bars.len().max(1) as i32;
    let ymax = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        // Integer ranges are inclusive in plotters: 0..n-1 is n segments.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(ydesc)
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for (i, (_, v)) in bars.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .margin(40)
                    .style(color.mix(0.85).filled())
                    .data(std::iter::once((i as i32, *v))),
            )
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{v:.1}"),
                (SegmentValue::CenterOf(i as i32), *v + ymax * 0.02),
                ("sans-serif", 15).into_font().color(&BLACK),
            )))
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// A histogram of TTFT (ms) over the successful requests.
fn ttft_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, ttft: &[f64]) -> Result<()> {
    root.fill(&WHITE).map_err(e)?;
    let lo = 0.0;
    let hi = ttft.iter().copied().fold(0.0, f64::max).max(1.0);
    let bins = 20usize;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for &t in ttft {
        let b = (((t - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let ymax = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0f64..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("time to first token (ms)")
        .y_desc("requests")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, c)| {
            let x0 = lo + i as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, *c as f64)], COLORS[0].mix(0.8).filled())
        }))
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Writes one figure as `<name>.png` and `<name>.svg`.
macro_rules! both {
    ($dir:expr, $name:expr, $w:expr, $h:expr, |$root:ident| $body:expr) => {{
        let png = $dir.join(format!("{}.png", $name));
        {
            let $root = BitMapBackend::new(&png, ($w, $h)).into_drawing_area();
            $body?;
        }
        let svg = $dir.join(format!("{}.svg", $name));
        {
            let $root = SVGBackend::new(&svg, ($w, $h)).into_drawing_area();
            $body?;
        }
        vec![png, svg]
    }};
}

/// Draws every figure of a run into `dir`; returns the files written.
pub fn draw_all(
    dir: &Path,
    records: &[RequestRecord],
    rows: &[SummaryRow],
    label: &str,
    font: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    init_font(font)?;
    if records.is_empty() {
        bail!("no request to plot");
    }
    let mut files = Vec::new();
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();

    files.extend(both!(dir, "latency_vs_concurrency", 900, 560, |root| latency_chart(
        &root,
        rows,
        &format!("Latency percentiles vs concurrency ({label})")
    )));

    let mut tps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in &ok {
        if let Some(t) = r.tokens_per_second {
            tps.entry(r.model.clone()).or_default().push(t);
        }
    }
    let tps_bars: Vec<(String, f64)> =
        tps.into_iter().map(|(m, v)| (m, crate::stats::mean(&v).unwrap_or(0.0))).collect();
    files.extend(both!(dir, "tokens_per_second_by_model", 900, 560, |root| bar_chart(
        &root,
        &format!("Mean decode tokens/s per model ({label})"),
        "tokens/s (client-side)",
        &tps_bars
    )));

    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
    files.extend(both!(dir, "ttft_distribution", 900, 560, |root| ttft_chart(
        &root,
        &format!("TTFT distribution, {} ok requests ({label})", ttft.len()),
        &ttft
    )));

    let mut share: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        let m = if r.model.is_empty() { "(none)".to_string() } else { r.model.clone() };
        *share.entry(m).or_default() += 1;
    }
    let n = records.len() as f64;
    let share_bars: Vec<(String, f64)> = share.into_iter().map(|(m, c)| (m, 100.0 * c as f64 / n)).collect();
    files.extend(both!(dir, "model_share", 900, 560, |root| bar_chart(
        &root,
        &format!("Share of requests per model, % of {} ({label})", records.len()),
        "% of requests",
        &share_bars
    )));
    Ok(files)
}
