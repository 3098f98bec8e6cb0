//! # Redis, measured in the same invocation
//!
//! `cartwheel bench --redis ADDR` adds a run named `redis` before the store run (while the
//! nodes are quiet; after it their engines merge what it wrote): the same schedule and the same
//! seeded sequence of reads and blind puts, as `GET` and `SET` of the same keys with values of
//! the same size, sent to a Redis server at `ADDR`. The store's line and Redis's line of one
//! invocation are two measurements on one machine at one time, so a figure of the store can be
//! read against the peer's from the same run.
//!
//! It sends the way the reference client does ([`super::reference`]), and with its parts:
//! - **Its own thread** and current-thread runtime, nothing else on it; every request decided
//!   before the run; one `timerfd` armed at each request's absolute intended start; latency
//!   from the intended start; a request unanswered when the run's time is up is
//!   `unfinished`.
//! - **`--connections` connections**, requests spread over them round-robin, each written
//!   at once as one RESP command (`TCP_NODELAY`). A reader task per connection matches the
//!   answers to the requests in order: Redis answers one connection's commands in the
//!   order they came.
//! - **Every key is set before the run** (pipelined), so a `GET` finds a value of the run's
//!   size, as a read of the store does after its preload.
//! - **The server's CPU is what it reports of itself**: `INFO cpu` (`used_cpu_user` +
//!   `used_cpu_sys`) when the warm-up ends and when the run ends, on a connection of its own;
//!   the difference is the run's `server_cpu_s`.
//! - An error answer (`-ERR …`) counts as an error of kind `redis`; a connection that fails,
//!   as `transport` for every request still waiting on it.
//!
//! Plain TCP, no `AUTH`: a Redis on this machine's loopback, for a comparison.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::generator::RunResult;
use super::reference::{
    clock, keys_and_value, nanos, planned_requests, wait_for_answers, ReferencePlan, Slot,
};

/// How long before the first intended start the run finishes its setup.
const LEAD_MS: u64 = super::reference::LEAD_MS;

/// Commands in flight at once while the keys are set before the run.
const PRELOAD_BATCH: usize = 256;

/// The largest answer read (a value or the `INFO` text): far above any value the benchmark
/// writes; a longer length is a protocol error, not an allocation.
const ANSWER_BYTES_MAX: usize = 512 << 20;

/// The error kind of a request Redis answered with an error.
const REDIS_ERROR: &str = "redis";

/// The error kind of a request whose connection failed.
const TRANSPORT_ERROR: &str = "transport";

/// Run the plan's requests against the Redis server at `address` over `connections`
/// connections, on a thread of its own, and return what was measured. `plan.addresses` and
/// `plan.credentials` are not used. Blocks the calling thread until the run is over.
pub fn run(address: &str, connections: usize, plan: ReferencePlan) -> Result<RunResult, String> {
    if plan.workload.is_cart() {
        return Err("--redis sends GET and SET: use a value workload".into());
    }
    if plan.keys.keys() > u64::from(u32::MAX) {
        return Err("--redis takes up to 2^32 keys".into());
    }
    if !cfg!(target_os = "linux") {
        return Err("--redis needs Linux's timerfd".into());
    }
    let address = address.to_string();
    let connections = connections.clamp(1, usize::from(u16::MAX));
    let thread = std::thread::Builder::new()
        .name("bench-redis".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("redis runtime: {e}"))?;
            tokio::task::LocalSet::new().block_on(&runtime, measure(address, connections, plan))
        })
        .map_err(|e| format!("cannot start the redis thread: {e}"))?;
    thread.join().map_err(|_| "the redis thread panicked".to_string())?
}

/// One connection's sending half and the requests it waits for, oldest first.
struct Connection {
    writer: OwnedWriteHalf,
    waiting: Rc<RefCell<VecDeque<usize>>>,
}

async fn measure(
    address: String,
    connections: usize,
    plan: ReferencePlan,
) -> Result<RunResult, String> {
    let failed = |e: &dyn std::fmt::Display| format!("redis at {address}: {e}");
    // Round-robin over connections: the connection of request i is i modulo the count.
    let requests = planned_requests(&plan, &vec![0; plan.keys.keys() as usize]);
    let (keys, value) = keys_and_value(&plan);
    let mut control = Control::connect(&address).await.map_err(|e| failed(&e))?;
    control.preload(&keys, &value).await.map_err(|e| failed(&e))?;
    let slots = Rc::new(RefCell::new(vec![Slot::default(); requests.len()]));
    let mut open = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = connect(&address).await.map_err(|e| failed(&e))?;
        let (reader, writer) = stream.into_split();
        let waiting = Rc::new(RefCell::new(VecDeque::new()));
        tokio::task::spawn_local(read_answers(reader, Rc::clone(&waiting), Rc::clone(&slots)));
        open.push(Connection { writer, waiting });
    }
    let timer = clock::Timer::new().map_err(|e| format!("timerfd: {e}"))?;
    let schedule = &plan.schedule;
    let start = clock::now_ns() + LEAD_MS * 1_000_000;
    let measure_from = start + nanos(schedule.warmup);
    let time_up = start + nanos(schedule.warmup + schedule.duration + schedule.drain);
    // The server's CPU when the warm-up ends, asked on the control connection meanwhile.
    let cpu_at_start = tokio::task::spawn_local(async move {
        let timer = clock::Timer::new()?;
        timer.sleep_until(measure_from).await?;
        let cpu = control.server_cpu_s().await;
        cpu.map(|cpu| (control, cpu))
    });

    let mut command = Vec::with_capacity(value.len() + 64);
    for (i, request) in requests.iter().enumerate() {
        let intended = start + nanos(schedule.offset(i as u64));
        timer.sleep_until(intended).await.map_err(|e| format!("timerfd: {e}"))?;
        let sent = clock::now_ns();
        if sent >= time_up {
            break;
        }
        let key = &keys[request.key as usize];
        command.clear();
        match request.read {
            true => encode_command(&mut command, &[b"GET", key]),
            false => encode_command(&mut command, &[b"SET", key, &value]),
        }
        let connection = &mut open[i % connections];
        slots.borrow_mut()[i].sent = sent;
        connection.waiting.borrow_mut().push_back(i);
        if connection.writer.write_all(&command).await.is_err() {
            // Its reader sees the connection fail too and answers what waits on it.
            let mut slots = slots.borrow_mut();
            slots[i] = Slot { sent, done: clock::now_ns(), error: Some(TRANSPORT_ERROR) };
            connection.waiting.borrow_mut().retain(|&w| w != i);
        }
    }
    let end = wait_for_answers(&timer, &slots, time_up).await?;
    let (mut control, cpu_before) =
        cpu_at_start.await.map_err(|e| format!("redis cpu task: {e}"))?.map_err(|e| failed(&e))?;
    let cpu_after = control.server_cpu_s().await.map_err(|e| failed(&e))?;
    let slots = slots.borrow();
    let mut result = super::reference::result(schedule, start, end, &requests, &slots);
    result.server_cpu_s = Some((cpu_after - cpu_before).max(0.0));
    Ok(result)
}

async fn connect(address: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Read one connection's answers and note each on the request it answers (the oldest
/// waiting). When the connection fails, every request still waiting on it is a `transport`
/// error.
async fn read_answers(
    reader: OwnedReadHalf,
    waiting: Rc<RefCell<VecDeque<usize>>>,
    slots: Rc<RefCell<Vec<Slot>>>,
) {
    let mut reader = tokio::io::BufReader::new(reader);
    let mut body = Vec::new();
    loop {
        let answer = read_answer(&mut reader, &mut body).await;
        let done = clock::now_ns();
        let error = match answer {
            Ok(Answer::Error(_)) => Some(REDIS_ERROR),
            Ok(_) => None,
            Err(_) => {
                let mut slots = slots.borrow_mut();
                for i in waiting.borrow_mut().drain(..) {
                    slots[i].done = done;
                    slots[i].error = Some(TRANSPORT_ERROR);
                }
                return;
            }
        };
        let Some(i) = waiting.borrow_mut().pop_front() else {
            // An answer nobody asked for: the conversation is lost.
            return;
        };
        let mut slots = slots.borrow_mut();
        slots[i].done = done;
        slots[i].error = error;
    }
}

/// The connection that sets the keys before the run and asks for the server's CPU.
struct Control {
    reader: tokio::io::BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    body: Vec<u8>,
}

impl Control {
    async fn connect(address: &str) -> io::Result<Self> {
        let (reader, writer) = connect(address).await?.into_split();
        Ok(Self { reader: tokio::io::BufReader::new(reader), writer, body: Vec::new() })
    }

    /// `SET` every key to `value`, [`PRELOAD_BATCH`] commands at a time.
    async fn preload(&mut self, keys: &[Vec<u8>], value: &[u8]) -> io::Result<()> {
        let mut commands = Vec::new();
        for batch in keys.chunks(PRELOAD_BATCH) {
            commands.clear();
            for key in batch {
                encode_command(&mut commands, &[b"SET", key, value]);
            }
            self.writer.write_all(&commands).await?;
            for _ in batch {
                if let Answer::Error(e) = read_answer(&mut self.reader, &mut self.body).await? {
                    return Err(io::Error::other(format!("SET before the run: {e}")));
                }
            }
        }
        Ok(())
    }

    /// CPU seconds the server has used since it started, as `INFO cpu` tells.
    async fn server_cpu_s(&mut self) -> io::Result<f64> {
        let mut command = Vec::new();
        encode_command(&mut command, &[b"INFO", b"cpu"]);
        self.writer.write_all(&command).await?;
        match read_answer(&mut self.reader, &mut self.body).await? {
            Answer::Bulk => cpu_seconds(&String::from_utf8_lossy(&self.body))
                .ok_or_else(|| io::Error::other("INFO cpu has no used_cpu_user and used_cpu_sys")),
            Answer::Error(e) => Err(io::Error::other(format!("INFO cpu: {e}"))),
            _ => Err(io::Error::other("INFO cpu: not a bulk string")),
        }
    }
}

/// `used_cpu_user` + `used_cpu_sys` of an `INFO cpu` text.
fn cpu_seconds(info: &str) -> Option<f64> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// Append a command as a RESP array of bulk strings.
fn encode_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    use std::io::Write as _;
    let _ = write!(out, "*{}\r\n", parts.len());
    for part in parts {
        let _ = write!(out, "${}\r\n", part.len());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// One answer, as far as the benchmark cares.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// `+…` or `:…`.
    Simple,
    /// `$n` with its `n` bytes (now in the caller's buffer).
    Bulk,
    /// `$-1`: no value.
    Nil,
    /// `-…`, with its text.
    Error(String),
}

/// Read one RESP answer; a bulk string's bytes go to `body`, which also holds the answer's
/// first line meanwhile (no allocation per answer). Anything else (arrays, a malformed line)
/// is an `InvalidData` error: the benchmark sends no command that gets one.
async fn read_answer<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    body: &mut Vec<u8>,
) -> io::Result<Answer> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    body.clear();
    if reader.read_until(b'\n', body).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let Some(line) = body.strip_suffix(b"\r\n") else {
        return Err(invalid("an answer line without CRLF"));
    };
    let (&kind, rest) = line.split_first().ok_or_else(|| invalid("an empty answer line"))?;
    match kind {
        b'+' | b':' => Ok(Answer::Simple),
        b'-' => Ok(Answer::Error(String::from_utf8_lossy(rest).into_owned())),
        b'$' => {
            let length: i64 = std::str::from_utf8(rest)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| invalid("a bulk length that is not a number"))?;
            if length < 0 {
                return Ok(Answer::Nil);
            }
            let length = usize::try_from(length)
                .ok()
                .filter(|&n| n <= ANSWER_BYTES_MAX)
                .ok_or_else(|| invalid("a bulk string over the size the benchmark reads"))?;
            body.resize(length + 2, 0);
            reader.read_exact(body).await?;
            if !body.ends_with(b"\r\n") {
                return Err(invalid("a bulk string without CRLF"));
            }
            body.truncate(length);
            Ok(Answer::Bulk)
        }
        _ => Err(invalid("an answer kind the benchmark does not send for")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::generator::Schedule;
    use crate::bench::workload::{Distribution, KeyChooser, Workload};
    use crate::client::Credentials;
    use tokio::net::TcpListener;

    /// Commands are RESP arrays of bulk strings, as Redis reads them.
    #[test]
    fn commands_are_resp_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k1", b"v\r\n"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$3\r\nv\r\n\r\n");
    }

    /// Each kind of answer is told apart, a bulk string's bytes are read whole (CRLF inside
    /// included), and a malformed or cut answer is an error, never a success.
    #[tokio::test]
    async fn answers_are_read_one_by_one() {
        let input: &[u8] = b"+OK\r\n$5\r\nab\r\nc\r\n$-1\r\n-ERR wrong\r\n:12\r\n*1\r\n$9\r\nshort";
        let mut reader = tokio::io::BufReader::new(input);
        let mut body = Vec::new();
        assert_eq!(read_answer(&mut reader, &mut body).await.unwrap(), Answer::Simple);
        assert_eq!(read_answer(&mut reader, &mut body).await.unwrap(), Answer::Bulk);
        assert_eq!(body, b"ab\r\nc");
        assert_eq!(read_answer(&mut reader, &mut body).await.unwrap(), Answer::Nil);
        assert_eq!(
            read_answer(&mut reader, &mut body).await.unwrap(),
            Answer::Error("ERR wrong".into())
        );
        assert_eq!(read_answer(&mut reader, &mut body).await.unwrap(), Answer::Simple);
        let array = read_answer(&mut reader, &mut body).await.unwrap_err();
        assert_eq!(array.kind(), io::ErrorKind::InvalidData);
        assert!(read_answer(&mut reader, &mut body).await.is_err(), "a cut bulk string");
    }

    #[test]
    fn cpu_is_user_plus_system() {
        let info = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.500000\r\n\
                    used_cpu_sys_children:9.0\r\n";
        assert_eq!(cpu_seconds(info), Some(1.75));
        assert_eq!(cpu_seconds("# CPU\r\nused_cpu_sys:1.0\r\n"), None);
    }

    /// A stand-in for Redis on loopback: `SET` answers `+OK` for its first `sets_allowed`
    /// calls and an error after, `GET` the value last set or nil, `INFO` a CPU figure that
    /// grows by 2.5 s per call. Counts the `SET`s and `GET`s it served.
    async fn fake_redis(sets_allowed: u64) -> (String, Rc<RefCell<[u64; 2]>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let counts = Rc::new(RefCell::new([0u64; 2]));
        let values = Rc::new(RefCell::new(std::collections::HashMap::<Vec<u8>, Vec<u8>>::new()));
        let infos = Rc::new(std::cell::Cell::new(0u32));
        let seen = Rc::clone(&counts);
        tokio::task::spawn_local(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (counts, values, infos) =
                    (Rc::clone(&seen), Rc::clone(&values), Rc::clone(&infos));
                tokio::task::spawn_local(async move {
                    let (reader, mut writer) = stream.into_split();
                    let mut reader = tokio::io::BufReader::new(reader);
                    while let Some(command) = read_command(&mut reader).await {
                        let answer = match command[0].as_slice() {
                            b"SET" if counts.borrow()[0] >= sets_allowed => {
                                b"-ERR refused\r\n".to_vec()
                            }
                            b"SET" => {
                                counts.borrow_mut()[0] += 1;
                                values.borrow_mut().insert(command[1].clone(), command[2].clone());
                                b"+OK\r\n".to_vec()
                            }
                            b"GET" => {
                                counts.borrow_mut()[1] += 1;
                                match values.borrow().get(&command[1]) {
                                    Some(v) => [format!("${}\r\n", v.len()).as_bytes(), v, b"\r\n"]
                                        .concat(),
                                    None => b"$-1\r\n".to_vec(),
                                }
                            }
                            b"INFO" => {
                                infos.set(infos.get() + 1);
                                let text = format!(
                                    "used_cpu_sys:{}\r\nused_cpu_user:0.5\r\n",
                                    2.5 * f64::from(infos.get())
                                );
                                format!("${}\r\n{text}\r\n", text.len()).into_bytes()
                            }
                            _ => b"-ERR unknown\r\n".to_vec(),
                        };
                        if writer.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, counts)
    }

    async fn read_command(
        reader: &mut tokio::io::BufReader<OwnedReadHalf>,
    ) -> Option<Vec<Vec<u8>>> {
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await.ok().filter(|&n| n > 0)?;
        let count: usize = std::str::from_utf8(&line[1..line.len() - 2]).ok()?.parse().ok()?;
        let mut parts = Vec::with_capacity(count);
        for _ in 0..count {
            line.clear();
            reader.read_until(b'\n', &mut line).await.ok()?;
            let length: usize = std::str::from_utf8(&line[1..line.len() - 2]).ok()?.parse().ok()?;
            let mut part = vec![0; length + 2];
            reader.read_exact(&mut part).await.ok()?;
            part.truncate(length);
            parts.push(part);
        }
        Some(parts)
    }

    fn plan(rate_per_s: f64) -> ReferencePlan {
        ReferencePlan {
            addresses: Vec::new(),
            credentials: Credentials::default(),
            bucket: "bench".into(),
            prefix: Vec::new(),
            workload: Workload::A,
            keys: KeyChooser::new(50, Distribution::Uniform, 0.99).unwrap(),
            seed: 7,
            value_bytes: 100,
            schedule: Schedule {
                rate_per_s,
                warmup: Duration::from_millis(200),
                duration: Duration::from_millis(500),
                drain: Duration::from_secs(2),
                inflight_max: 1024,
            },
        }
    }

    /// Against a stand-in server: every key is set before the run, every measured request is
    /// answered with no error, reads and updates both show, and the server's CPU is the
    /// difference of its two `INFO` figures.
    #[test]
    fn a_run_sends_every_request_and_reads_the_servers_cpu() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let (address, counts) = fake_redis(u64::MAX).await;
            let plan = plan(400.0);
            let measured = plan.schedule.requests() - plan.schedule.warmup_requests();
            // The run has a thread of its own; the stand-in serves from this one meanwhile.
            let handle = tokio::task::spawn_blocking(move || run(&address, 2, plan));
            let result = handle.await.unwrap().unwrap();
            assert_eq!(result.requests, measured);
            assert_eq!(result.answered, measured, "errors: {:?}", result.errors);
            assert!(result.errors.is_empty(), "{:?}", result.errors);
            assert!(result.ops.contains_key("read") && result.ops.contains_key("update"));
            assert_eq!(result.server_cpu_s, Some(2.5));
            let [sets, gets] = *counts.borrow();
            assert!(sets >= 50, "the 50 keys were set before the run ({sets} sets)");
            assert!(gets > 0);
        });
    }

    /// An error answer is an error of kind `redis`, counted against its operation, never a
    /// success; a refused `SET` before the run stops it with the server's message.
    #[test]
    fn error_answers_count_as_errors() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            // The 50 keys are set; every SET of the run is refused.
            let (address, _) = fake_redis(50).await;
            let handle = tokio::task::spawn_blocking(move || run(&address, 1, plan(200.0)));
            let result = handle.await.unwrap().unwrap();
            let updates = result.ops["update"].errors;
            assert!(updates > 0);
            assert_eq!(result.errors.get(REDIS_ERROR), Some(&updates));
            assert_eq!(result.ops["read"].errors, 0);
            assert_eq!(result.all.errors, updates);
            let (address, _) = fake_redis(10).await;
            let handle = tokio::task::spawn_blocking(move || run(&address, 1, plan(200.0)));
            let error = handle.await.unwrap().unwrap_err();
            assert!(error.contains("refused"), "{error}");
        });
    }
}
