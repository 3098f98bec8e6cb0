//! The metrics endpoint, scraped and parsed as a monitoring system would: a real node on
//! ephemeral loopback ports (`listen` and `metrics_listen` both port 0), driven through the
//! real client; its `GET /metrics` answer read over a plain TCP socket and parsed by a strict
//! parser of the text format written here ([`parse`]), so what is asserted is what a scraper
//! sees. Also: the endpoint's refusals, and the binary's `--log-format json`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use cartwheel::client::{block_on, Client, WriteOptions};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::node::server::NodeHandle;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{Op, ResolverKind};

/// A node with metrics on a free port and two buckets of one replica each (so the counts
/// do not depend on other nodes): `b` (log engine, lww, dw = 1: every write syncs) and
/// `counts` (memory engine, pncounter).
fn start_node(dir: &std::path::Path) -> NodeHandle {
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.node.seeds = Vec::new();
    config.node.data_dir = dir.join("n1");
    config.buckets.clear();
    let one = |engine, resolver, dw| BucketConfig {
        n: 1,
        r: 1,
        w: 1,
        dw,
        ..BucketConfig::new(engine, resolver)
    };
    config.buckets.insert("b".into(), one(EngineKind::Log, ResolverKind::Lww, 1));
    config.buckets.insert("counts".into(), one(EngineKind::Memory, ResolverKind::Pncounter, 0));
    NodeHandle::start(config).expect("node starts")
}

/// Send `request` as it is to the endpoint and read the whole answer: (status code, head,
/// body).
fn http(address: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).expect("the answer is UTF-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .expect("a Content-Length");
    assert_eq!(length, body.len(), "Content-Length is the body's length");
    (status, head.to_string(), body.to_string())
}

/// `GET /metrics`, parsed.
fn scrape(address: SocketAddr) -> Exposition {
    let (status, head, body) = http(address, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{head}");
    parse(&body).unwrap_or_else(|e| panic!("the exposition parses: {e}\n{body}"))
}

/// A request of `k` puts to bucket `b` is counted exactly `k` times, with its latency, its
/// quorum outcome and its sync; errors are counted by kind (an unknown bucket under the
/// bounded `(unknown)` label); histograms are cumulative and agree with their counters; the
/// engine gauges agree with `status`; a second scrape after more load moved only by that
/// load. Method: two scrapes around known requests, compared series by series.
#[test]
fn a_scrape_parses_and_moves_with_load() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path());
    let metrics = node.metrics_address().expect("metrics are served");
    let address = node.address().to_string();
    let before = scrape(metrics);
    for family in [
        "cartwheel_requests",
        "cartwheel_request_duration_seconds",
        "cartwheel_requests_in_flight",
        "cartwheel_quorum",
        "cartwheel_read_repairs",
        "cartwheel_hints_queued",
        "cartwheel_hints_delivered",
        "cartwheel_transfer_keys",
        "cartwheel_anti_entropy_repairs",
        "cartwheel_engine_keys",
        "cartwheel_engine_live_bytes",
        "cartwheel_engine_dead_bytes",
        "cartwheel_syncs",
        "cartwheel_sync_duration_seconds",
        "cartwheel_connections_open",
        "cartwheel_connections_accepted",
        "cartwheel_members",
    ] {
        assert!(before.types.contains_key(family), "family {family} is exposed");
    }
    // Every configured bucket's request series exist from the start, at zero.
    for bucket in ["b", "counts", "(unknown)"] {
        for operation in ["get", "put", "delete", "update"] {
            let labels = [("bucket", bucket), ("operation", operation)];
            assert_eq!(before.value("cartwheel_requests_total", &labels), Some(0.0));
        }
    }

    let (puts, gets, deletes, updates) = (7, 3, 2, 4);
    block_on(async {
        let client = Client::connect(&address).await.unwrap();
        for i in 0..puts {
            client.put("b", format!("k{i}").as_bytes(), b"value", &[]).await.unwrap();
        }
        for i in 0..gets {
            client.get("b", format!("k{i}").as_bytes()).await.unwrap();
        }
        for i in 0..deletes {
            let read = client.get("b", format!("k{i}").as_bytes()).await.unwrap();
            client.delete("b", format!("k{i}").as_bytes(), &read.context).await.unwrap();
        }
        for _ in 0..updates {
            client
                .update("counts", b"c", &[Op::CounterIncrement(1)], &[], &WriteOptions::default())
                .await
                .unwrap();
        }
        let unknown = client.get("no-such-bucket", b"k").await;
        assert!(matches!(unknown, Err(cartwheel::Error::UnknownBucket(_))), "{unknown:?}");
        let wrong = client
            .update("b", b"k", &[Op::CounterIncrement(1)], &[], &WriteOptions::default())
            .await;
        assert!(wrong.is_err(), "a counter operation on an lww bucket is refused");
    });
    let status =
        block_on(async { Client::connect(&address).await.unwrap().status().await }).unwrap();
    let after = scrape(metrics);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels).unwrap_or(0.0) - before.value(name, labels).unwrap_or(0.0)
    };
    let request = |bucket, operation| [("bucket", bucket), ("operation", operation)];

    // Requests, by bucket and operation: the gets before each delete count too.
    assert_eq!(moved("cartwheel_requests_total", &request("b", "put")), puts as f64);
    assert_eq!(moved("cartwheel_requests_total", &request("b", "get")), (gets + deletes) as f64);
    assert_eq!(moved("cartwheel_requests_total", &request("b", "delete")), deletes as f64);
    assert_eq!(moved("cartwheel_requests_total", &request("b", "update")), 1.0);
    assert_eq!(moved("cartwheel_requests_total", &request("counts", "update")), updates as f64);
    assert_eq!(moved("cartwheel_requests_total", &request("(unknown)", "get")), 1.0);
    // The latency histograms count the same requests, and are cumulative.
    for (bucket, operation, count) in
        [("b", "put", puts), ("b", "get", gets + deletes), ("counts", "update", updates)]
    {
        let labels = request(bucket, operation);
        let histogram = "cartwheel_request_duration_seconds";
        assert_eq!(moved(&format!("{histogram}_count"), &labels), count as f64);
        assert!(after.value(&format!("{histogram}_sum"), &labels).unwrap() > 0.0);
        after.check_histogram(histogram, &labels);
    }
    // Errors, by kind.
    let error = |bucket, operation, kind| {
        moved(
            "cartwheel_request_errors_total",
            &[("bucket", bucket), ("operation", operation), ("kind", kind)],
        )
    };
    assert_eq!(error("(unknown)", "get", "unknown_bucket"), 1.0);
    assert_eq!(error("b", "update", "wrong_operation"), 1.0);
    assert_eq!(after.sum("cartwheel_request_errors_total"), 2.0, "no other error");
    // Quorum outcomes: every read and write here met its quorum (of one).
    let quorum = |operation, outcome| {
        moved(
            "cartwheel_quorum_total",
            &[("bucket", "b"), ("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(quorum("write", "met"), (puts + deletes) as f64);
    assert_eq!(quorum("read", "met"), (gets + deletes) as f64);
    assert_eq!(quorum("write", "not_met") + quorum("write", "timeout"), 0.0);
    // Every write to `b` (dw = 1) waited for a sync; concurrent ones may share one.
    let syncs = moved("cartwheel_syncs_total", &[]);
    assert!((1.0..=(puts + deletes) as f64).contains(&syncs), "{syncs} syncs");
    assert_eq!(moved("cartwheel_sync_duration_seconds_count", &[]), syncs);
    after.check_histogram("cartwheel_sync_duration_seconds", &[]);
    // Nothing in flight between requests; the clients' connections were counted.
    assert_eq!(after.value("cartwheel_requests_in_flight", &[]), Some(0.0));
    assert!(after.value("cartwheel_connections_open", &[]).is_some());
    assert!(moved("cartwheel_connections_accepted_total", &[]) >= 2.0);
    assert_eq!(after.value("cartwheel_members", &[("state", "up")]), Some(1.0));
    // The engine gauges say what `status` says.
    for bucket in &status.buckets {
        let labels = [("bucket", bucket.name.as_str())];
        assert_eq!(after.value("cartwheel_engine_keys", &labels), Some(bucket.entries as f64));
        assert_eq!(
            after.value("cartwheel_engine_live_bytes", &labels),
            Some(bucket.live_bytes as f64)
        );
    }
    assert!(after.value("cartwheel_engine_keys", &[("bucket", "b")]).unwrap() >= 5.0);

    // Later load moves the counters by exactly that load, and nothing else.
    block_on(async {
        let client = Client::connect(&address).await.unwrap();
        client.put("b", b"later", b"v", &[]).await.unwrap();
    });
    let later = scrape(metrics);
    let labels = request("b", "put");
    let delta = later.value("cartwheel_requests_total", &labels).unwrap()
        - after.value("cartwheel_requests_total", &labels).unwrap();
    assert_eq!(delta, 1.0);
    assert_eq!(
        later.value("cartwheel_requests_total", &request("counts", "update")),
        after.value("cartwheel_requests_total", &request("counts", "update"))
    );
    node.stop().unwrap();
}

/// The README's "Metrics and logs" table names exactly the families the endpoint exposes,
/// with their types. Method: the table's rows against a scrape of a fresh node.
#[test]
fn the_readme_lists_every_metric() {
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("\n## Metrics and logs\n").expect("the section")..];
    let documented: BTreeMap<String, String> = section
        .lines()
        .take_while(|line| !line.starts_with("Logs go to"))
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| `")?.split('|');
            let name = cells.next()?.trim().trim_end_matches('`').to_string();
            let kind = cells.next()?.trim().to_string();
            // OpenMetrics names a counter's family without its `_total`.
            let family = match kind.as_str() {
                "counter" => name.strip_suffix("_total").expect("a counter ends in _total").into(),
                _ => name,
            };
            Some((family, kind))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path());
    // An error kind's series (and so its family) appears with the first error.
    block_on(async {
        let client = Client::connect(&node.address().to_string()).await.unwrap();
        assert!(client.get("no-such-bucket", b"k").await.is_err());
    });
    let exposed = scrape(node.metrics_address().unwrap()).types;
    assert_eq!(documented, exposed, "README table (left) against the scrape (right)");
    node.stop().unwrap();
}

/// The endpoint answers only `GET /metrics`: another path is 404, another method 405, and
/// a request that is not HTTP, or a head over 8 KiB, 400; each answer closes the connection.
#[test]
fn the_endpoint_refuses_what_it_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path());
    let metrics = node.metrics_address().unwrap();
    let status = |request: &[u8]| http(metrics, request).0;
    assert_eq!(status(b"GET /metrics HTTP/1.0\r\n\r\n"), 200);
    assert_eq!(status(b"GET /metrics?name=x HTTP/1.1\r\n\r\n"), 200);
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(status(b"GET /keys HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(status(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 405);
    assert_eq!(status(b"DELETE /metrics HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(status(b"hello\r\n\r\n"), 400);
    assert_eq!(status(b"GET /metrics SPDY/3\r\n\r\n"), 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while huge.len() < 10_000 {
        huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    huge.extend_from_slice(b"\r\n");
    assert_eq!(status(&huge), 400);
    // Still serving after all that.
    scrape(metrics);
    node.stop().unwrap();
}

/// `cartwheel --log-format json serve` writes one JSON object a line on stderr, each with a
/// level and fields; the default is text. Method: start the binary on free ports, read its
/// stderr until it says it is serving, stop it.
#[test]
fn log_format_json_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = dir.path().join("n1.toml");
    let data = toml_string(&dir.path().join("n1").display().to_string());
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"n1\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {data}\n\
             seeds = [\"127.0.0.1:{port}\"]\n[security]\nmode = \"insecure\"\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::binary())
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let serving = line.contains("\"serving\"");
        lines.push(line);
        if serving || lines.len() > 200 {
            break;
        }
    }
    let _ = child.kill();
    child.wait().unwrap();
    assert!(lines.iter().any(|l| l.contains("\"serving\"")), "the node said it serves: {lines:?}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is JSON: {e}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["fields"]["message"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
    }
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A parsed exposition: every sample by name and labels, and every family's type.
#[derive(Debug, Default)]
struct Exposition {
    /// (sample name, labels sorted by name) → value.
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
    /// Family name → type.
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        labels.sort();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    /// The sum of every sample named `name`, whatever its labels.
    fn sum(&self, name: &str) -> f64 {
        self.samples.iter().filter(|((n, _), _)| n == name).map(|(_, v)| v).sum()
    }

    /// The histogram `name` with `labels`: its buckets are cumulative (non-decreasing as
    /// the bound grows), end with `+Inf`, and that bucket equals `_count`.
    fn check_histogram(&self, name: &str, labels: &[(&str, &str)]) {
        assert_eq!(self.types.get(name).map(String::as_str), Some("histogram"), "{name}");
        let mut wanted: Vec<(String, String)> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        wanted.sort();
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|((n, l), _)| {
                n == &bucket_name
                    && l.iter().filter(|(k, _)| k != "le").cloned().collect::<Vec<_>>() == wanted
            })
            .map(|((_, l), v)| {
                let le = &l.iter().find(|(k, _)| k == "le").expect("a bucket has le").1;
                (parse_number(le).expect("le is a number"), *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 2, "{name}{labels:?} has buckets");
        assert_eq!(buckets.last().unwrap().0, f64::INFINITY, "the last bucket is +Inf");
        for pair in buckets.windows(2) {
            assert!(pair[0].1 <= pair[1].1, "{name}{labels:?} is cumulative: {buckets:?}");
        }
        let count = self.value(&format!("{name}_count"), labels).expect("a _count");
        assert_eq!(buckets.last().unwrap().1, count, "+Inf equals _count");
    }
}

/// Parse the OpenMetrics text format strictly: `# TYPE`/`# HELP`/`# UNIT` lines for a family
/// before its samples, each sample's name its family's name or one of the suffixes its type
/// allows, label values quoted with `\\`, `\"` and `\n` escapes, numeric values, no series
/// twice, and `# EOF` as the last line.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let body = text.strip_suffix("# EOF\n").ok_or("the exposition ends with # EOF")?;
    let mut family: Option<(String, String)> = None;
    for (number, line) in body.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}: {line:?}", number + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            check_name(name).map_err(at)?;
            match kind {
                "TYPE" => {
                    let kind = parts.next().ok_or_else(|| at("no type".into()))?;
                    let known = ["counter", "gauge", "histogram", "summary", "info", "unknown"];
                    if !known.contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if out.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at(format!("family {name} declared twice")));
                    }
                    family = Some((name.to_string(), kind.to_string()));
                }
                "HELP" | "UNIT" => {
                    if family.as_ref().is_some_and(|(f, _)| f != name)
                        && out.types.contains_key(name)
                    {
                        return Err(at("metadata for an earlier family".into()));
                    }
                }
                _ => return Err(at(format!("unknown comment {kind}"))),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line).map_err(at)?;
        let (family_name, kind) =
            family.as_ref().ok_or_else(|| at("a sample before any TYPE".into()))?;
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["_count", "_sum", "_created", ""],
            _ => &[""],
        };
        if !suffixes.iter().any(|s| name == format!("{family_name}{s}")) {
            return Err(at(format!("{name} is not a sample of the {kind} {family_name}")));
        }
        if kind == "counter" && value < 0.0 {
            return Err(at("a negative counter".into()));
        }
        if out.samples.insert((name, labels), value).is_some() {
            return Err(at("the same series twice".into()));
        }
    }
    Ok(out)
}

type Sample = (String, Vec<(String, String)>, f64);

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(mut after) = rest.strip_prefix('{') {
        loop {
            if let Some(closed) = after.strip_prefix('}') {
                rest = closed;
                break;
            }
            let eq = after.find('=').ok_or("a label without =")?;
            let label = &after[..eq];
            check_name(label)?;
            after = after[eq + 1..].strip_prefix('"').ok_or("a label value is not quoted")?;
            let mut value = String::new();
            let mut chars = after.chars();
            loop {
                match chars.next().ok_or("unterminated label value")? {
                    '"' => break,
                    '\\' => match chars.next().ok_or("unterminated escape")? {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("bad escape \\{other}")),
                    },
                    c => value.push(c),
                }
            }
            after = chars.as_str();
            if labels.iter().any(|(l, _)| l == label) {
                return Err(format!("label {label} twice"));
            }
            labels.push((label.to_string(), value));
            if let Some(next) = after.strip_prefix(',') {
                after = next;
            } else if !after.starts_with('}') {
                return Err("labels must be separated by , and end with }".into());
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value.contains(' ') {
        return Err("a timestamp or trailing text".into());
    }
    let value = parse_number(value).ok_or_else(|| format!("{value:?} is not a number"))?;
    labels.sort();
    Ok((name.to_string(), labels, value))
}

fn parse_number(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') => text.parse().ok(),
        _ => None,
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric or label name"))
    }
}

/// The parser refuses what is not the format, so the test above cannot pass on garbage.
#[test]
fn the_parser_is_strict() {
    let good = "# TYPE x counter\n# HELP x An x.\nx_total{a=\"1\",b=\"q\\\"\"} 3\n# EOF\n";
    let parsed = parse(good).unwrap();
    assert_eq!(parsed.value("x_total", &[("b", "q\""), ("a", "1")]), Some(3.0));
    for bad in [
        "# TYPE x counter\nx_total 3\n",             // no EOF
        "x_total 3\n# EOF\n",                        // no TYPE
        "# TYPE x counter\nx 3\n# EOF\n",            // a counter sample without _total
        "# TYPE x counter\nx_total 3 17\n# EOF\n",   // trailing text
        "# TYPE x counter\nx_total{a=1} 3\n# EOF\n", // unquoted value
        "# TYPE x counter\nx_total{a=\"1\"} 3\nx_total{a=\"1\"} 4\n# EOF\n", // twice
        "# TYPE x gauge\nx abc\n# EOF\n",            // not a number
        "# TYPE x counter\nx_total -1\n# EOF\n",     // negative counter
        "# TYPE x counter\nx_total{a=\"1\" 3\n# EOF\n", // unterminated labels
    ] {
        assert!(parse(bad).is_err(), "{bad:?} is refused");
    }
}
