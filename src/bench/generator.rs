//! # The open-loop generator
//!
//! Requests arrive on a fixed schedule, whatever the server does: request `i` has the
//! **intended start** `start + i / rate`. The generator sleeps until that instant, issues the
//! request and goes on to the next one without waiting for the answer. A request's
//! **latency** is measured from its intended start to its answer. A server that stalls for
//! 100 ms therefore shows up in every request that *should* have started during the stall,
//! which is what a user arriving at that moment would see. A closed-loop tool (send, wait,
//! send) stops sending while the server stalls and records one slow request instead of a
//! hundred: the error called coordinated omission.
//!
//! Both clocks are kept, so the difference can be seen and tested:
//! - `latency`: answer − intended start. The figure that matters.
//! - `service`: answer − actual send. What a closed-loop tool reports; it hides stalls.
//!
//! In-flight requests are bounded (`inflight_max`), because capnp-rpc has no back-pressure of
//! its own and an unbounded generator would only measure its own queue. A request whose
//! turn comes while the bound is reached waits for a slot; it is counted as **late** and still
//! measured from its intended start. Nothing is dropped silently: a request still unanswered
//! when the run's time is up is recorded as `unfinished` (with the latency it had reached),
//! and one that could not even be issued by then as `not_issued`.
//!
//! Warm-up: requests whose intended start falls in the first `warmup` are issued like the
//! others, but their results are discarded.
//!
//! Timing precision: tokio's timer works in whole milliseconds, which at 10 000 requests per
//! second would issue requests in bursts and add up to a millisecond to their latency. On
//! Linux the [`Pacer`] sleeps on a `timerfd` registered with the runtime instead, which wakes
//! within tens of microseconds without spinning a core; elsewhere it falls back to tokio's
//! timer. To take the wake-up delay out as well, it wakes a little early (at most
//! [`SPIN_MAX_US`], at most a tenth of the interval between requests, so at most a tenth of a
//! core) and yields until the due instant, reading answers meanwhile.
//! How late the generator itself issued each request is recorded too (`send_lag`), so a
//! generator that cannot keep up is visible in the results rather than hidden in them.
//!
//! ## One thread sends, another records
//! The thread that paces and sends does nothing else: a request's send and its answer are
//! each one message on a channel to a recorder thread of the run's own, which keeps the
//! histograms, the in-flight table and the progress window, and calls the progress callback.
//! Before that split, the sending thread also recorded every answer into five histograms and
//! every 250 ms scanned and cleared the progress window and redrew the progress bar; whatever
//! it did while a request was due made that request late, and a late send is latency the
//! store did not cause (docs/BENCHMARKS.md, "The benchmark against a bare client"). The
//! recorder polls the channel every [`RECORD_INTERVAL_MS`] instead of blocking on it, so
//! that a send never has to wake it.
//!
//! The generator is generic over the request: `issue(i)` returns a future that performs
//! request `i` and says which operation it was and how it ended. The store workloads, the
//! TCP echo floor and the tests all drive the same loop.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Most requests one run may issue (warm-up included). A larger schedule is refused.
pub const REQUESTS_MAX: u64 = 100_000_000;

/// Highest latency the histograms hold, in nanoseconds (10 minutes). Longer ones are
/// recorded as this value.
pub const LATENCY_NS_MAX: u64 = 600_000_000_000;

/// Significant decimal digits of every histogram (0.1% value resolution).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Longest time, in microseconds, the pacer yields before a request's start instead of
/// sleeping (see [`Pacer::set_spin`]): about the wake-up delay of a busy 2-core machine.
pub const SPIN_MAX_US: u64 = 40;

/// How often the progress callback is called.
pub const TICK_MS: u64 = 250;

/// How often the recorder thread takes the events of the sending thread, in milliseconds.
/// Events wait at most this long in the channel (a few hundred at 10 000 requests/s).
pub const RECORD_INTERVAL_MS: u64 = 10;

/// The name under which `unfinished` requests are counted among errors.
pub const UNFINISHED: &str = "unfinished";

/// The name under which `not_issued` requests are counted among errors.
pub const NOT_ISSUED: &str = "not_issued";

/// When and how many requests a run issues.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Arrival rate, requests per second. Must be positive.
    pub rate_per_s: f64,
    /// Time at the start whose results are discarded.
    pub warmup: Duration,
    /// Measured time after the warm-up.
    pub duration: Duration,
    /// Requests in flight at most; a request due while this many are in flight is late.
    pub inflight_max: usize,
    /// How long after the last intended start the run waits for answers before counting
    /// the rest as `unfinished`.
    pub drain: Duration,
}

impl Schedule {
    /// A schedule with a 5 s drain.
    pub fn new(rate_per_s: f64, warmup: Duration, duration: Duration, inflight_max: usize) -> Self {
        Self { rate_per_s, warmup, duration, inflight_max, drain: Duration::from_secs(5) }
    }

    /// Requests issued in all, warm-up included.
    pub fn requests(&self) -> u64 {
        ((self.warmup + self.duration).as_secs_f64() * self.rate_per_s).ceil() as u64
    }

    /// Requests whose results are discarded.
    pub fn warmup_requests(&self) -> u64 {
        (self.warmup.as_secs_f64() * self.rate_per_s).ceil() as u64
    }

    /// The intended start of request `i`, as an offset from the run's start.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rate_per_s) as u64)
    }

    /// Why the schedule cannot run, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(self.rate_per_s.is_finite() && self.rate_per_s > 0.0) {
            return Err(format!("rate must be a positive number, not {}", self.rate_per_s));
        }
        if self.duration.is_zero() {
            return Err("duration must be more than 0".into());
        }
        if self.inflight_max == 0 {
            return Err("inflight-max must be at least 1".into());
        }
        if self.requests() > REQUESTS_MAX {
            return Err(format!(
                "{} requests is over the limit of {REQUESTS_MAX} per run; lower the rate or \
                 the duration",
                self.requests()
            ));
        }
        Ok(())
    }
}

/// How one request ended: its operation's name and, if it failed, the error kind's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Operation name (`read`, `update`, `echo`, …).
    pub op: &'static str,
    /// `None` on success, else the error kind (`timeout`, `overloaded`, …).
    pub error: Option<&'static str>,
}

/// One operation's histograms and error count.
#[derive(Clone, Debug)]
pub struct OpResult {
    /// Successful requests: answer − intended start, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Successful requests: answer − actual send, in nanoseconds.
    pub service: Histogram<u64>,
    /// Failed requests.
    pub errors: u64,
}

impl OpResult {
    fn new() -> Self {
        Self { latency: new_histogram(), service: new_histogram(), errors: 0 }
    }
}

/// Everything a run measured (warm-up excluded).
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The schedule it ran.
    pub schedule: Schedule,
    /// Per operation.
    pub ops: BTreeMap<&'static str, OpResult>,
    /// All operations together.
    pub all: OpResult,
    /// Actual send − intended start of every measured request: how late the generator was.
    pub send_lag: Histogram<u64>,
    /// Errors by kind, `unfinished` and `not_issued` included.
    pub errors: BTreeMap<&'static str, u64>,
    /// Measured requests (issued or not).
    pub requests: u64,
    /// Measured requests answered, successfully or with an error.
    pub answered: u64,
    /// Measured requests that had to wait for an in-flight slot.
    pub late: u64,
    /// Measured requests still unanswered when the run ended.
    pub unfinished: u64,
    /// Measured requests never issued because the run's time was up.
    pub not_issued: u64,
    /// Seconds from the end of the warm-up to the last measured answer.
    pub measured_s: f64,
    /// CPU seconds (user + system) this whole process used from the first measured send to
    /// the end of the run: with embedded nodes, the nodes' and the generator's.
    pub cpu_s: Option<f64>,
    /// Of those, the generator's own thread's (the sending thread: pacing, issuing, its
    /// connections' I/O).
    pub generator_cpu_s: Option<f64>,
    /// CPU seconds (user + system) the server under test reported using over the measured
    /// time, where it reports its own (a Redis server's `INFO cpu`, [`super::redis`]).
    pub server_cpu_s: Option<f64>,
    /// The worst latency of the successful requests whose intended start fell in each
    /// [`WORST_WINDOW_MS`] of the measured time, in nanoseconds (0 for a window with none):
    /// a timeline that tells one long stall from a tail spread over the run.
    pub worst_ns: Vec<u64>,
}

/// The width of one window of [`RunResult::worst_ns`], in milliseconds.
pub const WORST_WINDOW_MS: u64 = 100;

impl RunResult {
    /// Note a successful request of `latency_ns` intended `since` after the warm-up ended.
    pub fn note_worst(&mut self, since: Duration, latency_ns: u64) {
        let window = (since.as_millis() / u128::from(WORST_WINDOW_MS)) as usize;
        if window >= self.worst_ns.len() {
            self.worst_ns.resize(window + 1, 0);
        }
        self.worst_ns[window] = self.worst_ns[window].max(latency_ns);
    }
}

impl RunResult {
    /// Measured requests that were answered (successfully or with an error) per second.
    pub fn achieved_rate_per_s(&self) -> f64 {
        if self.measured_s > 0.0 {
            self.answered as f64 / self.measured_s
        } else {
            0.0
        }
    }

    /// Measured requests that failed, in all.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What the progress callback sees every [`TICK_MS`].
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    /// Time since the run started (warm-up included).
    pub elapsed: Duration,
    /// The run's planned length (warm-up included, drain excluded).
    pub planned: Duration,
    /// Answers per second since the last tick.
    pub rate_per_s: f64,
    /// p99.9 latency of the answers since the last tick, in nanoseconds (0 if none).
    pub p999_ns: u64,
    /// Whether the run is still in its warm-up.
    pub warming_up: bool,
}

/// A latency histogram in nanoseconds from 1 ns to [`LATENCY_NS_MAX`].
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
        .expect("the histogram bounds are constants that hdrhistogram accepts")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).clamp(1, LATENCY_NS_MAX)
}

/// What the sending thread tells the recorder thread, one message per event.
#[derive(Debug)]
enum Event {
    /// Request `i`, measured, was sent at `sent`; `late` if it waited for an in-flight slot.
    Sent { i: u64, intended: Instant, sent: Instant, late: bool },
    /// Request `i` was answered at `done`.
    Answered { i: u64, intended: Instant, sent: Instant, done: Instant, outcome: Outcome },
    /// The run is over at `now`; these intended starts were never issued.
    Close { now: Instant, never_issued: Vec<Instant> },
}

/// The run's bookkeeping, owned by the recorder thread.
struct Recorder {
    measure_from: Instant,
    result: RunResult,
    /// Intended starts of measured requests in flight, by sequence number.
    inflight: HashMap<u64, Instant>,
    last_answer: Option<Instant>,
    window: Histogram<u64>,
    window_answers: u64,
}

impl Recorder {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Sent { i, intended, sent, late } => {
                self.inflight.insert(i, intended);
                self.result.send_lag.saturating_record(nanos(sent - intended));
                self.result.late += u64::from(late);
            }
            Event::Answered { i, intended, sent, done, outcome } => {
                self.record(i, intended, sent, done, outcome);
            }
            Event::Close { now, never_issued } => self.close(now, never_issued.into_iter()),
        }
    }

    fn record(&mut self, i: u64, intended: Instant, sent: Instant, done: Instant, out: Outcome) {
        if intended < self.measure_from {
            self.window_answers += 1;
            return;
        }
        self.inflight.remove(&i);
        self.last_answer = Some(self.last_answer.map_or(done, |t| t.max(done)));
        self.window_answers += 1;
        self.result.answered += 1;
        let op = self.result.ops.entry(out.op).or_insert_with(OpResult::new);
        match out.error {
            None => {
                let latency = nanos(done - intended);
                let service = nanos(done - sent);
                op.latency.saturating_record(latency);
                op.service.saturating_record(service);
                self.result.all.latency.saturating_record(latency);
                self.result.all.service.saturating_record(service);
                self.window.saturating_record(latency);
                self.result.note_worst(intended - self.measure_from, latency);
            }
            Some(kind) => {
                op.errors += 1;
                self.result.all.errors += 1;
                *self.result.errors.entry(kind).or_insert(0) += 1;
            }
        }
    }

    /// Count what is left when time is up: unanswered and never-issued requests.
    fn close(&mut self, now: Instant, never_issued: impl Iterator<Item = Instant>) {
        for (_, intended) in self.inflight.drain() {
            self.result.unfinished += 1;
            self.result.all.errors += 1;
            self.result.all.latency.saturating_record(nanos(now - intended));
        }
        for intended in never_issued {
            if intended >= self.measure_from {
                self.result.not_issued += 1;
                self.result.all.errors += 1;
                self.result
                    .all
                    .latency
                    .saturating_record(nanos(now.saturating_duration_since(intended)));
            }
        }
        if self.result.unfinished > 0 {
            self.result.errors.insert(UNFINISHED, self.result.unfinished);
            self.last_answer = Some(now);
        }
        if self.result.not_issued > 0 {
            self.result.errors.insert(NOT_ISSUED, self.result.not_issued);
            self.last_answer = Some(now);
        }
        let end = self.last_answer.unwrap_or(self.measure_from);
        self.result.measured_s = end.saturating_duration_since(self.measure_from).as_secs_f64();
    }

    /// The progress of the last window, which starts anew.
    fn tick(&mut self, now: Instant, since: Instant, start: Instant, planned: Duration) -> Tick {
        let p999_ns = if self.window.is_empty() { 0 } else { self.window.value_at_quantile(0.999) };
        let answers = std::mem::take(&mut self.window_answers);
        self.window.reset();
        Tick {
            elapsed: now.saturating_duration_since(start),
            planned,
            rate_per_s: answers as f64 / (now - since).as_secs_f64().max(1e-6),
            p999_ns,
            warming_up: now < self.measure_from,
        }
    }
}

/// The recorder thread: every [`RECORD_INTERVAL_MS`] it takes the events sent since, records
/// them, and every [`TICK_MS`] calls `on_tick`, until the run's `Close` event. It polls
/// rather than blocks on the channel so that sending an event never wakes a thread (a
/// system call on the sending thread), and so that its own work, the histograms and the
/// progress output, never runs on the sending thread.
fn record_loop(
    mut recorder: Recorder,
    events: std::sync::mpsc::Receiver<Event>,
    start: Instant,
    planned: Duration,
    mut on_tick: impl FnMut(Tick),
) -> RunResult {
    let mut last_tick = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(RECORD_INTERVAL_MS));
        for event in events.try_iter() {
            let closing = matches!(event, Event::Close { .. });
            recorder.apply(event);
            if closing {
                return recorder.result;
            }
        }
        let now = Instant::now();
        if now - last_tick >= Duration::from_millis(TICK_MS) {
            on_tick(recorder.tick(now, last_tick, start, planned));
            last_tick = now;
        }
    }
}

/// Sleeps until an instant with microsecond precision (see the module doc).
pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    /// How long before a deadline the timer wakes, the rest being spent yielding.
    spin: Duration,
}

impl Pacer {
    /// A pacer on a `timerfd` where the platform has one, else on tokio's timer. Must be
    /// called inside a tokio runtime.
    pub fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
            let flags = TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC;
            // `AsyncFd::new` is deprecated because a borrowed descriptor could be closed
            // while registered; here the AsyncFd owns the `OwnedFd` for its whole life, so
            // nothing else can close or reuse it.
            #[allow(deprecated)]
            let timer = timerfd_create(TimerfdClockId::Monotonic, flags)
                .ok()
                .and_then(|fd| tokio::io::unix::AsyncFd::new(fd).ok());
            if timer.is_none() {
                tracing::warn!("no timerfd: pacing on tokio's millisecond timer");
            }
            Self { timer, spin: Duration::ZERO }
        }
        #[cfg(not(target_os = "linux"))]
        Self { spin: Duration::ZERO }
    }

    /// Whether this pacer has microsecond precision.
    pub fn is_precise(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.timer.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Return at `deadline` (at once if it passed).
    pub async fn sleep_until(&mut self, deadline: Instant) {
        let now = Instant::now();
        if deadline <= now {
            return;
        }
        let wake = deadline - self.spin;
        #[cfg(target_os = "linux")]
        if let Some(timer) = &self.timer {
            if wake > now && precise_sleep(timer, wake - now).await.is_err() {
                tracing::warn!("timerfd failed: pacing on tokio's millisecond timer");
                self.timer = None;
            }
        }
        if !self.is_precise() {
            tokio::time::sleep_until(deadline.into()).await;
        }
        // Waking takes tens of microseconds on a busy machine; the timer fires `spin` early
        // and the rest is spent yielding, which lets answers be read meanwhile (a yield
        // polls the runtime's I/O driver before the task runs again).
        while Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
    }

    /// Wake up to `spin` before each deadline and yield until it: finer timing for up to
    /// `spin` of CPU per request. [`run`] sets it to [`SPIN_MAX_US`] or a tenth of the
    /// interval between requests, whichever is smaller.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_os = "linux")]
async fn precise_sleep(
    timer: &tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    wait: Duration,
) -> std::io::Result<()> {
    use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    // An all-zero value would disarm the timer instead of firing it.
    let wait = wait.max(Duration::from_nanos(1));
    let value = Timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos() as _ };
    let spec = Itimerspec { it_interval: zero, it_value: value };
    timerfd_settime(timer.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
    loop {
        let mut ready = timer.readable().await?;
        let mut expirations = [0u8; 8];
        match rustix::io::read(timer.get_ref(), &mut expirations) {
            Ok(_) => return Ok(()),
            // Readiness left over from an earlier expiration: wait for this one.
            Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Run `schedule`, issuing request `i` with `issue(i)` at its intended start, and call
/// `on_tick` every [`TICK_MS`] from the recorder thread. Must run inside a tokio
/// `LocalSet`.
///
/// The calling thread only paces, issues and timestamps: each send and each answer is one
/// message to a recorder thread of the run's own, which keeps the histograms and calls
/// `on_tick` (see `record_loop`). Returns once every measured request was answered, or
/// when the run's time is up (the planned length plus `schedule.drain`), whichever comes
/// first.
pub async fn run<F, Fut>(
    schedule: &Schedule,
    pacer: &mut Pacer,
    mut issue: F,
    on_tick: impl FnMut(Tick) + Send + 'static,
) -> RunResult
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Outcome> + 'static,
{
    assert!(schedule.check().is_ok(), "bad schedule: {:?}", schedule.check());
    let total = schedule.requests();
    // A short lead so that the first request is not late by the setup below.
    let start = Instant::now() + Duration::from_millis(2);
    let measure_from = start + schedule.warmup;
    let planned = schedule.warmup + schedule.duration;
    let time_up = start + planned + schedule.drain;
    let recorder = Recorder {
        measure_from,
        result: RunResult {
            schedule: schedule.clone(),
            ops: BTreeMap::new(),
            all: OpResult::new(),
            send_lag: new_histogram(),
            errors: BTreeMap::new(),
            requests: total - schedule.warmup_requests().min(total),
            answered: 0,
            late: 0,
            unfinished: 0,
            not_issued: 0,
            measured_s: 0.0,
            cpu_s: None,
            generator_cpu_s: None,
            server_cpu_s: None,
            worst_ns: Vec::new(),
        },
        inflight: HashMap::new(),
        last_answer: None,
        window: new_histogram(),
        window_answers: 0,
    };
    let (events, received) = std::sync::mpsc::channel();
    let recording = std::thread::Builder::new()
        .name("bench-recorder".into())
        .spawn(move || record_loop(recorder, received, start, planned, on_tick))
        .expect("the recorder thread starts");
    let interval = Duration::from_secs_f64(1.0 / schedule.rate_per_s);
    pacer.set_spin((interval / 10).min(Duration::from_micros(SPIN_MAX_US)));
    let inflight = Rc::new(Cell::new(0usize));
    let slot_freed = Rc::new(tokio::sync::Notify::new());

    let mut issued = 0;
    let mut cpu_from = None;
    'schedule: while issued < total {
        let i = issued;
        let intended = start + schedule.offset(i);
        pacer.sleep_until(intended).await;
        let late = inflight.get() >= schedule.inflight_max;
        while inflight.get() >= schedule.inflight_max {
            tokio::select! {
                () = slot_freed.notified() => {}
                () = tokio::time::sleep_until(time_up.into()) => break 'schedule,
            }
        }
        let sent = Instant::now();
        if sent >= time_up {
            break;
        }
        if intended >= measure_from {
            cpu_from = cpu_from.or_else(|| Some((process_cpu_s(), thread_cpu_s())));
            // The receiver lives until the `Close` event below: sending cannot fail here.
            let _ = events.send(Event::Sent { i, intended, sent, late });
        }
        inflight.set(inflight.get() + 1);
        let request = issue(i);
        let (events, inflight, slot_freed) =
            (events.clone(), Rc::clone(&inflight), Rc::clone(&slot_freed));
        tokio::task::spawn_local(async move {
            let outcome = request.await;
            let done = Instant::now();
            inflight.set(inflight.get() - 1);
            slot_freed.notify_one();
            // After the run closed, nobody listens any more: the answer is dropped.
            let _ = events.send(Event::Answered { i, intended, sent, done, outcome });
        });
        issued += 1;
    }
    // Wait for the answers still due, up to the run's end.
    while inflight.get() > 0 && Instant::now() < time_up {
        tokio::select! {
            () = slot_freed.notified() => {}
            () = tokio::time::sleep_until(time_up.into()) => {}
        }
    }
    let cpu =
        cpu_from.map(|(process, thread)| (process_cpu_s() - process, thread_cpu_s() - thread));
    let never_issued = (issued..total).map(|i| start + schedule.offset(i)).collect();
    let _ = events.send(Event::Close { now: Instant::now(), never_issued });
    let mut result = recording.join().expect("the recorder thread does not panic");
    (result.cpu_s, result.generator_cpu_s) = (cpu.map(|c| c.0), cpu.map(|c| c.1));
    result
}

/// Make the calling thread's (the generator's) timers exact: a timer slack of 1 ns instead
/// of the default 50 µs, so the pacer's `timerfd` fires when asked. (Raising the thread's
/// priority as well was tried: at nice -10 it preempted the embedded nodes' threads at every
/// send and answer, and p99.9 at 10 000/s grew from 6 to 8 ms to 30 to 49 ms with no less
/// send lag; docs/BENCHMARKS.md, "Replica calls in batches".)
pub fn precise_timers() {
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
}

/// CPU seconds (user + system) this process has used since it started, every thread.
pub fn process_cpu_s() -> f64 {
    cpu_s(rustix::time::ClockId::ProcessCPUTime)
}

/// CPU seconds (user + system) the calling thread has used since it started.
pub fn thread_cpu_s() -> f64 {
    cpu_s(rustix::time::ClockId::ThreadCPUTime)
}

fn cpu_s(clock: rustix::time::ClockId) -> f64 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local<F: Future>(future: F) -> F::Output {
        crate::client::block_on(future)
    }

    /// Every scheduled request is issued once; warm-up answers are not counted.
    #[test]
    fn issues_every_request_and_discards_warmup() {
        let schedule =
            Schedule::new(1000.0, Duration::from_millis(200), Duration::from_millis(300), 64);
        let seen = Rc::new(Cell::new(0u64));
        let counter = Rc::clone(&seen);
        let result = local(async move {
            let mut pacer = Pacer::new();
            run(
                &schedule,
                &mut pacer,
                move |_| {
                    counter.set(counter.get() + 1);
                    async { Outcome { op: "noop", error: None } }
                },
                |_| {},
            )
            .await
        });
        assert_eq!(seen.get(), 500, "every request issued exactly once");
        assert_eq!(result.requests, 300);
        assert_eq!(result.all.latency.len(), 300, "warm-up answers are discarded");
        assert_eq!(result.error_count(), 0);
        assert_eq!(result.late, 0);
    }

    /// A request that finds the in-flight bound reached waits, is counted as late, and its
    /// wait is part of its latency but not of its service time.
    #[test]
    fn bound_makes_requests_late_not_dropped() {
        let schedule = Schedule::new(500.0, Duration::ZERO, Duration::from_millis(200), 1);
        let result = local(async move {
            let mut pacer = Pacer::new();
            run(
                &schedule,
                &mut pacer,
                |_| async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Outcome { op: "slow", error: None }
                },
                |_| {},
            )
            .await
        });
        assert_eq!(result.requests, 100);
        assert!(result.late >= 50, "most requests waited for the one slot: {}", result.late);
        let answered = result.all.latency.len();
        assert_eq!(answered + result.unfinished + result.not_issued, 100, "none dropped");
        let latency_max = result.all.latency.max();
        let service_p50 = result.all.service.value_at_quantile(0.5);
        assert!(latency_max > 5 * service_p50, "{latency_max} vs {service_p50}");
    }

    /// Errors are counted by kind and per operation, and not mixed into latencies.
    #[test]
    fn errors_are_counted_by_kind() {
        let schedule = Schedule::new(1000.0, Duration::ZERO, Duration::from_millis(100), 16);
        let result = local(async move {
            let mut pacer = Pacer::new();
            run(
                &schedule,
                &mut pacer,
                |i| async move {
                    let error = (i % 4 == 0).then_some("overloaded");
                    Outcome { op: if i % 2 == 0 { "even" } else { "odd" }, error }
                },
                |_| {},
            )
            .await
        });
        assert_eq!(result.errors.get("overloaded"), Some(&25));
        assert_eq!(result.ops["even"].errors, 25);
        assert_eq!(result.ops["odd"].errors, 0);
        assert_eq!(result.all.latency.len(), 75);
    }

    /// Answers that never come are counted as unfinished when the drain time is up.
    #[test]
    fn unanswered_requests_are_unfinished() {
        let mut schedule = Schedule::new(100.0, Duration::ZERO, Duration::from_millis(100), 4);
        schedule.drain = Duration::from_millis(100);
        let result = local(async move {
            let mut pacer = Pacer::new();
            run(&schedule, &mut pacer, |_| futures::future::pending(), |_| {}).await
        });
        assert_eq!(result.requests, 10);
        assert_eq!(result.unfinished, 4, "the bound let four in flight");
        assert_eq!(result.not_issued, 6);
        assert_eq!(result.errors[UNFINISHED], 4);
        assert_eq!(result.all.latency.len(), 10, "each with the latency it reached");
        assert!(result.all.latency.min() >= 100_000_000);
    }

    /// The schedule refuses what it cannot run.
    #[test]
    fn schedule_checks() {
        let ok = Schedule::new(10.0, Duration::ZERO, Duration::from_secs(1), 1);
        assert!(ok.check().is_ok());
        assert_eq!(ok.requests(), 10);
        assert_eq!(ok.offset(5), Duration::from_millis(500));
        assert!(Schedule { rate_per_s: 0.0, ..ok.clone() }.check().is_err());
        assert!(Schedule { inflight_max: 0, ..ok.clone() }.check().is_err());
        assert!(Schedule { rate_per_s: 1e9, duration: Duration::from_secs(1000), ..ok }
            .check()
            .is_err());
    }
}
