//! # Running nodes from the command line: `serve` (one node, in this process) and `up` (a
//! local cluster, each node a process of its own, with its pid and config file printed so one
//! can be stopped and started again). Both stop cleanly on Ctrl-C or SIGTERM.

use super::*;

pub(super) fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match path {
        Some(path) => match Config::load(&path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("cartwheel: bad configuration: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        },
        None => Config::embedded(),
    };
    run_until_ctrl_c(vec![config])
}

pub(super) fn up(nodes: u16, port: u16, data_dir: PathBuf, log_format: LogFormat) -> ExitCode {
    if nodes == 0 || u32::from(port) + u32::from(nodes) > 65_536 {
        eprintln!("cartwheel: --nodes must be at least 1 and the ports must fit below 65536");
        return ExitCode::from(EXIT_FAILED);
    }
    let security = SecurityConfig::development(&data_dir);
    let prepared = (|| {
        std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let secret = crate::security::Secret::load_or_create(&security.secret_file)
            .map_err(|e| e.to_string())?;
        let keys = crate::security::ClusterKeys::derive(&secret).map_err(|e| e.to_string())?;
        let credentials = data_dir.join(crate::security::ADMIN_CREDENTIALS_FILE);
        keys.ensure_admin_credentials(&credentials).map_err(|e| e.to_string())?;
        std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))
    })();
    let exe = match prepared {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cartwheel: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let mut children: Vec<UpNode> = Vec::new();
    for i in 0..nodes {
        let id = format!("n{}", i + 1);
        let address = format!("127.0.0.1:{}", port + i);
        let metrics = up_metrics_port(port, nodes).map(|first| format!("127.0.0.1:{}", first + i));
        // A busy metrics port must not keep the node from starting: it then serves none.
        let metrics = metrics.filter(|address| {
            let free = std::net::TcpListener::bind(address.as_str()).is_ok();
            if !free {
                eprintln!("cartwheel: {address} is in use; node {id} serves no metrics");
            }
            free
        });
        let metrics_line =
            metrics.as_ref().map(|m| format!("metrics_listen = \"{m}\"\n")).unwrap_or_default();
        let config = data_dir.join(format!("{id}.toml"));
        let quoted = |path: &Path| toml::Value::from(path.display().to_string()).to_string();
        let text = format!(
            "# written by `cartwheel up`; start this node alone with\n\
             # cartwheel serve --config {config}\n\
             [node]\nid = \"{id}\"\nlisten = \"{address}\"\ndata_dir = {data}\n\
             seeds = [\"127.0.0.1:{port}\"]\n{metrics_line}\n[security]\nsecret_file = {secret}\n",
            config = config.display(),
            data = quoted(&data_dir.join(&id)),
            secret = quoted(&security.secret_file),
        );
        if let Err(e) = std::fs::write(&config, text) {
            eprintln!("cartwheel: {}: {e}", config.display());
            return stop_all(children, ExitCode::from(EXIT_UNREACHABLE));
        }
        let spawned = std::process::Command::new(&exe)
            .args(["--log-format", log_format.name(), "serve", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => children.push(UpNode { id, address, metrics, config, child }),
            Err(e) => {
                eprintln!("cartwheel: cannot start node {id}: {e}");
                return stop_all(children, ExitCode::from(EXIT_UNREACHABLE));
            }
        }
    }
    for node in &mut children {
        if let Err(e) = node.wait_listening() {
            eprintln!("cartwheel: node {} did not start: {e} (see its log above)", node.id);
            return stop_all(children, ExitCode::from(EXIT_UNREACHABLE));
        }
        let metrics = node
            .metrics
            .as_ref()
            .map(|m| format!(", metrics http://{m}/metrics"))
            .unwrap_or_default();
        out!(
            "node {} pid {} listening on {}{metrics} (config {}, data in {})",
            node.id,
            node.child.id(),
            node.address,
            node.config.display(),
            data_dir.join(&node.id).display()
        );
    }
    // W copies need W nodes: wait until every node owns its share of the ring.
    let addresses: Vec<String> = children.iter().map(|n| n.address.clone()).collect();
    let credentials = data_dir.join(crate::security::ADMIN_CREDENTIALS_FILE);
    match wait_settled(&addresses, &credentials) {
        Ok(()) => out!("ring settled: {} nodes own partitions", addresses.len()),
        Err(e) => eprintln!("cartwheel: {e}; writes may fail with quorumNotMet until it has"),
    }
    out!(
        "TLS on; cluster secret in {}, admin credentials in {} (client commands read them from \
         there by default)",
        security.secret_file.display(),
        data_dir.join(crate::security::ADMIN_CREDENTIALS_FILE).display()
    );
    out!("stop one node: kill -INT PID (or kill -9 PID); start it again: cartwheel serve --config FILE");
    out!("try: {}", try_hint(&Config::embedded()));
    out!("Ctrl-C stops them all.");
    block_on(stop_signal());
    stop_all(children, ExitCode::SUCCESS)
}

/// Wait (at most 60 s) until the node at the first address sees every node up, owning
/// partitions, and no ring change in flight.
fn wait_settled(addresses: &[String], credentials: &Path) -> Result<(), String> {
    let credentials = crate::client::Credentials::load(credentials)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    block_on(async {
        loop {
            if let Ok(client) =
                crate::client::Client::connect_with(&addresses[0], &credentials).await
            {
                if let Ok(status) = client.status().await {
                    let settled = status.members.len() == addresses.len()
                        && status.transfers.transition == 0
                        && status.members.iter().all(|m| m.state == "up" && m.partitions_owned > 0);
                    if settled {
                        return Ok(());
                    }
                }
            }
            if std::time::Instant::now() > deadline {
                return Err("the ring did not settle within 60 s".to_string());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

/// How far above its client port `up` puts a node's metrics endpoint: 7401 serves its
/// metrics on 9401.
pub const UP_METRICS_PORT_OFFSET: u16 = 2_000;

/// The metrics port of `up`'s first node, when every node's fits below 65536.
fn up_metrics_port(port: u16, nodes: u16) -> Option<u16> {
    let first = port.checked_add(UP_METRICS_PORT_OFFSET)?;
    first.checked_add(nodes).map(|_| first)
}

/// Wait for Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            if let Err(e) = result {
                eprintln!("cartwheel: cannot wait for Ctrl-C: {e}");
            }
        }
        () = terminate => {}
    }
}

/// One node `up` runs as a process of its own.
struct UpNode {
    id: String,
    address: String,
    /// Its metrics endpoint's address, if it has one.
    metrics: Option<String>,
    config: PathBuf,
    child: std::process::Child,
}

impl UpNode {
    /// Wait until the node accepts connections (at most 30 s), or says why it will not.
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status})"));
            }
            if std::net::TcpStream::connect(&self.address).is_ok() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("nothing listens on {} after 30 s", self.address));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Stop every node `up` started that still runs (SIGINT, as Ctrl-C would; SIGKILL after
/// 20 s), and wait for them.
fn stop_all(children: Vec<UpNode>, mut code: ExitCode) -> ExitCode {
    for node in &children {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &node.child.id().to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for mut node in children {
        loop {
            match node.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                _ => {
                    eprintln!("cartwheel: node {} did not stop; killed", node.id);
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    code = ExitCode::from(EXIT_FAILED);
                    break;
                }
            }
        }
    }
    code
}

/// What to try first against a node with `config`'s buckets: a put and a get on a bucket
/// that takes puts, else an update of a CRDT bucket; always a bucket that exists.
fn try_hint(config: &Config) -> String {
    use cartwheel_resolvers::ResolverKind as K;
    let find = |kinds: &[K]| {
        let preferred = config.buckets.get("default").filter(|b| kinds.contains(&b.resolver));
        preferred.map(|_| "default").or_else(|| {
            config
                .buckets
                .iter()
                .find(|(_, b)| kinds.contains(&b.resolver))
                .map(|(n, _)| n.as_str())
        })
    };
    if let Some(bucket) = find(&[K::Lww, K::Siblings]) {
        return format!("cartwheel put {bucket} greeting hello && cartwheel get {bucket} greeting");
    }
    if let Some(bucket) = find(&[K::Cart]) {
        return format!("cartwheel cart --bucket {bucket} add alice apple 2");
    }
    if let Some(bucket) = find(&[K::Pncounter]) {
        return format!("cartwheel counter --bucket {bucket} incr visits");
    }
    if let Some(bucket) = find(&[K::Orset]) {
        return format!("cartwheel set --bucket {bucket} add tags rust");
    }
    "cartwheel status".to_string()
}

/// Start every node, print where they listen, wait for Ctrl-C, stop them all cleanly.
fn run_until_ctrl_c(configs: Vec<Config>) -> ExitCode {
    let hint = configs.first().map(try_hint);
    let configs_security = configs
        .first()
        .map(|c| c.security.clone())
        .filter(|s| s.mode == crate::config::SecurityMode::Tls);
    let mut nodes = Vec::new();
    for config in configs {
        let id = config.node.id.clone();
        let data_dir = config.node.data_dir.display().to_string();
        match NodeHandle::start(config) {
            Ok(node) => {
                out!("node {id} listening on {} (data in {data_dir})", node.address());
                nodes.push(node);
            }
            Err(e) => {
                eprintln!("cartwheel: node {id} cannot start: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        }
    }
    if let Some(config) = configs_security.as_ref() {
        let credentials =
            config.secret_file.with_file_name(crate::security::ADMIN_CREDENTIALS_FILE);
        out!(
            "TLS on; cluster secret in {}, admin credentials in {} (client commands read them \
             from there by default)",
            config.secret_file.display(),
            credentials.display()
        );
    } else {
        out!("INSECURE MODE: plain TCP, no authentication");
    }
    if let Some(hint) = hint {
        out!("try: {hint}");
    }
    out!("Ctrl-C stops.");
    let _ = std::io::stdout().flush();
    block_on(stop_signal());
    let mut code = ExitCode::SUCCESS;
    for node in nodes {
        if let Err(e) = node.stop() {
            eprintln!("cartwheel: node stopped with an error: {e}");
            code = ExitCode::from(EXIT_FAILED);
        }
    }
    code
}

/// `cartwheel sim`: each scenario of [`crate::sim`] with the user's buckets, one line of
/// figures each; exit code 1 if a property failed.
pub(super) fn simulate(args: &SimArgs) -> ExitCode {
    use crate::sim::{self, SimConfig};
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("cartwheel: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        },
        None => {
            let mut config = Config::embedded();
            config.cluster.gossip_interval_ms = 100;
            config
        }
    };
    if args.nodes < 2 {
        eprintln!("cartwheel: sim needs at least 2 nodes");
        return ExitCode::from(EXIT_FAILED);
    }
    let make = || SimConfig::with_config(args.nodes, args.seed, config.clone());
    out!(
        "cartwheel sim: {} nodes, seed {}, Q = {}, gossip every {} ms, buckets {:?}",
        args.nodes,
        args.seed,
        config.partitions,
        config.cluster.gossip_interval_ms,
        config.buckets.keys().collect::<Vec<_>>()
    );
    let gossip = sim::run(sim::gossip_convergence(make(), 200, 20));
    out!("{gossip}");
    let join = sim::run(sim::join_movement(make(), 200));
    out!("{join}");
    let faults = sim::run(sim::faults(make(), args.carts.max(1), args.seconds * 1_000));
    if args.events {
        faults.events.iter().for_each(|event| out!("  {event}"));
    }
    out!("{faults}");
    for lost in faults.lost.iter().take(20) {
        out!("  LOST: {lost}");
    }
    for line in faults.unsettled.iter().take(20) {
        out!("  unsettled: {line}");
    }
    let disk = sim::run(sim::replica_recovery(make(), 50, 600));
    out!("{disk}");
    let cut = sim::run(sim::isolation(make(), 150, 600));
    out!("{cut}");
    let held = gossip.rounds.is_some()
        && gossip.unstable_rounds == 0
        && join.converged
        && faults.lost.is_empty()
        && faults.converged
        && disk.rounds.is_some()
        && cut.false_down_rounds == 0
        && cut.rounds_to_all_up.is_some_and(|rounds| rounds <= 3);
    if held {
        ExitCode::SUCCESS
    } else {
        out!(
            "a property failed: replay with cartwheel sim --nodes {} --seed {}",
            args.nodes,
            args.seed
        );
        ExitCode::from(EXIT_FAILED)
    }
}
