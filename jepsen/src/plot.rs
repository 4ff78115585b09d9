//! The run's picture (`latency.svg`): every call's latency over the run's time (ok in blue,
//! unknown in orange, refused in grey, on a log scale), the acknowledged calls per second below
//! it, and every fault's window shaded on both, with its name.

use std::path::Path;

use plotters::prelude::*;

use crate::history::{Op, Outcome};
use crate::nemesis::Entry;

/// A fault window: from its start to its end on the timeline (or the run's end).
fn windows(timeline: &[Entry], end_ms: u64) -> Vec<(u64, u64, String)> {
    let mut open: Vec<(u64, String, Vec<u64>)> = Vec::new();
    let mut windows = Vec::new();
    for entry in timeline {
        match entry.phase {
            "start" => open.push((entry.time_ms, entry.fault.clone(), entry.nodes.clone())),
            "end" => {
                if let Some(i) = open.iter().position(|(_, f, n)| *f == entry.fault && *n == entry.nodes) {
                    let (start, fault, nodes) = open.remove(i);
                    windows.push((start, entry.time_ms, format!("{fault} {nodes:?}")));
                }
            }
            _ => {}
        }
    }
    windows.extend(open.into_iter().map(|(start, fault, nodes)| (start, end_ms, format!("{fault} {nodes:?}"))));
    windows
}

pub fn draw(path: &Path, ops: &[Op], timeline: &[Entry], title: &str) -> anyhow::Result<()> {
    let end_ms = ops.iter().map(|op| op.complete_ms).chain(timeline.iter().map(|e| e.time_ms)).max().unwrap_or(1);
    let end_s = end_ms as f64 / 1000.0 + 1.0;
    let root = SVGBackend::new(path, (1400, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (upper, lower) = root.split_vertically(520);
    let shade = RGBColor(255, 200, 200).mix(0.45);

    let max_latency = ops.iter().map(|op| op.complete_ms.saturating_sub(op.invoke_ms)).max().unwrap_or(1).max(10);
    let mut latency = ChartBuilder::on(&upper)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end_s, (1f64..(max_latency as f64 * 1.5)).log_scale())?;
    latency.configure_mesh().x_desc("run time (s)").y_desc("latency (ms)").draw()?;
    for (start, end, label) in windows(timeline, end_ms) {
        let (x0, x1) = (start as f64 / 1000.0, end as f64 / 1000.0);
        latency.draw_series(std::iter::once(Rectangle::new(
            [(x0, 1.0), (x1, max_latency as f64 * 1.5)],
            shade.filled(),
        )))?;
        latency.draw_series(std::iter::once(Text::new(label, (x0, max_latency as f64 * 1.2), ("sans-serif", 11))))?;
    }
    for (outcome, color, name) in [
        (Outcome::Ok, BLUE.mix(0.5), "ok"),
        (Outcome::Info, RGBColor(230, 120, 0).mix(0.8), "unknown"),
        (Outcome::Fail, BLACK.mix(0.3), "refused"),
    ] {
        latency
            .draw_series(ops.iter().filter(|op| op.outcome == outcome).map(|op| {
                let y = (op.complete_ms.saturating_sub(op.invoke_ms)).max(1) as f64;
                Circle::new((op.invoke_ms as f64 / 1000.0, y), 2, color.filled())
            }))?
            .label(name)
            .legend(move |(x, y)| Circle::new((x, y), 3, color.filled()));
    }
    latency.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let seconds = end_s.ceil() as usize;
    let mut per_second = vec![0u64; seconds + 1];
    for op in ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        per_second[(op.complete_ms / 1000) as usize] += 1;
    }
    let max_rate = per_second.iter().copied().max().unwrap_or(1).max(1);
    let mut rate = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end_s, 0u64..(max_rate + max_rate / 5 + 1))?;
    rate.configure_mesh().x_desc("run time (s)").y_desc("acknowledged / s").draw()?;
    for (start, end, _) in windows(timeline, end_ms) {
        let (x0, x1) = (start as f64 / 1000.0, end as f64 / 1000.0);
        rate.draw_series(std::iter::once(Rectangle::new(
            [(x0, 0), (x1, max_rate + max_rate / 5 + 1)],
            shade.filled(),
        )))?;
    }
    rate.draw_series(LineSeries::new(
        per_second.iter().enumerate().map(|(s, n)| (s as f64 + 0.5, *n)),
        BLUE.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}
