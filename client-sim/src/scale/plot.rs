//! The run's SVG plot: sessions held, driver -> consumer latency, memory and CPU over time.

use super::coordinator::Sample;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type Series = (String, Vec<(f64, f64)>);

/// Writes four stacked panels to `path`.
pub fn write_svg(path: &Path, samples: &[Sample], deliveries: usize) -> anyhow::Result<()> {
    let t_max = samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let root = SVGBackend::new(path, (1100, 1300)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((4, 1));

    let mut kinds: Vec<String> = samples
        .iter()
        .flat_map(|s| s.held.keys().cloned())
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut sessions: Vec<Series> = kinds
        .iter()
        .map(|k| {
            (
                format!("{k} connected"),
                samples
                    .iter()
                    .map(|s| (s.t_s, s.held.get(k).map_or(0.0, |h| h.connected as f64)))
                    .collect(),
            )
        })
        .collect();
    sessions.push((
        "all wanted".into(),
        samples
            .iter()
            .map(|s| (s.t_s, s.held.values().map(|h| h.wanted).sum::<u64>() as f64))
            .collect(),
    ));
    panel(
        &panels[0],
        &format!("sessions held ({deliveries} deliveries)"),
        "sessions",
        t_max,
        &sessions,
    )?;
    panel(
        &panels[1],
        "driver -> consumer latency per interval",
        "ms",
        t_max,
        &[
            (
                "p50".into(),
                samples.iter().map(|s| (s.t_s, s.latency_p50_ms)).collect(),
            ),
            (
                "p99".into(),
                samples.iter().map(|s| (s.t_s, s.latency_p99_ms)).collect(),
            ),
        ],
    )?;
    let mut names: Vec<String> = samples
        .iter()
        .flat_map(|s| s.node_rss_mib.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    let per_node = |f: &dyn Fn(&Sample, &str) -> f64, gen: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<Series> = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    samples.iter().map(|s| (s.t_s, f(s, n))).collect(),
                )
            })
            .collect();
        v.push((
            "generator".into(),
            samples.iter().map(|s| (s.t_s, gen(s))).collect(),
        ));
        v
    };
    panel(
        &panels[2],
        "resident memory",
        "MiB",
        t_max,
        &per_node(
            &|s, n| s.node_rss_mib.get(n).copied().unwrap_or(0.0),
            &|s| s.generator_rss_mib,
        ),
    )?;
    panel(
        &panels[3],
        "CPU",
        "cores",
        t_max,
        &per_node(
            &|s, n| s.node_cpu_cores.get(n).copied().unwrap_or(0.0),
            &|s| s.generator_cpu_cores,
        ),
    )?;
    root.present().map_err(err)?;
    Ok(())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    t_max: f64,
    series: &[Series],
) -> anyhow::Result<()> {
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied().filter(|p| p.1.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
