//! PNG plots of a [`Report`] (plotters, bitmap backend):
//!
//! - `comparison.png`: median Mpps per scenario and peer (bars);
//! - `scale_flows.png`: l3 Mpps against the number of flows (log x);
//! - `scale_services.png`: dnat Mpps against the number of Services;
//! - `scale_connections.png`: dnat Mpps against client connections.
//!
//! Text needs a TrueType font: we register DejaVu Sans (Debian
//! `fonts-dejavu-core`, which `scripts/bench.sh` installs). Without it the
//! plots are skipped with a message; the JSON and table are unaffected.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::report::Report;
use crate::runner::{Outcome, PeerKind, Status};
use crate::scenario::Kind;

/// Where we look for a font.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn font_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let bytes = FONTS
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    format!(
                        "plots skipped: no font found (looked for {}; install fonts-dejavu-core)",
                        FONTS.join(", ")
                    )
                })?;
            // The font lives for the whole process, as plotters requires.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
                "plots skipped: the font file is not a valid TrueType font".to_string()
            })
        })
        .clone()
}

fn color(p: PeerKind) -> RGBColor {
    match p {
        PeerKind::Sluiced => RGBColor(0, 114, 178),
        PeerKind::OvsDpdk => RGBColor(213, 94, 0),
        PeerKind::TestpmdIo => RGBColor(0, 158, 115),
        PeerKind::TestpmdMacswap => RGBColor(120, 120, 120),
    }
}

fn ok_median(o: &Outcome) -> Option<f64> {
    (o.status == Status::Ok).then_some(o.mpps?.median)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws the chart's legend (the same box on every chart) and writes the
/// image.
fn finish<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    root: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
) -> DrawResult {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn comparison(report: &Report, path: &Path) -> DrawResult {
    let mut labels: Vec<String> = Vec::new();
    for o in &report.comparison {
        let l = o.scenario.label();
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    let peers: Vec<PeerKind> = PeerKind::ALL
        .into_iter()
        .filter(|p| report.comparison.iter().any(|o| o.peer == *p))
        .collect();
    let ymax = report
        .comparison
        .iter()
        .filter_map(ok_median)
        .fold(0.1f64, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = labels.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Mpps by scenario (one forwarding core, 64-byte frames)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)?;
    let lbl = labels.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 1e-6 {
                lbl.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("Mpps (median of runs)")
        .draw()?;
    let w = 0.8 / peers.len().max(1) as f64;
    for (pi, &p) in peers.iter().enumerate() {
        let bars: Vec<Rectangle<(f64, f64)>> = labels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let o = report
                    .comparison
                    .iter()
                    .find(|o| o.peer == p && &o.scenario.label() == l)?;
                let v = ok_median(o)?;
                let x0 = i as f64 + 0.1 + pi as f64 * w;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + w * 0.9, v)],
                    color(p).filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(p.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(p).filled()));
    }
    finish(&mut chart, &root)
}

fn curve(
    report: &Report,
    path: &Path,
    filter: fn(&Outcome) -> bool,
    x_of: fn(&Outcome) -> u32,
    title: &str,
    x_desc: &str,
) -> Result<bool, Box<dyn std::error::Error>> {
    let points: Vec<(PeerKind, f64, f64)> = report
        .scale
        .iter()
        .filter(|o| filter(o))
        .filter_map(|o| Some((o.peer, x_of(o) as f64, ok_median(o)?)))
        .collect();
    if points.is_empty() {
        return Ok(false);
    }
    let xmax = points.iter().map(|p| p.1).fold(10.0, f64::max) * 2.0;
    let ymax = points.iter().map(|p| p.2).fold(0.1, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..xmax).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("Mpps (median of runs)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for p in PeerKind::ALL {
        let mut series: Vec<(f64, f64)> = points
            .iter()
            .filter(|q| q.0 == p)
            .map(|q| (q.1, q.2))
            .collect();
        if series.is_empty() {
            continue;
        }
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = color(p);
        chart
            .draw_series(LineSeries::new(series.clone(), c.stroke_width(2)))?
            .label(p.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], c.stroke_width(2)));
        chart.draw_series(
            series
                .into_iter()
                .map(|(x, y)| Circle::new((x, y), 4, c.filled())),
        )?;
    }
    finish(&mut chart, &root)?;
    Ok(true)
}

/// Draws every plot the report has data for into `dir`; returns one
/// message per plot (written, skipped and why).
pub fn draw_all(report: &Report, dir: &Path) -> Vec<String> {
    if let Err(e) = font_ready() {
        return vec![e];
    }
    let mut msgs = Vec::new();
    let p = dir.join("comparison.png");
    msgs.push(match comparison(report, &p) {
        Ok(()) => format!("wrote {}", p.display()),
        Err(e) => format!("could not draw {}: {e}", p.display()),
    });
    type Curve = (
        &'static str,
        fn(&Outcome) -> bool,
        fn(&Outcome) -> u32,
        &'static str,
        &'static str,
    );
    let curves: [Curve; 3] = [
        (
            "scale_flows.png",
            |o| o.scenario.kind == Kind::L3,
            |o| o.scenario.flows,
            "l3 (10k routes): Mpps vs distinct flows",
            "distinct flows (log)",
        ),
        (
            "scale_services.png",
            |o| o.scenario.kind == Kind::Dnat && o.scenario.flows == 1_000,
            |o| o.scenario.services,
            "dnat (1k client connections): Mpps vs Services",
            "Services (log)",
        ),
        (
            "scale_connections.png",
            |o| o.scenario.kind == Kind::Dnat && o.scenario.services == 10,
            |o| o.scenario.flows,
            "dnat (10 Services): Mpps vs client connections",
            "client connections (log)",
        ),
    ];
    for (name, filter, x_of, title, x_desc) in curves {
        let p = dir.join(name);
        msgs.push(match curve(report, &p, filter, x_of, title, x_desc) {
            Ok(true) => format!("wrote {}", p.display()),
            Ok(false) => format!("{name} skipped: no measured point"),
            Err(e) => format!("could not draw {}: {e}", p.display()),
        });
    }
    msgs
}
