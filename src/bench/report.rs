//! # What a run leaves behind: the table, the JSON file, the `.hgrm` files
//!
//! Latencies are kept in nanoseconds while measuring and written in microseconds (`_us`
//! fields, as floats), the unit in which this store's figures are read.
//!
//! ## The JSON file (`FORMAT`, version [`VERSION`])
//! ```text
//! {
//!   "format": "cartwheel-bench", "version": 1,
//!   "label": "...", "command": ["cartwheel", "bench", ...], "unix_time_s": 1790000000,
//!   "machine": { "cpus": 2, "os": "linux", "load_average_1m": 0.4 },
//!   "target": { "kind": "embedded" | "cluster", "nodes": 3, "addresses": [...] },
//!   "bucket": { "name", "engine", "resolver", "n", "r", "w", "dw" },
//!   "workload": { "name", "keys", "value_bytes", "distribution", "zipf_theta" },
//!   "schedule": { "rate_per_s", "warmup_s", "duration_s", "inflight_max",
//!                 "connections_per_node", "routing", "zero_hop" },
//!   "runs": [ {                       // "store"; "reference" with --reference; "floor" with --floor
//!     "name", "offered_rate_per_s", "achieved_rate_per_s", "measured_s",
//!     "requests", "answered", "late", "unfinished", "not_issued",
//!     "errors": { "<kind>": count },  // cartwheel::Error kinds, unfinished, not_issued
//!     "latency": Percentiles,         // all operations, from the intended start
//!     "service": Percentiles,         // all operations, from the actual send
//!     "send_lag": Percentiles,        // how late the generator sent
//!     "ops": { "<op>": { "errors", "latency": Percentiles, "service": Percentiles } }
//!   } ],
//!   "sweep": null | { "p999_target_ms", "best_rate_per_s", "steps": [ {
//!     "offered_rate_per_s", "achieved_rate_per_s", "p50_us", "p99_us", "p999_us",
//!     "max_us", "errors", "late", "overloaded", "passed" } ] }
//! }
//! Percentiles = { "count", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us",
//!                 "p9999_us", "max_us", "spectrum": [[percentile, latency_us], ...] }
//! ```
//!
//! ## The `.hgrm` file
//! HdrHistogram's classic percentile distribution text, values in milliseconds, which the
//! HdrHistogram plotters read as is: a header, one line per quantile step (value,
//! percentile as a fraction, total count up to it, 1/(1 − percentile)), and a footer with
//! mean, standard deviation, max, count and the histogram's bucket layout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::generator::{OpResult, RunResult};

/// The `format` field of the JSON file.
pub const FORMAT: &str = "cartwheel-bench";

/// The `version` field of the JSON file.
pub const VERSION: u32 = 1;

/// Quantile steps per halving of the distance to 100%, in `.hgrm` files and spectra.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// A latency distribution in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest value.
    pub max_us: f64,
    /// The percentile spectrum: `[percentile (0-100), latency_us]` pairs, for plots.
    pub spectrum: Vec<[f64; 2]>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Percentiles {
    /// Summarise a nanosecond histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let spectrum = h
            .iter_quantiles(TICKS_PER_HALF_DISTANCE)
            .map(|v| {
                [v.quantile_iterated_to() * 100.0, us(h.highest_equivalent(v.value_iterated_to()))]
            })
            .collect();
        Self {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            p9999_us: us(h.value_at_quantile(0.9999)),
            max_us: us(h.max()),
            spectrum,
        }
    }
}

/// One operation's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpReport {
    /// Failed requests.
    pub errors: u64,
    /// Successful requests, from the intended start.
    pub latency: Percentiles,
    /// Successful requests, from the actual send.
    pub service: Percentiles,
}

impl OpReport {
    fn from_result(op: &OpResult) -> Self {
        Self {
            errors: op.errors,
            latency: Percentiles::from_histogram(&op.latency),
            service: Percentiles::from_histogram(&op.service),
        }
    }
}

/// One run of the generator: the store, or the floor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// `store`, `reference` or `floor` (or a label from a compared file).
    pub name: String,
    /// The schedule's rate.
    pub offered_rate_per_s: f64,
    /// Answers per second over the measured time.
    pub achieved_rate_per_s: f64,
    /// Seconds from the end of the warm-up to the last answer.
    pub measured_s: f64,
    /// CPU seconds (user + system) the bench process used over the measured time: with
    /// embedded nodes, the nodes' and the generator's (absent in older files).
    #[serde(default)]
    pub cpu_s: Option<f64>,
    /// Of those, the generator's sending thread's (absent in older files).
    #[serde(default)]
    pub generator_cpu_s: Option<f64>,
    /// CPU seconds (user + system) the server under test reported for itself over the
    /// measured time: a Redis peer's `INFO cpu` (absent for the store, and in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// The worst successful latency per 100 ms window of intended starts, in microseconds
    /// (0 for a window with none): when in the run the tail happened (empty in older files).
    #[serde(default)]
    pub worst_us_per_100ms: Vec<f64>,
    /// Measured requests.
    pub requests: u64,
    /// Of those, answered (successfully or not).
    pub answered: u64,
    /// Of those, issued late because the in-flight bound was reached.
    pub late: u64,
    /// Of those, unanswered when the run ended.
    pub unfinished: u64,
    /// Of those, never issued because the run's time was up.
    pub not_issued: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// All operations, from the intended start (unfinished requests included, with the
    /// latency they had reached).
    pub latency: Percentiles,
    /// All successful operations, from the actual send.
    pub service: Percentiles,
    /// Actual send − intended start.
    pub send_lag: Percentiles,
    /// Per operation.
    pub ops: BTreeMap<String, OpReport>,
}

impl RunReport {
    /// Summarise a run.
    pub fn from_result(name: &str, r: &RunResult) -> Self {
        Self {
            name: name.to_string(),
            offered_rate_per_s: r.schedule.rate_per_s,
            achieved_rate_per_s: r.achieved_rate_per_s(),
            measured_s: r.measured_s,
            cpu_s: r.cpu_s,
            generator_cpu_s: r.generator_cpu_s,
            server_cpu_s: r.server_cpu_s,
            worst_us_per_100ms: r.worst_ns.iter().map(|&ns| ns as f64 / 1e3).collect(),
            requests: r.requests,
            answered: r.answered,
            late: r.late,
            unfinished: r.unfinished,
            not_issued: r.not_issued,
            errors: r.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            latency: Percentiles::from_histogram(&r.all.latency),
            service: Percentiles::from_histogram(&r.all.service),
            send_lag: Percentiles::from_histogram(&r.send_lag),
            ops: r.ops.iter().map(|(k, v)| (k.to_string(), OpReport::from_result(v))).collect(),
        }
    }

    /// Failed requests in all.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// What a reader should know before trusting the figures, in sentences.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let refused = ["overloaded", "unfinished", "not_issued", "timeout"]
            .iter()
            .any(|kind| self.errors.contains_key(*kind));
        if refused || self.achieved_rate_per_s < 0.95 * self.offered_rate_per_s {
            out.push(
                "overload: the target did not keep up with the offered rate, so these latencies \
                 measure a growing queue; lower --rate, or find the limit with --sweep"
                    .to_string(),
            );
        }
        // With requests waiting for in-flight slots, send lag is that wait (said above);
        // without, it is the generator's own lateness.
        if self.late == 0 && self.send_lag.p999_us > 1000.0 {
            out.push(format!(
                "the generator itself sent up to {} late (p99.9): the machine is busy, and \
                 tails shorter than that are not resolved",
                latency_text(self.send_lag.p999_us)
            ));
        }
        out
    }
}

/// The machine the run was on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs available to the process.
    pub cpus: usize,
    /// `std::env::consts::OS`.
    pub os: String,
    /// The 1-minute load average when the run started (Linux), to tell a quiet machine from
    /// a busy one.
    pub load_average_1m: Option<f64>,
}

impl Machine {
    /// This machine, now.
    pub fn now() -> Self {
        let load_average_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: std::env::consts::OS.to_string(),
            load_average_1m,
        }
    }
}

/// What was benchmarked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// `embedded` or `cluster`.
    pub kind: String,
    /// Nodes.
    pub nodes: usize,
    /// Their client addresses.
    pub addresses: Vec<String>,
    /// `tls` or `insecure`: how the connections were secured (empty in files from before
    /// there was a choice, which were all insecure).
    #[serde(default)]
    pub security: String,
}

/// The bucket under test, as the first node reports it (as requested, where it does not).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketReport {
    /// Bucket name.
    pub name: String,
    /// Engine name.
    pub engine: String,
    /// Resolver name.
    pub resolver: String,
    /// Replicas.
    pub n: u8,
    /// Read quorum.
    pub r: u8,
    /// Write quorum.
    pub w: u8,
    /// Durable writes.
    pub dw: u8,
}

/// The workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    /// `a`, `b`, `c`, `write-only` or `cart`.
    pub name: String,
    /// Keys (carts for `cart`).
    pub keys: u64,
    /// Value size of updates.
    pub value_bytes: usize,
    /// `uniform` or `zipfian`.
    pub distribution: String,
    /// The zipfian theta.
    pub zipf_theta: f64,
    /// Items in each cart before the run (`cart`; absent otherwise and in older files).
    #[serde(default)]
    pub cart_items: Option<u64>,
}

/// The schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleReport {
    /// Offered rate.
    pub rate_per_s: f64,
    /// Warm-up seconds (discarded).
    pub warmup_s: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// In-flight bound.
    pub inflight_max: usize,
    /// Connections to each node.
    pub connections_per_node: usize,
    /// `per-key` or `round-robin`.
    pub routing: String,
    /// Whether per-key routing followed the ring's preference lists (no forwarding hop).
    pub zero_hop: bool,
}

/// One step of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepStep {
    /// Offered rate.
    pub offered_rate_per_s: f64,
    /// Achieved rate.
    pub achieved_rate_per_s: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest latency.
    pub max_us: f64,
    /// Failed requests.
    pub errors: u64,
    /// Failed requests by error kind (empty in files from before it was recorded).
    #[serde(default)]
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Late requests.
    pub late: u64,
    /// Whether the step had errors or achieved less than 95% of the offered rate.
    pub overloaded: bool,
    /// Whether p99.9 stayed under the target, without errors, at ≥ 95% of the offered rate.
    pub passed: bool,
}

/// A sweep's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// The p99.9 target.
    pub p999_target_ms: f64,
    /// Highest offered rate that passed, if any did.
    pub best_rate_per_s: Option<f64>,
    /// Every step, in order.
    pub steps: Vec<SweepStep>,
}

/// Everything in the JSON file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The run's label (file names start with it).
    pub label: String,
    /// The command line.
    pub command: Vec<String>,
    /// When the run started.
    pub unix_time_s: u64,
    /// The machine.
    pub machine: Machine,
    /// What was benchmarked.
    pub target: TargetReport,
    /// The bucket.
    pub bucket: BucketReport,
    /// The workload.
    pub workload: WorkloadReport,
    /// The schedule.
    pub schedule: ScheduleReport,
    /// The runs: `store`, and `floor` with `--floor`.
    pub runs: Vec<RunReport>,
    /// The sweep, with `--sweep`.
    pub sweep: Option<SweepReport>,
}

impl BenchReport {
    /// Read a JSON file written by an earlier run.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let report: Self = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a cartwheel bench file: {e}", path.display()))?;
        if report.format != FORMAT || report.version != VERSION {
            return Err(format!(
                "{}: format {} version {}, expected {FORMAT} version {VERSION}",
                path.display(),
                report.format,
                report.version
            ));
        }
        Ok(report)
    }
}

/// A latency for people: µs below 10 ms, ms above.
pub fn latency_text(us: f64) -> String {
    if us < 10_000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// The percentile table of some runs, one line per operation and one for all.
pub fn table(runs: &[RunReport]) -> String {
    let mut out = String::new();
    let header =
        ["run", "op", "count", "errors", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"];
    let _ = writeln!(
        out,
        "{:<7} {:<18} {:>9} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6],
        header[7],
        header[8],
        header[9],
        header[10]
    );
    for run in runs {
        let mut line = |op: &str, errors: u64, p: &Percentiles| {
            let _ = writeln!(
                out,
                "{:<7} {:<18} {:>9} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                run.name,
                op,
                p.count,
                errors,
                latency_text(p.p50_us),
                latency_text(p.p90_us),
                latency_text(p.p99_us),
                latency_text(p.p999_us),
                latency_text(p.p9999_us),
                latency_text(p.max_us),
                latency_text(p.mean_us),
            );
        };
        if run.ops.len() > 1 {
            for (op, report) in &run.ops {
                line(op, report.errors, &report.latency);
            }
        }
        line("all", run.error_count(), &run.latency);
    }
    let _ = writeln!(out);
    for run in runs {
        let errors = if run.errors.is_empty() {
            "no errors".to_string()
        } else {
            let kinds: Vec<_> = run.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("errors: {}", kinds.join(", "))
        };
        let _ = writeln!(
            out,
            "{:<7} offered {:.0}/s, achieved {:.0}/s; {} late (in-flight bound), send lag p99.9 \
             {}; {}",
            run.name,
            run.offered_rate_per_s,
            run.achieved_rate_per_s,
            run.late,
            latency_text(run.send_lag.p999_us),
            errors
        );
        if let (Some(cpu_s), Some(generator_s)) = (run.cpu_s, run.generator_cpu_s) {
            let per = |s: f64| s * 100_000.0 / run.answered.max(1) as f64;
            let _ = writeln!(
                out,
                "{:<7} cpu (user + system) over the measured time: {cpu_s:.2} s for this process \
                 ({:.2} s per 100 000 requests), of which the generator's thread {generator_s:.2} \
                 s; without it {:.2} s per 100 000 requests",
                "",
                per(cpu_s),
                per(cpu_s - generator_s)
            );
        }
        if let Some(server_s) = run.server_cpu_s {
            let per = server_s * 100_000.0 / run.answered.max(1) as f64;
            let _ = writeln!(
                out,
                "{:<7} cpu (user + system) over the measured time, as the server reports it: \
                 {server_s:.2} s ({per:.2} s per 100 000 requests)",
                ""
            );
        }
        if let Some(worst) = worst_windows(&run.worst_us_per_100ms, 3) {
            let _ = writeln!(out, "{:<7} worst 100 ms windows (by intended start): {worst}", "");
        }
        for warning in run.warnings() {
            let _ = writeln!(out, "{:<7} note: {warning}", "");
        }
    }
    out
}

/// The `count` windows of `worst_us` with the highest latency, worst first, as "at 6.3 s:
/// 87.2 ms, …" (each window named by its start in the measured time); `None` if none.
fn worst_windows(worst_us: &[f64], count: usize) -> Option<String> {
    let mut windows: Vec<(usize, f64)> =
        worst_us.iter().copied().enumerate().filter(|&(_, us)| us > 0.0).collect();
    if windows.is_empty() {
        return None;
    }
    windows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let text: Vec<String> = windows
        .iter()
        .take(count)
        .map(|&(i, us)| {
            let at_s = (i as u64 * super::generator::WORST_WINDOW_MS) as f64 / 1000.0;
            format!("at {at_s:.1} s: {}", latency_text(us))
        })
        .collect();
    Some(text.join(", "))
}

/// The sweep as a table.
pub fn sweep_table(sweep: &SweepReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>6}  errors by kind",
        "offered/s", "achieved/s", "p50", "p99", "p99.9", "max", "errors", "pass"
    );
    for s in &sweep.steps {
        let _ = writeln!(
            out,
            "{:>10.0} {:>10.0} {:>10} {:>10} {:>10} {:>10} {:>7} {:>6}  {}",
            s.offered_rate_per_s,
            s.achieved_rate_per_s,
            latency_text(s.p50_us),
            latency_text(s.p99_us),
            latency_text(s.p999_us),
            latency_text(s.max_us),
            s.errors,
            if s.passed { "yes" } else { "no" },
            s.errors_by_kind
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = match sweep.best_rate_per_s {
        Some(rate) => writeln!(
            out,
            "highest rate with p99.9 under {} ms: {rate:.0} ops/s",
            sweep.p999_target_ms
        ),
        None => writeln!(out, "no rate kept p99.9 under {} ms", sweep.p999_target_ms),
    };
    out
}

/// HdrHistogram's classic percentile distribution of a nanosecond histogram, in ms.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1e6; // ns per ms
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = h.highest_equivalent(v.value_iterated_to()) as f64 / SCALE;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10}");
        }
    }
    let mean = h.mean() / SCALE;
    let stdev = h.stdev() / SCALE;
    let max = h.max() as f64 / SCALE;
    let _ = writeln!(out, "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]");
    let _ = writeln!(out, "#[Max     = {max:>12.3}, Total count    = {:>12}]", h.len());
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        // The sub-bucket count: 2 × 10^digits rounded up to a power of two.
        (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::generator::new_histogram;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 1000).unwrap(); // 1 µs … 10 ms
        }
        h
    }

    /// Percentiles come out in µs, in order, with a spectrum that ends at 100%.
    #[test]
    fn percentiles_from_histogram() {
        let p = Percentiles::from_histogram(&sample());
        assert_eq!(p.count, 10_000);
        assert!((p.p50_us - 5000.0).abs() < 10.0, "{}", p.p50_us);
        assert!((p.p999_us - 9990.0).abs() < 15.0, "{}", p.p999_us);
        assert!(p.p50_us <= p.p90_us && p.p90_us <= p.p99_us && p.p99_us <= p.p999_us);
        assert!(p.p999_us <= p.p9999_us && p.p9999_us <= p.max_us);
        assert_eq!(p.spectrum.last().unwrap()[0], 100.0);
        assert!(p.spectrum.windows(2).all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]));
        assert_eq!(Percentiles::from_histogram(&new_histogram()), Percentiles::default());
    }

    /// The `.hgrm` text has the classic header, a line per step and the footer.
    #[test]
    fn hgrm_format() {
        let text = hgrm(&sample());
        let lines: Vec<_> = text.lines().collect();
        assert!(lines[0].contains("Value") && lines[0].contains("1/(1-Percentile)"));
        assert!(lines[1].is_empty());
        let first: Vec<_> = lines[2].split_whitespace().collect();
        assert_eq!(first.len(), 4);
        assert!(first[1].starts_with("0.000000"));
        assert!(text.contains("#[Mean    ="));
        assert!(text.contains("Total count    =        10000]"));
        let last_step = lines[lines.len() - 4];
        assert!(last_step.split_whitespace().nth(2) == Some("10000"), "{last_step}");
        assert!(last_step.contains("1.000000000000"), "{last_step}");
    }
}
