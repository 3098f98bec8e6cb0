//! # Plots: the percentile spectrum and latency against throughput
//!
//! Both are SVG, drawn with `plotters`' SVG backend alone: text is written as SVG `<text>`
//! and laid out by whatever shows the file, so no font files are needed here.
//!
//! The **percentile spectrum** is HdrHistogram's classic latency-by-percentile plot. The x
//! axis is logarithmic in 1/(1 − percentile), so 90%, 99%, 99.9% and 99.99% are evenly spaced
//! and the tail gets the room it deserves; the y axis is linear latency. Several runs (the
//! store and its floor, or earlier JSON files given with `--compare`) are overlaid, one line
//! each, so the gap between two lines at 99.9% is read directly.
//!
//! The **sweep plot** shows p50, p99 and p99.9 against the achieved rate of each sweep
//! step, with the p99.9 target as a horizontal line: the highest rate whose p99.9 point lies
//! under the line is the answer the sweep table gives.

use plotters::prelude::*;

use super::report::{Percentiles, SweepReport};

/// Width and height of every plot, in pixels.
pub const SIZE: (u32, u32) = (960, 600);

/// The spectrum's x axis ends at 99.999%: log10(1 / (1 − 0.99999)).
const X_MAX: f64 = 5.0;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn x_of(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(1e-12);
    (1.0 / rest).log10().min(X_MAX)
}

fn x_label(x: &f64) -> String {
    let percentile = 100.0 - 100.0 * 10f64.powf(-x);
    let text = format!("{percentile:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Latency unit for a largest value in µs: (divisor, name).
fn unit(max_us: f64) -> (f64, &'static str) {
    if max_us >= 10_000.0 {
        (1000.0, "ms")
    } else {
        (1.0, "µs")
    }
}

/// Reads one latency out of a sweep step.
type StepValue = fn(&super::report::SweepStep) -> f64;

fn failed(e: impl std::fmt::Display) -> String {
    format!("cannot draw the plot: {e}")
}

/// The legend, in the upper left corner, the same on every plot.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(failed)
}

/// The percentile spectra of `series` (a name and its percentiles each), as SVG text.
pub fn spectrum(title: &str, series: &[(String, &Percentiles)]) -> Result<String, String> {
    let max_us = series.iter().map(|(_, p)| p.max_us).fold(1.0, f64::max);
    let (divisor, unit_name) = unit(max_us);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..X_MAX, 0f64..max_us / divisor * 1.08)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&x_label)
            .x_desc("percentile")
            .y_desc(format!("latency ({unit_name})"))
            .draw()
            .map_err(failed)?;
        for (i, (name, p)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points = p.spectrum.iter().map(|[q, us]| (x_of(*q), us / divisor));
            let label = format!("{name}: p99.9 {}", super::report::latency_text(p.p999_us));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(failed)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        draw_legend(&mut chart)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// Latency against achieved throughput for a sweep, as SVG text.
pub fn sweep(title: &str, sweep: &SweepReport) -> Result<String, String> {
    let steps = &sweep.steps;
    let max_us = steps.iter().map(|s| s.p999_us).fold(sweep.p999_target_ms * 1000.0, f64::max);
    let max_us = max_us.min(sweep.p999_target_ms * 1000.0 * 5.0);
    let (divisor, unit_name) = unit(max_us);
    let max_rate =
        steps.iter().map(|s| s.achieved_rate_per_s.max(s.offered_rate_per_s)).fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..max_rate * 1.05, 0f64..max_us / divisor * 1.08)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("achieved throughput (ops/s)")
            .y_desc(format!("latency ({unit_name}; cut at 5 × the target)"))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(failed)?;
        let clip = |us: f64| (us / divisor).min(max_us / divisor * 1.07);
        let lines: [(&str, StepValue); 3] =
            [("p50", |s| s.p50_us), ("p99", |s| s.p99_us), ("p99.9", |s| s.p999_us)];
        for (i, (name, value)) in lines.into_iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<_> =
                steps.iter().map(|s| (s.achieved_rate_per_s, clip(value(s)))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(failed)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(failed)?;
        }
        let target = sweep.p999_target_ms * 1000.0 / divisor;
        chart
            .draw_series(LineSeries::new(
                [(0.0, target), (max_rate * 1.05, target)],
                BLACK.stroke_width(3),
            ))
            .map_err(failed)?
            .label(format!("p99.9 target {} ms", sweep.p999_target_ms))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
        draw_legend(&mut chart)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The x axis puts the nines one unit apart.
    #[test]
    fn nines_are_evenly_spaced() {
        assert!((x_of(90.0) - 1.0).abs() < 1e-9);
        assert!((x_of(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(x_of(100.0), X_MAX);
        assert_eq!(x_label(&0.0), "0%");
        assert_eq!(x_label(&2.0), "99%");
        assert_eq!(x_label(&3.0), "99.9%");
    }

    /// A spectrum plot of two series is an SVG naming both.
    #[test]
    fn spectrum_is_svg() {
        let p = Percentiles {
            count: 3,
            max_us: 300.0,
            p999_us: 250.0,
            spectrum: vec![[0.0, 10.0], [50.0, 20.0], [99.9, 250.0], [100.0, 300.0]],
            ..Percentiles::default()
        };
        let svg = spectrum("test", &[("store".into(), &p), ("floor".into(), &p)]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("store: p99.9") && svg.contains("floor: p99.9"));
        assert!(svg.contains("99.9%"));
    }
}
