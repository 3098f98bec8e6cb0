//! # The `cartwheel` command line
//!
//! `serve` runs one node from a configuration file; `up` runs a local cluster (3 nodes) on the
//! embedded defaults for trying things out; `put`, `get`, `del`, `status`, `cart`, `counter`
//! and `set` talk to a node through the client library (`--node HOST:PORT`, by default
//! 127.0.0.1:7401, where `up`'s first node listens). `bench` runs the latency benchmark.
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
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cartwheel_resolvers::{Op, Value};
use clap::{Parser, Subcommand};

use crate::client::{block_on, Client, Credentials, WriteOptions};
use crate::config::{Config, SecurityConfig, LISTEN_PORT_DEFAULT};
use crate::error::Error;
use crate::node::server::NodeHandle;

use crate::exit::{
    FAILED as EXIT_FAILED, NOT_FOUND as EXIT_NOT_FOUND, UNREACHABLE as EXIT_UNREACHABLE,
};

const NODE_DEFAULT: &str = "127.0.0.1:7401";

/// cartwheel: a Dynamo-style, always-writeable, replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "cartwheel", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How client commands log in.
    #[command(flatten)]
    pub auth: Auth,
}

/// Where a client command finds its credentials: `--credentials` (or
/// `CARTWHEEL_CREDENTIALS`), else `data/admin.credentials` when it exists (what `up`
/// writes); `--token` (or `CARTWHEEL_TOKEN`) replaces the file's token. With neither, the
/// command connects without TLS and an empty token, which only a node in insecure mode takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Auth {
    /// Credentials file: a token and the cluster CA (`up` writes data/admin.credentials).
    #[arg(long, global = true, env = "CARTWHEEL_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    /// Token to log in with (replaces the credentials file's).
    #[arg(long, global = true, env = "CARTWHEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The credentials file client commands read when none is named.
pub const CREDENTIALS_DEFAULT: &str = "data/admin.credentials";

impl Auth {
    /// The credentials these flags name (see [`Auth`]).
    pub fn resolve(&self) -> Result<Credentials, String> {
        let mut credentials = match &self.credentials {
            Some(path) => Credentials::load(path)?,
            None if Path::new(CREDENTIALS_DEFAULT).exists() => {
                Credentials::load(Path::new(CREDENTIALS_DEFAULT))?
            }
            None => Credentials::default(),
        };
        if let Some(token) = &self.token {
            credentials.token = token.clone();
        }
        Ok(credentials)
    }
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
    /// Run a local cluster on the embedded defaults, data under ./data; Ctrl-C stops it.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Client port of the first node; the others take the next ones.
        #[arg(long, default_value_t = LISTEN_PORT_DEFAULT)]
        port: u16,
        /// Data directory (node N keeps its data in DIR/nN).
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
    /// Shopping carts (a `cart` bucket): add, remove, set quantities, show.
    Cart {
        /// What to do.
        #[command(subcommand)]
        action: CartAction,
        /// The cart bucket.
        #[arg(long, default_value = "carts", global = true)]
        bucket: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, global = true)]
        node: String,
    },
    /// Counters (a `pncounter` bucket): increment, decrement, show.
    Counter {
        /// What to do.
        #[command(subcommand)]
        action: CounterAction,
        /// The counter bucket.
        #[arg(long, default_value = "counters", global = true)]
        bucket: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, global = true)]
        node: String,
    },
    /// Sets (an `orset` bucket): add, remove, show.
    Set {
        /// What to do.
        #[command(subcommand)]
        action: SetAction,
        /// The set bucket.
        #[arg(long, default_value = "sets", global = true)]
        bucket: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, global = true)]
        node: String,
    },
    /// Client tokens: create (with grants) and revoke.
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, global = true)]
        node: String,
    },
    /// Create a new cluster secret in FILE (for `security.secret_file`; copy it to every node).
    Secret {
        /// Where to write it; must not exist.
        file: PathBuf,
    },
    /// Open-loop latency benchmark (p99.9 at a fixed offered rate).
    Bench(Box<crate::bench::BenchArgs>),
    /// Run the seeded cluster simulation: gossip convergence, a join, faults on carts, a
    /// lost disk and an isolated node, with the buckets of a configuration file; prints the
    /// figures.
    Sim(SimArgs),
}

/// Arguments of `cartwheel sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// The seed of every random choice: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A node configuration whose buckets, partitions and cluster settings to simulate (the
    /// embedded defaults without one). Engines are simulated disks, and `dw` is taken as 0.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Simulated seconds of faults.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Carts the fault run writes to.
    #[arg(long, default_value_t = 5)]
    pub carts: usize,
    /// Print every fault and write of the fault run.
    #[arg(long)]
    pub events: bool,
}

/// `cartwheel cart ...`.
#[derive(Debug, Subcommand)]
pub enum CartAction {
    /// Add QUANTITY (default 1) of ITEM to CART.
    Add {
        /// The cart's key.
        cart: String,
        /// The item id.
        item: String,
        /// How many.
        #[arg(default_value_t = 1)]
        quantity: i64,
    },
    /// Remove ITEM from CART.
    Remove {
        /// The cart's key.
        cart: String,
        /// The item id.
        item: String,
    },
    /// Set ITEM's quantity in CART (0 removes it).
    Set {
        /// The cart's key.
        cart: String,
        /// The item id.
        item: String,
        /// The new quantity.
        quantity: i64,
    },
    /// Print CART's items, one `item<TAB>quantity` per line.
    Show {
        /// The cart's key.
        cart: String,
    },
}

/// `cartwheel token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token and print credentials for it (token and cluster CA) on stdout; its id
    /// on stderr. Through a node (needs the admin grant), or offline with --secret-file.
    Create {
        /// Grants: BUCKET=RIGHTS,... with RIGHTS of r and w; `*` for every bucket; `admin`.
        /// For example `carts=rw,default=r` or `*=rw,admin`.
        #[arg(long)]
        grant: String,
        /// Mint with the cluster secret in this file instead of asking a node.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Revoke the token with ID on every node (needs the admin grant).
    Revoke {
        /// The token's id (16 hex digits, printed by `token create`).
        id: String,
    },
}

/// `cartwheel counter ...`.
#[derive(Debug, Subcommand)]
pub enum CounterAction {
    /// Add BY (default 1) to KEY.
    Incr {
        /// The counter's key.
        key: String,
        /// How much.
        #[arg(default_value_t = 1)]
        by: i64,
    },
    /// Subtract BY (default 1) from KEY.
    Decr {
        /// The counter's key.
        key: String,
        /// How much.
        #[arg(default_value_t = 1)]
        by: i64,
    },
    /// Print KEY's value.
    Show {
        /// The counter's key.
        key: String,
    },
}

/// `cartwheel set ...`.
#[derive(Debug, Subcommand)]
pub enum SetAction {
    /// Add ELEMENT to KEY.
    Add {
        /// The set's key.
        key: String,
        /// The element.
        element: String,
    },
    /// Remove ELEMENT from KEY.
    Remove {
        /// The set's key.
        key: String,
        /// The element.
        element: String,
    },
    /// Print KEY's members, one per line.
    Show {
        /// The set's key.
        key: String,
    },
}

/// Read a key and apply `ops` with that read's context (so removes see what was read).
async fn update_after_read(
    client: &Client,
    bucket: &str,
    key: &str,
    ops: Vec<Op>,
) -> Result<ExitCode, Error> {
    let context = client.get(bucket, key.as_bytes()).await?.context;
    client.update(bucket, key.as_bytes(), &ops, &context, &WriteOptions::default()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Print a CRDT value; an empty or absent one prints nothing (a counter prints 0).
async fn show(
    client: &Client,
    bucket: &str,
    key: &str,
    empty: Option<Value>,
) -> Result<ExitCode, Error> {
    if let Some(value) = client.get(bucket, key.as_bytes()).await?.value.or(empty) {
        print_value(&value);
    }
    Ok(ExitCode::SUCCESS)
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let Cli { command, auth } = cli;
    let auth = &auth;
    match command {
        Command::Serve { config } => serve(config),
        Command::Up { nodes, port, data_dir } => up(nodes, port, data_dir),
        Command::Put { bucket, key, value, blind, node } => {
            request(&node, auth, |client| async move {
                let context = if blind {
                    Vec::new()
                } else {
                    client.get(&bucket, key.as_bytes()).await?.context
                };
                client.put(&bucket, key.as_bytes(), value.as_bytes(), &context).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Get { bucket, key, node } => request(&node, auth, |client| async move {
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
        Command::Del { bucket, key, node } => request(&node, auth, |client| async move {
            let context = client.get(&bucket, key.as_bytes()).await?.context;
            client.delete(&bucket, key.as_bytes(), &context).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Status { node } => request(&node, auth, |client| async move {
            print_status(&client.status().await?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Cart { action, bucket, node } => request(&node, auth, |client| async move {
            match action {
                CartAction::Add { cart, item, quantity } => {
                    let op = Op::CartAdd { item: item.into_bytes(), quantity };
                    update_after_read(&client, &bucket, &cart, vec![op]).await
                }
                CartAction::Remove { cart, item } => {
                    update_after_read(
                        &client,
                        &bucket,
                        &cart,
                        vec![Op::CartRemove(item.into_bytes())],
                    )
                    .await
                }
                CartAction::Set { cart, item, quantity } => {
                    let op = Op::CartSetQuantity { item: item.into_bytes(), quantity };
                    update_after_read(&client, &bucket, &cart, vec![op]).await
                }
                CartAction::Show { cart } => show(&client, &bucket, &cart, None).await,
            }
        }),
        Command::Counter { action, bucket, node } => request(&node, auth, |client| async move {
            match action {
                CounterAction::Incr { key, by } => {
                    update_after_read(&client, &bucket, &key, vec![Op::CounterIncrement(by)]).await
                }
                CounterAction::Decr { key, by } => {
                    let by = by
                        .checked_neg()
                        .ok_or_else(|| Error::BadRequest(format!("cannot negate {by}")))?;
                    update_after_read(&client, &bucket, &key, vec![Op::CounterIncrement(by)]).await
                }
                CounterAction::Show { key } => {
                    show(&client, &bucket, &key, Some(Value::Counter(0))).await
                }
            }
        }),
        Command::Set { action, bucket, node } => request(&node, auth, |client| async move {
            match action {
                SetAction::Add { key, element } => {
                    update_after_read(
                        &client,
                        &bucket,
                        &key,
                        vec![Op::SetAdd(element.into_bytes())],
                    )
                    .await
                }
                SetAction::Remove { key, element } => {
                    update_after_read(
                        &client,
                        &bucket,
                        &key,
                        vec![Op::SetRemove(element.into_bytes())],
                    )
                    .await
                }
                SetAction::Show { key } => show(&client, &bucket, &key, None).await,
            }
        }),
        Command::Token {
            action: TokenAction::Create { grant, secret_file: Some(file) }, ..
        } => create_token_offline(&grant, &file),
        Command::Token { action: TokenAction::Create { grant, secret_file: None }, node } => {
            request(&node, auth, |client| async move {
                let (token, id) = client.create_token(&grant).await?;
                let ca_pem = auth.resolve().ok().and_then(|c| c.ca_pem);
                print!("{}", Credentials { token, ca_pem }.to_text());
                eprintln!("token id {id}");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Token { action: TokenAction::Revoke { id }, node } => {
            request(&node, auth, |client| async move {
                client.revoke_token(&id).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Secret { file } => match crate::security::Secret::create(&file) {
            Ok(_) => {
                println!("cluster secret written to {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cartwheel: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Command::Bench(args) => crate::bench::run(*args, auth),
        Command::Sim(args) => simulate(&args),
    }
}

/// `cartwheel sim`: each scenario of [`crate::sim`] with the user's buckets, one line of
/// figures each; exit code 1 if a property failed.
fn simulate(args: &SimArgs) -> ExitCode {
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
    println!(
        "cartwheel sim: {} nodes, seed {}, Q = {}, gossip every {} ms, buckets {:?}",
        args.nodes,
        args.seed,
        config.partitions,
        config.cluster.gossip_interval_ms,
        config.buckets.keys().collect::<Vec<_>>()
    );
    let gossip = sim::run(sim::gossip_convergence(make(), 200, 20));
    println!("{gossip}");
    let join = sim::run(sim::join_movement(make(), 200));
    println!("{join}");
    let faults = sim::run(sim::faults(make(), args.carts.max(1), args.seconds * 1_000));
    if args.events {
        faults.events.iter().for_each(|event| println!("  {event}"));
    }
    println!("{faults}");
    for lost in faults.lost.iter().take(20) {
        println!("  LOST: {lost}");
    }
    for line in faults.unsettled.iter().take(20) {
        println!("  unsettled: {line}");
    }
    let disk = sim::run(sim::replica_recovery(make(), 50, 600));
    println!("{disk}");
    let cut = sim::run(sim::isolation(make(), 150, 600));
    println!("{cut}");
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
        println!(
            "a property failed: replay with cartwheel sim --nodes {} --seed {}",
            args.nodes, args.seed
        );
        ExitCode::from(EXIT_FAILED)
    }
}

/// Mint a token with the cluster secret in `file` and print its credentials.
fn create_token_offline(grant: &str, file: &Path) -> ExitCode {
    let minted = (|| {
        let secret = crate::security::Secret::load(file).map_err(|e| e.to_string())?;
        let keys = crate::security::ClusterKeys::derive(&secret).map_err(|e| e.to_string())?;
        let grants = crate::security::Grants::parse(grant).map_err(|e| e.to_string())?;
        let (token, id) =
            crate::security::token::mint(keys.token_key(), &grants).map_err(|e| e.to_string())?;
        Ok::<_, String>((Credentials { token, ca_pem: Some(keys.ca_pem()) }, id))
    })();
    match minted {
        Ok((credentials, id)) => {
            print!("{}", credentials.to_text());
            eprintln!("token id {id}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cartwheel: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Connect to `node` with `auth`'s credentials, run `body`, and turn errors into one line
/// and an exit code.
fn request<F, Fut>(node: &str, auth: &Auth, body: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, Error>>,
{
    let credentials = match auth.resolve() {
        Ok(credentials) => credentials,
        Err(e) => {
            eprintln!("cartwheel: cannot read the credentials: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let outcome = block_on(async {
        let client = Client::connect_with(node, &credentials).await?;
        body(client).await
    });
    match outcome {
        Ok(code) => code,
        Err(e @ Error::Connect { .. }) => {
            eprintln!("cartwheel: {e} (is a node running there? start one with `cartwheel up`)");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(e @ Error::Unauthorized(_)) => {
            eprintln!(
                "cartwheel: {e} (give credentials with --credentials FILE or --token TOKEN; \
                 `up` writes {CREDENTIALS_DEFAULT})"
            );
            ExitCode::from(EXIT_FAILED)
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
    println!(
        "ring epoch {}, {} hinted writes refused, {} replicated states refused (clock offset)",
        status.ring_epoch, status.hints_refused, status.states_refused
    );
    println!(
        "security {}, {} of the connections not logged in",
        status.security, status.connections_unauthenticated
    );
    if !status.config_mismatches.is_empty() {
        println!(
            "WARNING: bucket configuration differs on: {}",
            status.config_mismatches.join(", ")
        );
    }
    println!();
    println!(
        "{:<12} {:<24} {:<8} {:>10} {:>12}",
        "MEMBER", "ADDRESS", "STATE", "PARTITIONS", "HINTS HERE"
    );
    for m in &status.members {
        println!(
            "{:<12} {:<24} {:<8} {:>10} {:>12}",
            m.id, m.address, m.state, m.partitions_owned, m.hints_queued
        );
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

fn up(nodes: u16, port: u16, data_dir: PathBuf) -> ExitCode {
    if nodes == 0 || u32::from(port) + u32::from(nodes) > 65_536 {
        eprintln!("cartwheel: --nodes must be at least 1 and the ports must fit below 65536");
        return ExitCode::from(EXIT_FAILED);
    }
    let configs = (0..nodes)
        .map(|i| {
            let mut config = Config::embedded();
            config.node.id = format!("n{}", i + 1);
            config.node.listen.set_port(port + i);
            config.node.seeds = vec![format!("127.0.0.1:{port}")];
            config.node.data_dir = data_dir.join(&config.node.id);
            config.security = SecurityConfig::development(&data_dir);
            config
        })
        .collect();
    run_until_ctrl_c(configs)
}

/// Start every node, print where they listen, wait for Ctrl-C, stop them all cleanly.
fn run_until_ctrl_c(configs: Vec<Config>) -> ExitCode {
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
                println!("node {id} listening on {} (data in {data_dir})", node.address());
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
        println!(
            "TLS on; cluster secret in {}, admin credentials in {} (client commands read them \
             from there by default)",
            config.secret_file.display(),
            credentials.display()
        );
    } else {
        println!("INSECURE MODE: plain TCP, no authentication");
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
