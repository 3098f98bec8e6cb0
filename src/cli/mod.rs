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

use crate::client::{block_on, Client, ClusterRequest, Credentials, WriteOptions};
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
    /// How client commands print.
    #[command(flatten)]
    pub output: Output,
    /// The log's format on stderr: `text` (the default) or `json` (one object a line, for
    /// log collectors). `RUST_LOG` sets the level.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The format of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour on a terminal).
    Text,
    /// One JSON object a line: `timestamp`, `level`, `fields` (with `message`), `target`.
    Json,
}

impl LogFormat {
    /// The flag's value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// How client commands print their results.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Output {
    /// Print results as JSON (get, status, and the cart, counter and set `show` commands).
    #[arg(long, global = true)]
    pub json: bool,
    /// Confirm writes (`put`, `del`, CRDT updates) even when stdout is not a terminal.
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

impl Output {
    /// Whether writes are confirmed on stdout: on a terminal, or when asked.
    fn confirms(self) -> bool {
        use std::io::IsTerminal as _;
        self.verbose || std::io::stdout().is_terminal()
    }
}

/// Write `text` to stdout. A closed pipe (`cartwheel status | head -3`) ends the process
/// quietly with success, as other command-line tools do; another write error with failure.
fn emit(text: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "cartwheel: cannot write to stdout: {e}");
        std::process::exit(i32::from(EXIT_FAILED));
    }
}

/// `println!` through [`emit`]: quiet on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        emit_line(&format!($($arg)*))
    };
}

/// [`emit`] a line.
fn emit_line(line: &str) {
    emit(format!("{line}\n").as_bytes());
}

mod run;
mod status;

use status::{ask_claimant, cluster_answer_json, print_cluster_answer, print_status, status_json};

use run::{serve, simulate, up};

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
    /// Run a local cluster on the embedded defaults, each node a process of its own (its pid
    /// and config file are printed, so one can be stopped and started again), data under
    /// ./data; Ctrl-C (or SIGTERM) stops them all.
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
        /// Value; `-` reads it from stdin (up to the value limit).
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from this file instead.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Write without reading first: in a `siblings` bucket this adds a sibling.
        #[arg(long)]
        blind: bool,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE")]
        node: String,
    },
    /// Print the value of BUCKET/KEY (one line per sibling); exit code 4 if not found.
    Get {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE")]
        node: String,
    },
    /// Delete BUCKET/KEY.
    Del {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE")]
        node: String,
    },
    /// Show the node's members, buckets and counters.
    Status {
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE")]
        node: String,
    },
    /// Shopping carts (a `cart` bucket): add, remove, set quantities, clear, show.
    Cart {
        /// What to do.
        #[command(subcommand)]
        action: CartAction,
        /// The cart bucket.
        #[arg(long, default_value = "carts", global = true)]
        bucket: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE", global = true)]
        node: String,
    },
    /// Counters (a `pncounter` bucket): increment, decrement, reset, show.
    Counter {
        /// What to do.
        #[command(subcommand)]
        action: CounterAction,
        /// The counter bucket.
        #[arg(long, default_value = "counters", global = true)]
        bucket: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE", global = true)]
        node: String,
    },
    /// Sets (an `orset` bucket): add, remove, clear, show.
    Set {
        /// What to do.
        #[command(subcommand)]
        action: SetAction,
        /// The set bucket.
        #[arg(long, default_value = "sets", global = true)]
        bucket: String,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE", global = true)]
        node: String,
    },
    /// Client tokens: create (with grants) and revoke.
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
        /// Node to talk to.
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE", global = true)]
        node: String,
    },
    /// Membership changes: stage join, leave, replace or remove; look at the plan; commit
    /// or cancel (needs the admin grant; sent to the claimant, found through --node).
    Admin {
        /// What to do.
        #[command(subcommand)]
        action: AdminAction,
        /// Node to ask (any member: the request goes on to the claimant).
        #[arg(long, default_value = NODE_DEFAULT, env = "CARTWHEEL_NODE", global = true)]
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
    /// Empty CART: remove every item the read before it saw (items added meanwhile stay).
    Clear {
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

/// `cartwheel admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Stage: member ID (up, owning nothing) gets its share of the partitions.
    Join {
        /// The member's id.
        id: String,
    },
    /// Stage: member ID hands its partitions to the others, then owns nothing (stop it once
    /// `status` shows it as left).
    Leave {
        /// The member's id.
        id: String,
    },
    /// Stage: member NEW (up, owning nothing) takes exactly OLD's partitions.
    Replace {
        /// The member that goes.
        old: String,
        /// The member that takes its place.
        new: String,
    },
    /// Stage: member ID is gone for good; its partitions are rebuilt from the other replicas.
    Remove {
        /// The member's id.
        id: String,
    },
    /// Show what a commit of the staged changes would move.
    Plan,
    /// Begin moving partitions as planned (`status` shows the transfers).
    Commit,
    /// Drop the staged changes.
    Cancel,
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
    /// Bring KEY back to 0: take off what the read before it saw (increments made
    /// meanwhile still count); prints the new value.
    Reset {
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
    /// Empty KEY: remove every element the read before it saw (elements added meanwhile
    /// stay).
    Clear {
        /// The set's key.
        key: String,
    },
}

/// Read a key and apply `ops` with that read's context (so removes see what was read).
/// Confirms on a terminal (or with `-v`); a counter's new value is always printed.
async fn update_after_read(
    client: &Client,
    bucket: &str,
    key: &str,
    ops: Vec<Op>,
    output: Output,
) -> Result<ExitCode, Error> {
    let context = client.get(bucket, key.as_bytes()).await?.context;
    let options = WriteOptions { return_body: true, ..WriteOptions::default() };
    let read = client.update(bucket, key.as_bytes(), &ops, &context, &options).await?;
    match read.value {
        Some(Value::Counter(n)) => emit_line(&n.to_string()),
        _ if output.confirms() => emit_line(&format!("updated {bucket}/{key}")),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Print a CRDT value; an absent one prints nothing and exits 4, like `get`.
async fn show(client: &Client, bucket: &str, key: &str, output: Output) -> Result<ExitCode, Error> {
    let read = client.get(bucket, key.as_bytes()).await?;
    Ok(print_read(bucket, key, read.value.as_ref(), output))
}

/// Print what a read found (or say it found nothing, exit code 4), as text or JSON.
fn print_read(bucket: &str, key: &str, value: Option<&Value>, output: Output) -> ExitCode {
    if output.json {
        emit_line(&value_json(bucket, key, value).to_string());
    } else if let Some(value) = value {
        print_value(value);
    } else {
        eprintln!("cartwheel: not found: {bucket}/{key}");
    }
    if value.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_FOUND)
    }
}

/// Bytes as JSON: a string when they are UTF-8, else an array of byte values.
fn bytes_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::Value::from(text),
        Err(_) => serde_json::Value::from(bytes.to_vec()),
    }
}

fn value_json(bucket: &str, key: &str, value: Option<&Value>) -> serde_json::Value {
    use serde_json::json;
    let found = match value {
        None => json!(null),
        Some(Value::Siblings(values)) => json!({
            "siblings": values.iter().map(|v| bytes_json(v)).collect::<Vec<_>>()
        }),
        Some(Value::Set(members)) => {
            json!({ "set": members.iter().map(|m| bytes_json(m)).collect::<Vec<_>>() })
        }
        Some(Value::Counter(n)) => json!({ "counter": n }),
        Some(Value::Cart(items)) => json!({
            "cart": items
                .iter()
                .map(|(item, quantity)| json!({ "item": bytes_json(item), "quantity": quantity }))
                .collect::<Vec<_>>()
        }),
    };
    json!({ "bucket": bucket, "key": key, "found": value.is_some(), "value": found })
}

/// The value of `put`: the argument, stdin for `-`, or the file; at most the value limit
/// (and one byte more, so that an oversized value gets the node's typed error, not a cut).
fn read_value(value: Option<&str>, file: Option<&Path>) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let limit = crate::config::VALUE_BYTES_MAX_DEFAULT as u64 + 1;
    let mut bytes = Vec::new();
    match (value, file) {
        (_, Some(path)) => std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .map_err(|e| format!("{}: {e}", path.display()))?,
        (Some("-"), None) => std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the value from stdin: {e}"))?,
        (Some(value), None) => return Ok(value.as_bytes().to_vec()),
        (None, None) => return Err("give a value, `-` for stdin, or --file".into()),
    };
    Ok(bytes)
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let Cli { command, auth, output, log_format } = cli;
    let auth = &auth;
    match command {
        Command::Serve { config } => serve(config),
        Command::Up { nodes, port, data_dir } => up(nodes, port, data_dir, log_format),
        Command::Put { bucket, key, value, file, blind, node } => {
            let value = match read_value(value.as_deref(), file.as_deref()) {
                Ok(value) => value,
                Err(e) => {
                    eprintln!("cartwheel: {e}");
                    return ExitCode::from(EXIT_FAILED);
                }
            };
            request(&node, auth, |client| async move {
                let context = if blind {
                    Vec::new()
                } else {
                    client.get(&bucket, key.as_bytes()).await?.context
                };
                client.put(&bucket, key.as_bytes(), &value, &context).await?;
                if output.confirms() {
                    emit_line(&format!("stored {bucket}/{key} ({} bytes)", value.len()));
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Get { bucket, key, node } => request(&node, auth, |client| async move {
            let read = client.get(&bucket, key.as_bytes()).await?;
            Ok(print_read(&bucket, &key, read.value.as_ref(), output))
        }),
        Command::Del { bucket, key, node } => request(&node, auth, |client| async move {
            let context = client.get(&bucket, key.as_bytes()).await?.context;
            client.delete(&bucket, key.as_bytes(), &context).await?;
            if output.confirms() {
                emit_line(&format!("deleted {bucket}/{key}"));
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Status { node } => request(&node, auth, |client| async move {
            let status = client.status().await?;
            if output.json {
                emit_line(&status_json(&status).to_string());
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Cart { action, bucket, node } => request(&node, auth, |client| async move {
            match action {
                CartAction::Add { cart, item, quantity } => {
                    let op = Op::CartAdd { item: item.into_bytes(), quantity };
                    update_after_read(&client, &bucket, &cart, vec![op], output).await
                }
                CartAction::Remove { cart, item } => {
                    update_after_read(
                        &client,
                        &bucket,
                        &cart,
                        vec![Op::CartRemove(item.into_bytes())],
                        output,
                    )
                    .await
                }
                CartAction::Set { cart, item, quantity } => {
                    let op = Op::CartSetQuantity { item: item.into_bytes(), quantity };
                    update_after_read(&client, &bucket, &cart, vec![op], output).await
                }
                CartAction::Show { cart } => show(&client, &bucket, &cart, output).await,
                CartAction::Clear { cart } => {
                    update_after_read(&client, &bucket, &cart, vec![Op::CartClear], output).await
                }
            }
        }),
        Command::Counter { action, bucket, node } => request(&node, auth, |client| async move {
            match action {
                CounterAction::Incr { key, by } => {
                    update_after_read(
                        &client,
                        &bucket,
                        &key,
                        vec![Op::CounterIncrement(by)],
                        output,
                    )
                    .await
                }
                CounterAction::Decr { key, by } => {
                    let by = by
                        .checked_neg()
                        .ok_or_else(|| Error::BadRequest(format!("cannot negate {by}")))?;
                    update_after_read(
                        &client,
                        &bucket,
                        &key,
                        vec![Op::CounterIncrement(by)],
                        output,
                    )
                    .await
                }
                CounterAction::Show { key } => show(&client, &bucket, &key, output).await,
                CounterAction::Reset { key } => {
                    update_after_read(&client, &bucket, &key, vec![Op::CounterReset], output).await
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
                        output,
                    )
                    .await
                }
                SetAction::Remove { key, element } => {
                    update_after_read(
                        &client,
                        &bucket,
                        &key,
                        vec![Op::SetRemove(element.into_bytes())],
                        output,
                    )
                    .await
                }
                SetAction::Show { key } => show(&client, &bucket, &key, output).await,
                SetAction::Clear { key } => {
                    update_after_read(&client, &bucket, &key, vec![Op::SetClear], output).await
                }
            }
        }),
        Command::Token {
            action: TokenAction::Create { grant, secret_file: Some(file) }, ..
        } => create_token_offline(&grant, &file),
        Command::Token { action: TokenAction::Create { grant, secret_file: None }, node } => {
            request(&node, auth, |client| async move {
                let (token, id) = client.create_token(&grant).await?;
                let ca_pem = auth.resolve().ok().and_then(|c| c.ca_pem);
                emit(Credentials { token, ca_pem }.to_text().as_bytes());
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
        Command::Admin { action, node } => request(&node, auth, |client| async move {
            let request = match action {
                AdminAction::Join { id } => ClusterRequest::Join(id),
                AdminAction::Leave { id } => ClusterRequest::Leave(id),
                AdminAction::Replace { old, new } => ClusterRequest::Replace { old, new },
                AdminAction::Remove { id } => ClusterRequest::Remove(id),
                AdminAction::Plan => ClusterRequest::Plan,
                AdminAction::Commit => ClusterRequest::Commit,
                AdminAction::Cancel => ClusterRequest::Cancel,
            };
            let answer = ask_claimant(&client, &request, auth).await?;
            if output.json {
                emit_line(&cluster_answer_json(&answer).to_string());
            } else {
                print_cluster_answer(&request, &answer);
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Secret { file } => match crate::security::Secret::create(&file) {
            Ok(_) => {
                out!("cluster secret written to {}", file.display());
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
            emit(credentials.to_text().as_bytes());
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
    let mut out = Vec::new();
    let mut line = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        out.push(b'\n');
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
    emit(&out);
}
