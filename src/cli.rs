//! # The `cartwheel` command line
//!
//! `serve` runs one node from a configuration file; `up` runs a local node on the embedded
//! defaults for trying things out; `put`, `get`, `del` and `status` talk to a node through
//! the client library (`--node HOST:PORT`, by default 127.0.0.1:7401, where `up` listens).
//!
//! Output is for scripts and people at once: `get` prints the value alone on stdout (one line
//! per sibling); errors are one line on stderr, and the exit code says what happened:
//!
//! | code | meaning                                          |
//! |------|--------------------------------------------------|
//! | 0    | success                                          |
//! | 1    | the node refused or failed the request           |
//! | 2    | bad command line (from the argument parser)      |
//! | 3    | cannot connect to the node, or the node failed to start |
//! | 4    | not found (`get` of a key with no value)         |

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use cartwheel_resolvers::Value;
use clap::{Parser, Subcommand};

use crate::client::{block_on, Client};
use crate::config::{Config, LISTEN_PORT_DEFAULT};
use crate::error::Error;
use crate::server::NodeHandle;

/// Exit code: the node refused or failed the request.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: cannot connect, or the node could not start.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: not found.
pub const EXIT_NOT_FOUND: u8 = 4;

const NODE_DEFAULT: &str = "127.0.0.1:7401";

/// cartwheel: a Dynamo-style, always-writeable, replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "cartwheel", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node from a configuration file (embedded defaults without one).
    Serve {
        /// The node's TOML configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a local node on the embedded defaults, data under ./data; Ctrl-C stops it.
    Up {
        /// Client port of the node.
        #[arg(long, default_value_t = LISTEN_PORT_DEFAULT)]
        port: u16,
        /// Data directory (the node's data goes in DIR/n1).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Store VALUE under BUCKET/KEY (replacing what a read sees now, unless --blind).
    Put {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Write without reading first: in a `siblings` bucket this adds a sibling.
        #[arg(long)]
        blind: bool,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT)]
        node: String,
    },
    /// Print the value of BUCKET/KEY (one line per sibling); exit code 4 if not found.
    Get {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT)]
        node: String,
    },
    /// Delete BUCKET/KEY.
    Del {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT)]
        node: String,
    },
    /// Show the node's members, buckets and counters.
    Status {
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT)]
        node: String,
    },
    /// Open-loop latency benchmark (p99.9 at a fixed offered rate).
    Bench(crate::bench::BenchArgs),
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Up { port, data_dir } => up(port, data_dir),
        Command::Put { bucket, key, value, blind, node } => request(&node, |client| async move {
            let context =
                if blind { Vec::new() } else { client.get(&bucket, key.as_bytes()).await?.context };
            client.put(&bucket, key.as_bytes(), value.as_bytes(), &context).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Get { bucket, key, node } => request(&node, |client| async move {
            let read = client.get(&bucket, key.as_bytes()).await?;
            match read.value {
                None => {
                    eprintln!("not found: {bucket}/{key}");
                    Ok(ExitCode::from(EXIT_NOT_FOUND))
                }
                Some(value) => {
                    print_value(&value);
                    Ok(ExitCode::SUCCESS)
                }
            }
        }),
        Command::Del { bucket, key, node } => request(&node, |client| async move {
            let context = client.get(&bucket, key.as_bytes()).await?.context;
            client.delete(&bucket, key.as_bytes(), &context).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Status { node } => request(&node, |client| async move {
            print_status(&client.status().await?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Bench(args) => crate::bench::run(args),
    }
}

/// Connect to `node`, run `body`, and turn errors into one line and an exit code.
fn request<F, Fut>(node: &str, body: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, Error>>,
{
    let outcome = block_on(async {
        let client = Client::connect(node).await?;
        body(client).await
    });
    match outcome {
        Ok(code) => code,
        Err(e @ Error::Connect { .. }) => {
            eprintln!("cartwheel: {e} (is a node running there? start one with `cartwheel up`)");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(e) => {
            eprintln!("cartwheel: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn print_value(value: &Value) {
    let mut out = std::io::stdout().lock();
    let mut line = |bytes: &[u8]| {
        let _ = out.write_all(bytes);
        let _ = out.write_all(b"\n");
    };
    match value {
        Value::Siblings(values) | Value::Set(values) => values.iter().for_each(|v| line(v)),
        Value::Counter(n) => line(n.to_string().as_bytes()),
        Value::Cart(items) => {
            for (item, quantity) in items {
                line(&[item.as_slice(), format!("\t{quantity}").as_bytes()].concat());
            }
        }
    }
}

fn print_status(status: &crate::client::NodeStatus) {
    println!(
        "node {} at {} (version {}, up {} s, {} connections, {} requests, {} refused)",
        status.node_id,
        status.address,
        status.version,
        status.uptime_ms / 1000,
        status.connections,
        status.requests_served,
        status.requests_refused
    );
    println!();
    println!("{:<12} {:<24} {:<8}", "MEMBER", "ADDRESS", "STATE");
    for m in &status.members {
        println!("{:<12} {:<24} {:<8}", m.id, m.address, m.state);
    }
    println!();
    println!(
        "{:<12} {:<8} {:<10} {:>9} {:>10} {:>12} {:>12} {:<8}",
        "BUCKET", "ENGINE", "RESOLVER", "N/R/W/DW", "ENTRIES", "LIVE BYTES", "MEMORY", "DURABLE"
    );
    for b in &status.buckets {
        let (n, r, w, dw) = b.nrw;
        println!(
            "{:<12} {:<8} {:<10} {:>9} {:>10} {:>12} {:>12} {:<8}",
            b.name,
            b.engine,
            b.resolver,
            format!("{n}/{r}/{w}/{dw}"),
            b.entries,
            b.live_bytes,
            b.memory_bytes,
            if b.durable { "yes" } else { "no" }
        );
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match path {
        Some(path) => match Config::load(&path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("cartwheel: bad configuration: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        },
        None => Config::embedded(),
    };
    run_until_ctrl_c(vec![config])
}

fn up(port: u16, data_dir: PathBuf) -> ExitCode {
    let mut config = Config::embedded();
    config.node.listen.set_port(port);
    config.node.seeds = vec![config.node.listen.to_string()];
    config.node.data_dir = data_dir.join(&config.node.id);
    run_until_ctrl_c(vec![config])
}

/// Start every node, print where they listen, wait for Ctrl-C, stop them all cleanly.
fn run_until_ctrl_c(configs: Vec<Config>) -> ExitCode {
    let mut nodes = Vec::new();
    for config in configs {
        let id = config.node.id.clone();
        let data_dir = config.node.data_dir.display().to_string();
        match NodeHandle::start(config) {
            Ok(node) => {
                println!("node {id} listening on {} (data in {data_dir})", node.address());
                nodes.push(node);
            }
            Err(e) => {
                eprintln!("cartwheel: node {id} cannot start: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        }
    }
    println!("try: cartwheel put default greeting hello && cartwheel get default greeting");
    println!("Ctrl-C stops.");
    let _ = std::io::stdout().flush();
    block_on(async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("cartwheel: cannot wait for Ctrl-C: {e}");
        }
    });
    let mut code = ExitCode::SUCCESS;
    for node in nodes {
        if let Err(e) = node.stop() {
            eprintln!("cartwheel: node stopped with an error: {e}");
            code = ExitCode::from(EXIT_FAILED);
        }
    }
    code
}
