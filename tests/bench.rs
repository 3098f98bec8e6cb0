//! `cartwheel bench` end to end: the open-loop generator against a real loopback server, and
//! the command's files. Every assertion on time has a wide margin: these tests prove the
//! mechanism (open loop, no coordinated omission, the documented output), not the speed of
//! the machine they run on.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cartwheel::bench::floor::{EchoConnection, EchoServer};
use cartwheel::bench::generator::{self, Outcome, Pacer, Schedule};
use cartwheel::bench::{execute, BenchArgs};
use cartwheel::cli::{Cli, Command};
use clap::Parser;

fn bench_args(extra: &[&str]) -> BenchArgs {
    let mut argv = vec!["cartwheel", "bench"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("the test's command line parses").command {
        Command::Bench(args) => *args,
        other => panic!("not a bench command: {other:?}"),
    }
}

/// Drive `schedule` against an echo server over `connections` connections, calling
/// `during(&server)` once the run started.
fn echo_run(
    schedule: Schedule,
    connections: usize,
    during: impl FnOnce(Rc<EchoServer>) + 'static,
) -> generator::RunResult {
    let server = Rc::new(EchoServer::start().expect("an echo server starts on loopback"));
    cartwheel::client::block_on(async move {
        let mut links = Vec::new();
        for _ in 0..connections {
            links.push(EchoConnection::connect(server.address()).await.unwrap());
        }
        tokio::task::spawn_local({
            let server = Rc::clone(&server);
            async move { during(server) }
        });
        let frame: Arc<[u8]> = vec![7u8; 1024].into();
        let mut pacer = Pacer::new();
        let issue = move |i: u64| {
            let trip = links[i as usize % links.len()].round_trip(Arc::clone(&frame));
            async move { Outcome { op: "echo", error: trip.await.err() } }
        };
        generator::run(&schedule, &mut pacer, issue, |_| {}).await
    })
}

/// The generator keeps its offered rate against a fast server: every scheduled request is
/// sent, answered, and the achieved rate is within 15% of the offered 2000/s.
#[test]
fn offered_rate_is_kept() {
    let schedule = Schedule::new(2000.0, Duration::from_millis(200), Duration::from_secs(2), 256);
    let result = echo_run(schedule, 2, |_| {});
    assert_eq!(result.requests, 4000);
    assert_eq!(result.answered, 4000, "errors: {:?}", result.errors);
    assert_eq!(result.error_count(), 0);
    let achieved = result.achieved_rate_per_s();
    assert!((1700.0..=2300.0).contains(&achieved), "achieved {achieved:.0}/s for 2000/s offered");
    // Requests left on time: the median send lag is far below one interval of tokio's
    // millisecond timer, the figure a generator without a precise pacer would show.
    let lag_p50 = result.send_lag.value_at_quantile(0.5);
    assert!(lag_p50 < 20_000_000, "median send lag {lag_p50} ns");
}

/// A server that stalls for 100 ms shows the stall in the tail: about a hundred requests
/// were due during it, so p99 and above see tens of milliseconds. Latency from the actual
/// send (`service`, what a closed-loop tool reports) hides it, with only the two requests in
/// flight catching the stall, so its p99 stays far below. That is coordinated omission, and
/// this test fails if latency is measured from the send.
#[test]
fn stall_shows_in_the_tail() {
    let schedule = Schedule::new(1000.0, Duration::from_millis(200), Duration::from_secs(3), 2);
    let result = echo_run(schedule, 1, |server| {
        std::mem::drop(tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            server.for_testing_stall(Duration::from_millis(100));
        }));
    });
    assert_eq!(result.error_count(), 0, "{:?}", result.errors);
    let ms = |ns: u64| ns as f64 / 1e6;
    let latency_p99 = ms(result.all.latency.value_at_quantile(0.99));
    let latency_p999 = ms(result.all.latency.value_at_quantile(0.999));
    let latency_max = ms(result.all.latency.max());
    let service_p99 = ms(result.all.service.value_at_quantile(0.99));
    assert!(latency_p99 >= 50.0, "p99 {latency_p99} ms hides the 100 ms stall");
    assert!(latency_p999 >= 80.0, "p99.9 {latency_p999} ms hides the 100 ms stall");
    assert!(latency_max >= 90.0, "max {latency_max} ms");
    // The same stall, measured from the send, nearly vanishes: well under half the p99.
    // (A ratio rather than a bound, so that a busy machine, which slows both, does not fail
    // it.)
    assert!(
        service_p99 < latency_p99 / 2.0,
        "measured from the send, p99 is {service_p99} ms against {latency_p99} ms: the stall \
         should hide there"
    );
    assert!(result.late >= 50, "requests due during the stall waited: {}", result.late);
}

/// A short run against one embedded node writes the JSON file with the documented fields,
/// an `.hgrm` file per run and the plot; `--compare --plot-only` reads the JSON back.
#[test]
fn json_output_holds_documented_fields() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let args = bench_args(&[
        "--nodes",
        "1",
        "--rate",
        "400",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--keys",
        "200",
        "--floor",
        "--out",
        dir,
        "--label",
        "t",
    ]);
    let written = execute(&args, vec!["cartwheel".into(), "bench".into()]).unwrap();
    let json_path = written.json.unwrap();
    assert_eq!(json_path, out.path().join("t.json"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json["format"], "cartwheel-bench");
    assert_eq!(json["version"], 1);
    assert_eq!(json["label"], "t");
    for field in ["command", "unix_time_s", "machine", "target", "bucket", "workload", "schedule"] {
        assert!(!json[field].is_null(), "missing {field}");
    }
    assert_eq!(json["target"]["kind"], "embedded");
    assert_eq!(json["target"]["nodes"], 1);
    assert_eq!(json["bucket"]["name"], "bench");
    assert_eq!(json["bucket"]["engine"], "log", "the default engine is what users get");
    assert_eq!(json["bucket"]["resolver"], "lww");
    assert_eq!(json["workload"]["name"], "a");
    assert_eq!(json["schedule"]["rate_per_s"], 400.0);
    assert!(json["sweep"].is_null());
    let runs = json["runs"].as_array().unwrap();
    let names: Vec<_> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["store", "floor"]);
    for run in runs {
        for field in ["offered_rate_per_s", "achieved_rate_per_s", "measured_s"] {
            assert!(run[field].as_f64().unwrap() > 0.0, "{field} of {}", run["name"]);
        }
        assert_eq!(run["requests"], 400);
        for field in ["answered", "late", "unfinished", "not_issued"] {
            assert!(run[field].is_u64(), "{field}");
        }
        assert!(run["errors"].is_object());
        for summary in ["latency", "service", "send_lag"] {
            let p = &run[summary];
            for field in
                ["count", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us"]
            {
                assert!(p[field].is_number(), "{summary}.{field}");
            }
            assert!(p["spectrum"].as_array().unwrap().len() > 5);
        }
        assert!(
            run["latency"]["p50_us"].as_f64().unwrap()
                <= run["latency"]["p999_us"].as_f64().unwrap()
        );
    }
    let store_ops = runs[0]["ops"].as_object().unwrap();
    assert!(store_ops.contains_key("read") && store_ops.contains_key("update"), "{store_ops:?}");
    assert_eq!(runs[0]["answered"], 400, "errors: {}", runs[0]["errors"]);

    assert_eq!(written.hgrm.len(), 2);
    let hgrm = std::fs::read_to_string(&written.hgrm[0]).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(hgrm.contains("#[Max     ="));
    let svg = std::fs::read_to_string(&written.plots[0]).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("floor: p99.9"));

    let compare = bench_args(&[
        "--compare",
        json_path.to_str().unwrap(),
        "--plot-only",
        "--out",
        dir,
        "--label",
        "c",
    ]);
    let compared = execute(&compare, Vec::new()).unwrap();
    let svg = std::fs::read_to_string(&compared.plots[0]).unwrap();
    assert!(svg.contains("t store") && svg.contains("t floor"));
}

/// `--reference` adds a run of the bare reference client after the store run, with the same
/// schedule and operations: every request sent, answered without error and measured, its
/// report fields filled from real measurements (counts match, percentiles ordered).
#[test]
fn reference_run_reports_real_fields() {
    let out = tempfile::tempdir().unwrap();
    let args = bench_args(&[
        "--nodes",
        "2",
        "--rate",
        "400",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--keys",
        "200",
        "--reference",
        "--out",
        out.path().to_str().unwrap(),
        "--label",
        "r",
    ]);
    let written = execute(&args, Vec::new()).unwrap();
    let report = written.report.unwrap();
    let names: Vec<_> = report.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["store", "reference"]);
    let (store, reference) = (&report.runs[0], &report.runs[1]);
    assert_eq!(reference.requests, 400);
    assert_eq!(reference.answered, 400, "errors: {:?}", reference.errors);
    assert_eq!(reference.error_count(), 0, "{:?}", reference.errors);
    assert_eq!(reference.late, 0, "the reference has no in-flight bound");
    assert!(reference.achieved_rate_per_s > 0.0 && reference.measured_s > 0.0);
    for p in [&reference.latency, &reference.service, &reference.send_lag] {
        assert_eq!(p.count, 400);
        assert!(p.p50_us <= p.p999_us && p.p999_us <= p.max_us, "{p:?}");
        assert!(p.spectrum.len() > 5);
    }
    assert!(reference.latency.p50_us > 0.0 && reference.service.p50_us > 0.0);
    // Latency runs from the intended start, service from the send: never shorter.
    assert!(reference.latency.max_us >= reference.service.max_us);
    // The same seeded operations as the store run, on the same keys.
    for op in ["read", "update"] {
        let (a, b) = (&store.ops[op], &reference.ops[op]);
        assert_eq!(a.latency.count, b.latency.count, "{op}");
    }
    assert!(written.hgrm.iter().any(|p| p.ends_with("r-reference.hgrm")));
}

/// `--cart-items` fills each cart before the run: the run on carts of 80 items is clean, says
/// their size, and reports the CPU the process used (the generator's thread apart, a part).
#[test]
fn cart_runs_on_filled_carts_and_reports_cpu() {
    let out = tempfile::tempdir().unwrap();
    let args = bench_args(&[
        "--nodes",
        "1",
        "--workload",
        "cart",
        "--cart-items",
        "80",
        "--rate",
        "300",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--keys",
        "20",
        "--out",
        out.path().to_str().unwrap(),
        "--label",
        "c",
    ]);
    let report = execute(&args, Vec::new()).unwrap().report.unwrap();
    assert_eq!(report.workload.cart_items, Some(80));
    let store = &report.runs[0];
    assert_eq!(store.answered, 300);
    assert_eq!(store.error_count(), 0, "{:?}", store.errors);
    assert!(store.ops.contains_key("cart-add") && store.ops.contains_key("cart-show"));
    let (cpu, generator) = (store.cpu_s.unwrap(), store.generator_cpu_s.unwrap());
    assert!(cpu > 0.0 && generator > 0.0 && generator <= cpu, "{cpu} {generator}");
}

/// A sweep runs its steps in order and reports them, with the highest passing rate.
#[test]
fn sweep_reports_steps() {
    let out = tempfile::tempdir().unwrap();
    let args = bench_args(&[
        "--nodes",
        "1",
        "--sweep",
        "--sweep-start",
        "200",
        "--sweep-step",
        "200",
        "--sweep-max",
        "400",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--keys",
        "100",
        "--p999-target",
        "1000",
        "--out",
        out.path().to_str().unwrap(),
        "--label",
        "s",
    ]);
    let written = execute(&args, Vec::new()).unwrap();
    let report = written.report.unwrap();
    let sweep = report.sweep.unwrap();
    let offered: Vec<_> = sweep.steps.iter().map(|s| s.offered_rate_per_s).collect();
    assert_eq!(offered, [200.0, 400.0]);
    // Whether a step passes depends on the machine (a busy one may fall behind even these
    // rates); what must hold is that each verdict follows from the step's own figures and
    // that the best rate is the highest passing one.
    for step in &sweep.steps {
        let overloaded =
            step.errors > 0 || step.achieved_rate_per_s < 0.95 * step.offered_rate_per_s;
        assert_eq!(step.overloaded, overloaded, "{step:?}");
        assert_eq!(step.passed, !overloaded && step.p999_us <= 1_000_000.0, "{step:?}");
        assert!(step.p50_us <= step.p99_us && step.p99_us <= step.p999_us, "{step:?}");
        assert!(step.p999_us <= step.max_us, "{step:?}");
    }
    let best =
        sweep.steps.iter().filter(|s| s.passed).map(|s| s.offered_rate_per_s).reduce(f64::max);
    assert_eq!(sweep.best_rate_per_s, best);
    assert!(sweep.steps[0].achieved_rate_per_s > 0.0, "the first step ran");
    assert_eq!(written.plots.len(), 2);
    assert!(out.path().join("s-sweep.svg").exists());
}

/// The cart workload adds, changes, removes and shows items on a `cart` bucket without
/// errors.
#[test]
fn cart_workload_runs() {
    let out = tempfile::tempdir().unwrap();
    let args = bench_args(&[
        "--nodes",
        "2",
        "--workload",
        "cart",
        "--rate",
        "400",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--keys",
        "50",
        "--out",
        out.path().to_str().unwrap(),
        "--label",
        "cart",
    ]);
    let report = execute(&args, Vec::new()).unwrap().report.unwrap();
    assert_eq!(report.bucket.resolver, "cart");
    let store = &report.runs[0];
    assert_eq!(store.error_count(), 0, "{:?}", store.errors);
    for op in ["cart-add", "cart-set-quantity", "cart-remove", "cart-show"] {
        assert!(store.ops.contains_key(op), "no {op} in {:?}", store.ops.keys());
    }
}

/// Bad arguments are refused with a reason before anything starts.
#[test]
fn bad_arguments_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--engine", "memory", "--dw", "1"], "memory engine"),
        (&["--reference", "--workload", "cart"], "--reference"),
        (&["--workload", "cart", "--resolver", "lww"], "--resolver cart"),
        (&["--rate", "0"], "rate"),
        (&["--engine", "rocks"], "unknown engine"),
    ];
    for (extra, reason) in cases {
        let mut argv = vec!["--out", dir];
        argv.extend_from_slice(extra);
        let err = execute(&bench_args(&argv), Vec::new()).unwrap_err();
        assert!(err.contains(reason), "{extra:?}: {err}");
    }
}
