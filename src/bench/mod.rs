//! # `cartwheel bench`: the open-loop latency benchmark
//!
//! The question it answers: at a given arrival rate, how long does a request take, up to
//! p99.9 and beyond, and how much of that is the store rather than the machine? It answers
//! with four ideas:
//!
//! 1. **Open loop.** Requests arrive at a fixed rate whatever the server does, and latency
//!    is measured from each request's *intended* start ([`generator`]). A stalled server
//!    shows in the tail instead of slowing the generator down: no coordinated omission.
//! 2. **HdrHistogram.** Every latency is recorded at 0.1% resolution, per operation, and
//!    reported as percentiles, an `.hgrm` distribution and a percentile-spectrum plot
//!    ([`report`], [`plot`]).
//! 3. **A floor.** `--floor` runs the same generator against a raw TCP echo server in the
//!    same process at the same rate and request size ([`floor`]), so each figure can be read
//!    beside what one loopback round trip costs on the same machine.
//!
//! 4. **A reference.** `--reference` runs a bare client of its own after the store run
//!    ([`mod@reference`]), with the same requests at the same rate: what the benchmark's own
//!    machinery adds shows as the gap between the two lines. That machinery is kept off the
//!    sending thread: it paces, sends and timestamps, and a recorder thread keeps the
//!    histograms and the progress bar ([`generator`]).
//!
//! By default it starts its own nodes (`--nodes 3`) on loopback with a bucket named `bench`
//! configured from the command line ([`target`]), preloads every key, runs the workload
//! ([`workload`]: YCSB A/B/C, write-only, shopping carts), tears the nodes down, prints a
//! table and writes a JSON file, `.hgrm` files and an SVG plot under `--out`. `--sweep`
//! raises the rate step by step and reports the highest one whose p99.9 stays under
//! `--p999-target`; `--compare` overlays earlier JSON files on the plot.
//!
//! Left out on purpose: a distributed load generator (one process drives everything, its
//! requests leaving from one thread, as capnp-rpc requires) and closed-loop modes (they measure the wrong thing).
//! README's "Reading a benchmark" says how to read the output.

pub mod floor;
pub mod generator;
pub mod plot;
pub mod redis;
pub mod reference;
pub mod report;
pub mod target;
pub mod workload;

use std::cell::RefCell;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cartwheel_engines::EngineKind;
use cartwheel_resolvers::ResolverKind;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::BucketConfig;
use generator::{Pacer, RunResult, Schedule, Tick};
use report::{
    BenchReport, BucketReport, Machine, RunReport, ScheduleReport, SweepReport, SweepStep,
    TargetReport, WorkloadReport,
};
use target::{EmbeddedCluster, Routing, Store};
use workload::{Distribution, KeyChooser, Rng, Workload};

/// Default measured seconds of a run.
pub const DURATION_S_DEFAULT: f64 = 10.0;
/// Default warm-up seconds of a run.
pub const WARMUP_S_DEFAULT: f64 = 2.0;
/// Default measured seconds of each sweep step.
pub const SWEEP_DURATION_S_DEFAULT: f64 = 3.0;
/// Default warm-up seconds of each sweep step.
pub const SWEEP_WARMUP_S_DEFAULT: f64 = 1.0;
/// Most steps a sweep takes.
pub const SWEEP_STEPS_MAX: usize = 100;
/// A sweep stops after this many overloaded steps in a row (errors, or less than 95% of the
/// offered rate achieved). Steps that only miss the p99.9 target do not stop it: a busy
/// moment can fail one step, and the rest of the curve is still worth drawing.
pub const SWEEP_OVERLOADS_TO_STOP: usize = 2;
/// Longest run `bench` accepts (warm-up plus measured time), in seconds.
pub const RUN_S_MAX: f64 = 3600.0;

/// Arguments of `cartwheel bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Offered rate: requests started per second, whatever the server does.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Measured seconds [default: 10; 3 per sweep step].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Warm-up seconds before measuring; their results are discarded [default: 2; 1 per
    /// sweep step].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Requests in flight at most; one due while this many are in flight waits and counts
    /// as late (still measured from its intended start).
    #[arg(long, default_value_t = 1024)]
    pub inflight_max: usize,
    /// Connections to each node.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// How requests are spread over nodes: each key to one node, or round-robin.
    #[arg(long, value_enum, default_value_t = Routing::PerKey)]
    pub routing: Routing,
    /// The operation mix.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Skew of the zipfian distribution (0 < theta < 1).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    /// Keys (carts for the cart workload), all written before the run.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 1024)]
    pub value_bytes: usize,
    /// Items each cart holds before the run (cart workload): the run's operations touch the
    /// first 64, the others only make the cart as large as asked
    #[arg(long, default_value_t = 1)]
    pub cart_items: u64,
    /// Storage engine of the bucket under test (embedded nodes).
    #[arg(long, default_value = "log")]
    pub engine: String,
    /// Resolver of the bucket under test [default: cart for the cart workload, else lww].
    #[arg(long)]
    pub resolver: Option<String>,
    /// Replicas per key (embedded nodes).
    #[arg(long, default_value_t = 3)]
    pub n: u8,
    /// Read quorum (embedded nodes).
    #[arg(long, default_value_t = 2)]
    pub r: u8,
    /// Write quorum (embedded nodes).
    #[arg(long, default_value_t = 2)]
    pub w: u8,
    /// Replicas that must have synced a write before its ack (embedded nodes; durable
    /// engines only).
    #[arg(long, default_value_t = 0)]
    pub dw: u8,
    /// Embedded nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Target a running cluster instead: HOST:PORT,HOST:PORT,...
    #[arg(long, value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// How the embedded nodes secure their connections: `tls` (the default, as `up`) or
    /// `insecure` (plain TCP). A --cluster is reached with the command's credentials.
    #[arg(long, value_enum, default_value_t = Security::Tls)]
    pub security: Security,
    /// The credentials for a --cluster (the command line's --credentials / --token).
    #[arg(skip)]
    pub cluster_credentials: crate::client::Credentials,
    /// On a --cluster, leave the keys the run wrote (under its own prefix) instead of
    /// deleting them at the end.
    #[arg(long)]
    pub keep: bool,
    /// Bucket to use on a --cluster (embedded nodes always use `bench`).
    #[arg(long, default_value = target::BUCKET)]
    pub bucket: String,
    /// Also measure the floor: a raw TCP echo at the same rate (--rate, also with --sweep)
    /// and request size, over as many connections.
    #[arg(long)]
    pub floor: bool,
    /// Also run the bare reference client (one connection per node, nothing else on its
    /// thread) after the store run, at the same rate with the same requests: the benchmark's
    /// own cost at the tail is the gap between the two. Value workloads, lww buckets.
    #[arg(long, conflicts_with = "sweep")]
    pub reference: bool,
    /// Also run the same requests against a Redis server at this address (host:port), before
    /// the store run, over --connections connections: GET and SET of the same keys and value
    /// size, the server's CPU as it reports it. Value workloads.
    #[arg(long, conflicts_with = "sweep", value_name = "ADDR")]
    pub redis: Option<String>,
    /// Raise the rate step by step; report the highest with p99.9 under --p999-target.
    #[arg(long)]
    pub sweep: bool,
    /// First rate of a sweep.
    #[arg(long, default_value_t = 5000.0)]
    pub sweep_start: f64,
    /// Rate added at each sweep step.
    #[arg(long, default_value_t = 5000.0)]
    pub sweep_step: f64,
    /// Highest rate a sweep tries.
    #[arg(long, default_value_t = 60_000.0)]
    pub sweep_max: f64,
    /// p99.9 target of a sweep, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    pub p999_target: f64,
    /// Earlier JSON result files to overlay on the plot.
    #[arg(long)]
    pub compare: Vec<PathBuf>,
    /// Only plot the --compare files; run nothing.
    #[arg(long, requires = "compare")]
    pub plot_only: bool,
    /// Directory of the output files.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Name of this run; output files start with it [default: time, workload, engine,
    /// resolver, nodes].
    #[arg(long)]
    pub label: Option<String>,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The files a run wrote, and its report.
#[derive(Debug)]
pub struct Written {
    /// The JSON file (none for `--plot-only`).
    pub json: Option<PathBuf>,
    /// The `.hgrm` files.
    pub hgrm: Vec<PathBuf>,
    /// The SVG plots.
    pub plots: Vec<PathBuf>,
    /// What the JSON file holds.
    pub report: Option<BenchReport>,
}

/// How embedded nodes secure their connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Security {
    /// TLS 1.3 and token login, as `up` runs.
    Tls,
    /// Plain TCP, no login.
    Insecure,
}

/// Run the benchmark from the command line; `auth` gives the credentials for a `--cluster`.
pub fn run(mut args: BenchArgs, auth: &crate::cli::Auth) -> ExitCode {
    if !args.cluster.is_empty() {
        match auth.resolve() {
            Ok(credentials) => args.cluster_credentials = credentials,
            Err(e) => {
                eprintln!("cartwheel bench: cannot read the credentials: {e}");
                return ExitCode::from(crate::exit::FAILED);
            }
        }
    }
    let command: Vec<String> = std::env::args().collect();
    match execute(&args, command) {
        Ok(written) => {
            let all_failed = written.report.as_ref().is_some_and(|r| {
                r.runs.iter().any(|run| run.answered > 0 && run.error_count() >= run.answered)
            });
            if all_failed {
                eprintln!("cartwheel bench: every request of a run failed; see the errors above");
                return ExitCode::from(crate::exit::FAILED);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cartwheel bench: {e}");
            ExitCode::from(crate::exit::FAILED)
        }
    }
}

/// The validated parameters of a run.
struct Plan {
    /// The run's time, as labels show it.
    stamp: String,
    /// Nodes targeted.
    nodes: usize,
    /// Before every key written (empty for embedded nodes).
    prefix: Vec<u8>,
    bucket: BucketConfig,
    bucket_name: String,
    keys: KeyChooser,
    schedule: Schedule,
    sweep_rates: Vec<f64>,
}

impl Plan {
    fn new(args: &BenchArgs, unix_time_s: u64) -> Result<Self, String> {
        let engine = EngineKind::from_name(&args.engine).ok_or_else(|| {
            let names: Vec<_> = EngineKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown engine {:?}; one of {names:?}", args.engine)
        })?;
        let default_resolver = if args.workload.is_cart() { "cart" } else { "lww" };
        let resolver_name = args.resolver.as_deref().unwrap_or(default_resolver);
        let resolver = ResolverKind::from_name(resolver_name).ok_or_else(|| {
            let names: Vec<_> = ResolverKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown resolver {resolver_name:?}; one of {names:?}")
        })?;
        match (args.workload.is_cart(), resolver) {
            (true, ResolverKind::Cart) | (false, ResolverKind::Lww | ResolverKind::Siblings) => {}
            (true, _) => return Err("the cart workload needs --resolver cart".into()),
            (false, _) => {
                return Err(format!(
                    "workload {} puts values: use --resolver lww or siblings",
                    args.workload
                ))
            }
        }
        if args.redis.is_some() && args.workload.is_cart() {
            return Err("--redis sends GET and SET: use a value workload".into());
        }
        if args.reference && resolver != ResolverKind::Lww {
            return Err("--reference sends blind puts and reads: use a value workload on an lww \
                        bucket"
                .into());
        }
        if args.cluster.is_empty() {
            if !(1..=args.n).contains(&args.r) || !(1..=args.n).contains(&args.w) {
                return Err(format!("r and w must be 1 to n ({})", args.n));
            }
            if args.dw > args.w {
                return Err(format!("dw must be 0 to w ({})", args.w));
            }
            if args.dw > 0 && engine == EngineKind::Memory {
                return Err("the memory engine keeps nothing across a restart: use --dw 0, or a \
                            durable --engine"
                    .into());
            }
        }
        let mut bucket = BucketConfig::new(engine, resolver);
        (bucket.n, bucket.r, bucket.w, bucket.dw) = (args.n, args.r, args.w, args.dw);
        if args.cluster.is_empty() && args.nodes < usize::from(args.n) {
            // W copies need W nodes: on fewer embedded nodes than N, the bucket fits them.
            bucket.fit_to(u8::try_from(args.nodes).unwrap_or(u8::MAX));
        }

        let (duration, warmup) = if args.sweep {
            (SWEEP_DURATION_S_DEFAULT, SWEEP_WARMUP_S_DEFAULT)
        } else {
            (DURATION_S_DEFAULT, WARMUP_S_DEFAULT)
        };
        let duration = args.duration.unwrap_or(duration);
        let warmup = args.warmup.unwrap_or(warmup);
        for (name, seconds) in [("duration", duration), ("warmup", warmup)] {
            if !(0.0..=RUN_S_MAX).contains(&seconds) {
                return Err(format!("{name} must be 0 to {RUN_S_MAX} seconds"));
            }
        }
        let schedule = Schedule::new(
            args.rate,
            Duration::from_secs_f64(warmup),
            Duration::from_secs_f64(duration),
            args.inflight_max,
        );
        schedule.check()?;
        let sweep_rates = if args.sweep { sweep_rates(args)? } else { Vec::new() };
        if args.connections == 0 || args.connections > target::CONNECTIONS_PER_NODE_MAX {
            return Err(format!("connections must be 1 to {}", target::CONNECTIONS_PER_NODE_MAX));
        }
        if args.value_bytes == 0 {
            return Err("value-bytes must be at least 1".into());
        }
        let keys = KeyChooser::new(args.keys, args.distribution, args.zipf_theta)?;
        let nodes = if args.cluster.is_empty() { args.nodes } else { args.cluster.len() };
        let stamp = utc_stamp(unix_time_s);
        if let Some(label) = &args.label {
            if label.is_empty() || label.contains(['/', '\\']) {
                return Err(format!("label {label:?} must be a plain file name"));
            }
        }
        let (bucket_name, prefix) = if args.cluster.is_empty() {
            (target::BUCKET.to_string(), Vec::new())
        } else {
            // A user's bucket: the run's keys get a prefix of their own.
            (args.bucket.clone(), format!("bench-{stamp}-").into_bytes())
        };
        Ok(Self { stamp, nodes, bucket, bucket_name, prefix, keys, schedule, sweep_rates })
    }
}

fn sweep_rates(args: &BenchArgs) -> Result<Vec<f64>, String> {
    let ok = |x: f64| x.is_finite() && x > 0.0;
    if !(ok(args.sweep_start) && ok(args.sweep_step) && ok(args.sweep_max)) {
        return Err("sweep-start, sweep-step and sweep-max must be positive".into());
    }
    if !(args.p999_target.is_finite() && args.p999_target > 0.0) {
        return Err("p999-target must be a positive number of milliseconds".into());
    }
    let rates: Vec<f64> = (0..=SWEEP_STEPS_MAX)
        .map(|i| args.sweep_start + i as f64 * args.sweep_step)
        .take_while(|rate| *rate <= args.sweep_max)
        .collect();
    if rates.is_empty() || rates.len() > SWEEP_STEPS_MAX {
        return Err(format!("a sweep takes 1 to {SWEEP_STEPS_MAX} steps; check its rates"));
    }
    Ok(rates)
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_stamp(unix_time_s: u64) -> String {
    let days = (unix_time_s / 86_400) as i64;
    let seconds = unix_time_s % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Run the benchmark `args` describe and write its files. `command` is recorded in the
/// JSON file.
pub fn execute(args: &BenchArgs, command: Vec<String>) -> Result<Written, String> {
    let unix_time_s = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let compared =
        args.compare.iter().map(|path| BenchReport::load(path)).collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    if args.plot_only {
        let label =
            args.label.clone().unwrap_or_else(|| format!("compare-{}", utc_stamp(unix_time_s)));
        let plot = write_spectrum(&args.out, &label, &[], &compared)?;
        println!("plot: {}", plot.display());
        return Ok(Written { json: None, hgrm: Vec::new(), plots: vec![plot], report: None });
    }
    let plan = Plan::new(args, unix_time_s)?;
    let machine = Machine::now();

    let progress = progress_bar();
    let (cluster, addresses, credentials) = if args.cluster.is_empty() {
        let plural = if args.nodes == 1 { "" } else { "s" };
        progress.set_message(format!("starting {} node{plural}", args.nodes));
        let cluster = EmbeddedCluster::start(args.nodes, &plan.bucket, args.security)?;
        let addresses = cluster.addresses();
        let credentials = cluster.credentials().clone();
        (Some(cluster), addresses, credentials)
    } else {
        (None, args.cluster.clone(), args.cluster_credentials.clone())
    };
    let security = if credentials.ca_pem.is_some() { "tls" } else { "insecure" }.to_string();
    generator::precise_timers();
    let measured =
        crate::client::block_on(measure(args, &plan, &addresses, &credentials, &progress));
    progress.finish_and_clear();
    if let Some(cluster) = cluster {
        cluster.stop().map_err(|e| format!("a node stopped with an error: {e}"))?;
    }
    let measured = measured?;
    let bucket_report = measured.bucket.clone().unwrap_or_else(|| BucketReport {
        name: plan.bucket_name.clone(),
        engine: plan.bucket.engine.name().to_string(),
        resolver: plan.bucket.resolver.name().to_string(),
        n: plan.bucket.n,
        r: plan.bucket.r,
        w: plan.bucket.w,
        dw: plan.bucket.dw,
    });
    // Named after what was measured: on a --cluster, the bucket's own settings.
    let label = args.label.clone().unwrap_or_else(|| {
        let b = &bucket_report;
        format!(
            "{}-{}-{}-{}-n{}r{}w{}dw{}-{}n",
            plan.stamp, args.workload, b.engine, b.resolver, b.n, b.r, b.w, b.dw, plan.nodes
        )
    });

    let report = BenchReport {
        format: report::FORMAT.to_string(),
        version: report::VERSION,
        label,
        command,
        unix_time_s,
        machine,
        target: TargetReport {
            kind: if args.cluster.is_empty() { "embedded" } else { "cluster" }.to_string(),
            nodes: addresses.len(),
            addresses,
            security,
        },
        bucket: bucket_report,
        workload: WorkloadReport {
            name: args.workload.name().to_string(),
            keys: args.keys,
            value_bytes: args.value_bytes,
            distribution: args.distribution.name().to_string(),
            zipf_theta: args.zipf_theta,
            cart_items: args.workload.is_cart().then_some(args.cart_items.max(1)),
        },
        schedule: ScheduleReport {
            rate_per_s: plan.schedule.rate_per_s,
            warmup_s: plan.schedule.warmup.as_secs_f64(),
            duration_s: plan.schedule.duration.as_secs_f64(),
            inflight_max: plan.schedule.inflight_max,
            connections_per_node: args.connections,
            routing: args.routing.name().to_string(),
            zero_hop: measured.zero_hop,
        },
        runs: measured.runs.iter().map(|(name, r)| RunReport::from_result(name, r)).collect(),
        sweep: measured.sweep,
    };
    write_outputs(&args.out, &report, &measured.runs, &compared)
}

/// The generator runs of one benchmark.
struct Measured {
    runs: Vec<(String, RunResult)>,
    sweep: Option<SweepReport>,
    zero_hop: bool,
    /// The bucket as the first node reports it (on a `--cluster`, its settings rule).
    bucket: Option<BucketReport>,
}

async fn measure(
    args: &BenchArgs,
    plan: &Plan,
    addresses: &[String],
    credentials: &crate::client::Credentials,
    progress: &ProgressBar,
) -> Result<Measured, String> {
    let mut store = Store::connect(
        addresses,
        credentials,
        args.connections,
        &plan.bucket_name,
        plan.bucket.resolver,
        args.routing,
        args.value_bytes,
    )
    .await
    .map_err(|e| e.to_string())?
    .with_prefix(&plan.prefix);
    store.prepare_keys(args.keys, args.workload.is_cart());
    progress.set_message(format!("preloading {} keys", args.keys));
    let cart_items = args.workload.is_cart().then_some(args.cart_items.max(1));
    let (failed, first) = store.preload(args.keys, cart_items).await;
    if let Some(e) = first {
        return Err(format!("preloading failed for {failed} of {} keys: {e}", args.keys));
    }
    let bucket = store.bucket_status().await.map(|b| BucketReport {
        name: b.name,
        engine: b.engine,
        resolver: b.resolver,
        n: b.nrw.0,
        r: b.nrw.1,
        w: b.nrw.2,
        dw: b.nrw.3,
    });
    let store = Rc::new(store);
    let mut pacer = Pacer::new();
    if !pacer.is_precise() {
        eprintln!("cartwheel bench: no precise timer here; requests are paced to the millisecond");
    }
    let mut runs = Vec::new();
    let mut sweep = None;
    if let Some(address) = &args.redis {
        // First, while the nodes are quiet: after the store run their engines merge and
        // flush what it wrote, which would take CPU from Redis's run.
        progress.set_prefix("redis");
        progress
            .set_message(format!("offered {:.0}/s, redis at {address}", plan.schedule.rate_per_s));
        let result = redis::run(
            address,
            args.connections,
            reference_plan(args, plan, addresses, credentials),
        )?;
        runs.push(("redis".to_string(), result));
    }
    if plan.sweep_rates.is_empty() {
        let result =
            store_run(&plan.schedule, &store, plan, args, &mut pacer, progress, "store").await;
        runs.push(("store".to_string(), result));
    } else {
        let mut steps = Vec::new();
        let mut overloads = 0;
        for &rate in &plan.sweep_rates {
            let schedule = Schedule { rate_per_s: rate, ..plan.schedule.clone() };
            let name = format!("{rate:.0}/s");
            let result =
                store_run(&schedule, &store, plan, args, &mut pacer, progress, &name).await;
            let step = sweep_step(&result, args.p999_target);
            overloads = if step.overloaded { overloads + 1 } else { 0 };
            steps.push(step);
            runs.push((name, result));
            if overloads >= SWEEP_OVERLOADS_TO_STOP {
                break;
            }
        }
        let best_rate_per_s =
            steps.iter().filter(|s| s.passed).map(|s| s.offered_rate_per_s).reduce(f64::max);
        sweep = Some(SweepReport { p999_target_ms: args.p999_target, best_rate_per_s, steps });
    }
    if args.reference {
        progress.set_prefix("reference");
        progress.set_message(format!("offered {:.0}/s, bare client", plan.schedule.rate_per_s));
        let result = reference::run(reference_plan(args, plan, addresses, credentials))?;
        runs.push(("reference".to_string(), result));
    }
    if args.floor {
        let frame_bytes = workload::key_name(0).len() + args.value_bytes;
        let connections = args.connections * addresses.len();
        let result =
            floor_run(&plan.schedule, connections, frame_bytes, &mut pacer, progress).await?;
        runs.push(("floor".to_string(), result));
    }
    if !plan.prefix.is_empty() {
        let prefix = String::from_utf8_lossy(&plan.prefix);
        let what = if args.workload.is_cart() { "carts" } else { "keys" };
        if args.keep {
            eprintln!(
                "cartwheel bench: left up to {} {what} under the prefix {prefix:?} in bucket {} \
                 (--keep)",
                args.keys, plan.bucket_name
            );
        } else {
            progress.set_message(format!("removing the {} {what} written", args.keys));
            let failed = store.remove_written(args.keys, args.workload.is_cart()).await;
            eprintln!(
                "cartwheel bench: removed the {what} written under {prefix:?} in bucket {} \
                 ({failed} deletes failed)",
                plan.bucket_name
            );
        }
    }
    Ok(Measured { runs, sweep, zero_hop: store.zero_hop(), bucket })
}

/// The requests of the store run, decided up front for the reference client and for Redis.
fn reference_plan(
    args: &BenchArgs,
    plan: &Plan,
    addresses: &[String],
    credentials: &crate::client::Credentials,
) -> reference::ReferencePlan {
    reference::ReferencePlan {
        addresses: addresses.to_vec(),
        credentials: credentials.clone(),
        bucket: plan.bucket_name.clone(),
        prefix: plan.prefix.clone(),
        workload: args.workload,
        keys: plan.keys.clone(),
        seed: args.seed,
        value_bytes: args.value_bytes,
        schedule: plan.schedule.clone(),
    }
}

async fn store_run(
    schedule: &Schedule,
    store: &Rc<Store>,
    plan: &Plan,
    args: &BenchArgs,
    pacer: &mut Pacer,
    progress: &ProgressBar,
    name: &str,
) -> RunResult {
    let rng = Rc::new(RefCell::new(Rng::new(args.seed)));
    let keys = plan.keys.clone();
    let workload = args.workload;
    let store = Rc::clone(store);
    let issue = move |_| {
        let request = workload.next(&keys, &mut rng.borrow_mut());
        store.execute(request)
    };
    generator::run(schedule, pacer, issue, on_tick(progress, name, schedule.rate_per_s)).await
}

async fn floor_run(
    schedule: &Schedule,
    connections: usize,
    frame_bytes: usize,
    pacer: &mut Pacer,
    progress: &ProgressBar,
) -> Result<RunResult, String> {
    let server = floor::EchoServer::start().map_err(|e| format!("echo server: {e}"))?;
    let mut links = Vec::with_capacity(connections);
    for _ in 0..connections {
        let link = floor::EchoConnection::connect(server.address())
            .await
            .map_err(|e| format!("echo connection: {e}"))?;
        links.push(link);
    }
    let frame: Arc<[u8]> = vec![0x5a; frame_bytes].into();
    let issue = move |i: u64| {
        let trip = links[i as usize % links.len()].round_trip(Arc::clone(&frame));
        async move { generator::Outcome { op: "echo", error: trip.await.err() } }
    };
    let result =
        generator::run(schedule, pacer, issue, on_tick(progress, "floor", schedule.rate_per_s))
            .await;
    drop(server);
    Ok(result)
}

fn sweep_step(result: &RunResult, p999_target_ms: f64) -> SweepStep {
    let r = RunReport::from_result("step", result);
    let errors = r.error_count();
    let overloaded = errors > 0 || r.achieved_rate_per_s < 0.95 * r.offered_rate_per_s;
    let passed = !overloaded && r.latency.p999_us <= p999_target_ms * 1000.0;
    SweepStep {
        offered_rate_per_s: r.offered_rate_per_s,
        achieved_rate_per_s: r.achieved_rate_per_s,
        p50_us: r.latency.p50_us,
        p99_us: r.latency.p99_us,
        p999_us: r.latency.p999_us,
        max_us: r.latency.max_us,
        errors,
        errors_by_kind: r.errors.clone(),
        late: r.late,
        overloaded,
        passed,
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar() -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(1000), target);
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {elapsed:>4} {msg}")
        .expect("the progress template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn on_tick(progress: &ProgressBar, name: &str, rate: f64) -> impl FnMut(Tick) + Send + 'static {
    let progress = progress.clone();
    progress.set_prefix(name.to_string());
    progress.set_position(0);
    progress.set_message(format!("offered {rate:.0}/s"));
    move |tick: Tick| {
        let done = tick.elapsed.as_secs_f64() / tick.planned.as_secs_f64().max(1e-9);
        progress.set_position((done.min(1.0) * 1000.0) as u64);
        let p999 = if tick.warming_up || tick.p999_ns == 0 {
            "(warm-up)".to_string()
        } else {
            report::latency_text(tick.p999_ns as f64 / 1000.0)
        };
        progress.set_message(format!(
            "offered {rate:.0}/s, achieved {:.0}/s, p99.9 {p999}",
            tick.rate_per_s
        ));
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn write_spectrum(
    out: &Path,
    label: &str,
    runs: &[RunReport],
    compared: &[BenchReport],
) -> Result<PathBuf, String> {
    let mut series: Vec<(String, &report::Percentiles)> =
        runs.iter().map(|r| (r.name.clone(), &r.latency)).collect();
    for earlier in compared {
        for run in &earlier.runs {
            series.push((format!("{} {}", earlier.label, run.name), &run.latency));
        }
    }
    let svg = plot::spectrum(&format!("cartwheel bench {label}: latency by percentile"), &series)?;
    let path = out.join(format!("{label}.svg"));
    write_file(&path, &svg)?;
    Ok(path)
}

fn write_outputs(
    out: &Path,
    report: &BenchReport,
    results: &[(String, RunResult)],
    compared: &[BenchReport],
) -> Result<Written, String> {
    let label = &report.label;
    let json_path = out.join(format!("{label}.json"));
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    write_file(&json_path, &json)?;
    let mut hgrm = Vec::new();
    for (name, result) in results {
        let file = name.replace('/', "-per-");
        let path = out.join(format!("{label}-{file}.hgrm"));
        write_file(&path, &report::hgrm(&result.all.latency))?;
        hgrm.push(path);
    }
    let mut plots = vec![write_spectrum(out, label, &report.runs, compared)?];
    if let Some(sweep) = &report.sweep {
        let svg =
            plot::sweep(&format!("cartwheel bench {label}: latency against throughput"), sweep)?;
        let path = out.join(format!("{label}-sweep.svg"));
        write_file(&path, &svg)?;
        plots.push(path);
    }

    let nodes = report.target.nodes;
    let effective = if usize::from(report.bucket.n) > nodes {
        format!(" (each key on all {nodes} node{})", if nodes == 1 { "" } else { "s" })
    } else {
        String::new()
    };
    println!(
        "cartwheel bench {label}: workload {} on {} {nodes} node{}, bucket {} ({} / {}, n={}{effective} \
         r={} w={} dw={})",
        report.workload.name,
        report.target.kind,
        if nodes == 1 { "" } else { "s" },
        report.bucket.name,
        report.bucket.engine,
        report.bucket.resolver,
        report.bucket.n,
        report.bucket.r,
        report.bucket.w,
        report.bucket.dw
    );
    let routing = match (report.schedule.routing.as_str(), report.schedule.zero_hop) {
        ("per-key", true) => "per-key routing to each key's coordinator (zero-hop)",
        ("per-key", false) => "per-key routing by hash (no ring: nodes may forward)",
        ("non-primary", _) => "each key to the last node of its preference list (nodes forward)",
        _ => "round-robin routing (nodes forward)",
    };
    let values = if report.bucket.resolver == "cart" {
        match report.workload.cart_items {
            Some(items) => format!("carts of {items} item(s) each before the run"),
            None => "carts of items".to_string(),
        }
    } else {
        format!("{} B values", report.workload.value_bytes)
    };
    println!(
        "{} keys, {values}, {}; {} connection(s) per node, {routing}; {:.1} s measured \
         after {:.1} s warm-up; latency from each request's intended start\n",
        report.workload.keys,
        report.workload.distribution,
        report.schedule.connections_per_node,
        report.schedule.duration_s,
        report.schedule.warmup_s
    );
    if let Some(load) = report.machine.load_average_1m {
        let cpus = report.machine.cpus;
        let busy =
            if load > 0.5 * cpus as f64 { " (busy: other work shares the CPUs)" } else { "" };
        println!("machine: {cpus} CPUs, load average {load:.2} at the start{busy}\n");
    }
    match &report.sweep {
        Some(sweep) => {
            print!("{}", report::sweep_table(sweep));
            let floor: Vec<_> = report.runs.iter().filter(|r| r.name == "floor").cloned().collect();
            if !floor.is_empty() {
                println!();
                print!("{}", report::table(&floor));
            }
        }
        None => print!("{}", report::table(&report.runs)),
    }
    println!();
    println!("json: {}", json_path.display());
    for path in &hgrm {
        println!("hgrm: {}", path.display());
    }
    for path in &plots {
        println!("plot: {}", path.display());
    }
    Ok(Written { json: Some(json_path), hgrm, plots, report: Some(report.clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Civil dates come out right, leap days included.
    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400 + 3661), "20000229-010101");
        assert_eq!(utc_stamp(1_700_000_000), "20231114-221320");
    }
}
