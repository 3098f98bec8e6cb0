//! # A history checker for CRDT, sibling and lww buckets
//!
//! A fault test records every write a client attempted, with what the client learnt of its
//! outcome and when it was invoked and answered, and at the end reads the converged state of
//! every key it wrote. The checker then says whether that final state can be explained by the
//! history:
//!
//! - an **acknowledged** write (the node answered ok) must be in the final state, unless a
//!   later write that **saw it** replaced it;
//! - a write that **failed** with a definite error, or whose outcome is **unknown** (timeout,
//!   quorum not met, connection lost: some replicas may have it), may or may not be there;
//! - nothing may be there that no client attempted.
//!
//! Per kind of write that gives:
//!
//! | write                   | lost when                                            | unexpected when                        |
//! |-------------------------|------------------------------------------------------|----------------------------------------|
//! | cart add (item, q)      | the item's quantity < acknowledged adds' q           | quantity > every attempted add's q     |
//! | counter increment (+a)  | the value < sum of acknowledged a                    | the value > sum of every attempted a   |
//! | set add (element)       | the element is missing                               | the set holds an element never added   |
//! | siblings put (v, saw S) | no sibling has v, and no write's S holds v           | a sibling's value was never put        |
//! | lww put (v)             | the final value is not v, and its put was invoked    | the final value was never put, or the  |
//! |                         | before v's was acknowledged                          | key holds more than one value          |
//!
//! **Siblings.** A put carries the context of a read (empty for a blind put); `saw` is the
//! set of values that read returned, which is exactly what the put may supersede: a context
//! covers a value's dot only if the read that returned it held the value, or held a write that
//! already superseded it (and that write saw the value in turn). So a value may disappear
//! only if some attempted write saw it; that write's outcome does not matter (an unknown or
//! even a failed one may have been stored on some replica). With blind puts only, nothing may
//! disappear.
//!
//! **lww** keeps one value per key and drops concurrent writes by contract, so it is the
//! negative control: a checker that never reports a loss proves nothing. A blind lww put
//! sees nothing, so the only write that may replace an acknowledged put P is one that
//! **began after P was acknowledged** (in real time, by the test's clock: every client runs in
//! the test process). If the final value was written by a put invoked before P's
//! acknowledgement (concurrent with P, or older), P was acknowledged and then dropped: that is
//! reported as lost. The definition is sound (every reported loss is an acknowledged write
//! that vanished with no later write to explain it) and simple (it needs only the final
//! value and each write's invocation and answer times); it does not try to say which of two
//! concurrent writes a correct lww should keep. A final value nobody put, or two values at
//! once, is unexpected.
//!
//! The checker knows nothing of removes, decrements or deletes: the workloads that use it
//! only add and put, so "acknowledged means present, unless seen and replaced" is the whole
//! specification, and it holds whatever order the writes were applied in. Values and items
//! must be unique per key for a missing one to be attributable to one write (the workloads
//! name them after the client and a sequence number); the checker does not require it, it
//! only counts per value.
//!
//! Counts are per bucket. For carts, sets, siblings and lww `lost` counts values (items,
//! elements, put values) that are missing or short; for counters it counts increments (the
//! shortfall of the final value below the acknowledged sum).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Instant;

use cartwheel::Error;
use cartwheel_resolvers::Value;

/// What the client learnt of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered ok: the write must survive.
    Acknowledged,
    /// A definite error: nothing was written (or it does not matter whether it was).
    Failed,
    /// Timeout, quorum not met, connection lost: it may or may not have been stored.
    Unknown,
}

impl Outcome {
    /// Classify a client result with [`Error::outcome_unknown`].
    pub fn of<T>(result: &Result<T, Error>) -> Self {
        match result {
            Ok(_) => Self::Acknowledged,
            Err(e) if e.outcome_unknown() => Self::Unknown,
            Err(_) => Self::Failed,
        }
    }
}

/// A write the checker understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `update` with one [`cartwheel_resolvers::Op::CartAdd`].
    CartAdd {
        /// The item.
        item: Vec<u8>,
        /// The quantity added (> 0).
        quantity: i64,
    },
    /// `update` with one [`cartwheel_resolvers::Op::CounterIncrement`] of a positive amount.
    CounterIncrement(i64),
    /// `update` with one [`cartwheel_resolvers::Op::SetAdd`].
    SetAdd(Vec<u8>),
    /// A `put` with an empty context to a `siblings` bucket.
    BlindPut(Vec<u8>),
    /// A `put` to a `siblings` bucket with the context of a read that returned the values
    /// `observed` (which the put supersedes).
    ContextPut {
        /// The value put.
        value: Vec<u8>,
        /// The values the read returned.
        observed: Vec<Vec<u8>>,
    },
    /// A `put` with an empty context to an `lww` bucket.
    LwwPut(Vec<u8>),
}

/// One attempted write and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The bucket written.
    pub bucket: String,
    /// The key written.
    pub key: Vec<u8>,
    /// What was written.
    pub operation: Operation,
    /// What the client learnt.
    pub outcome: Outcome,
    /// When the client sent it.
    pub invoked: Instant,
    /// When the client learnt its outcome.
    pub completed: Instant,
    /// The error the client got, if any (for the test's printout).
    pub error: Option<String>,
}

/// The final, converged state of every key: `None` for a key that reads as not found.
pub type FinalState = BTreeMap<(String, Vec<u8>), Option<Value>>;

/// Attempted writes, in the order each client made them (clients' histories are appended
/// one after the other; the checker does not need a global order).
#[derive(Clone, Debug, Default)]
pub struct History {
    records: Vec<Record>,
}

impl History {
    /// Record one attempted write that just ended, as if it took no time (only lww puts need
    /// times: use [`History::record_at`] for them).
    pub fn record(&mut self, bucket: &str, key: &[u8], operation: Operation, outcome: Outcome) {
        let now = Instant::now();
        self.record_at(bucket, key, operation, outcome, now, now);
    }

    /// Record one attempted write, sent at `invoked` and answered (or given up) just now with
    /// `result`.
    pub fn record_result<T>(
        &mut self,
        bucket: &str,
        key: &[u8],
        operation: Operation,
        result: &Result<T, Error>,
        invoked: Instant,
    ) {
        let now = Instant::now();
        self.record_at(bucket, key, operation, Outcome::of(result), invoked, now);
        if let Err(e) = result {
            self.records.last_mut().expect("just recorded").error = Some(e.to_string());
        }
    }

    /// Record one attempted write, sent at `invoked` and answered (or given up) at
    /// `completed`.
    pub fn record_at(
        &mut self,
        bucket: &str,
        key: &[u8],
        operation: Operation,
        outcome: Outcome,
        invoked: Instant,
        completed: Instant,
    ) {
        assert!(invoked <= completed, "a write is answered after it was sent");
        if let Operation::CartAdd { quantity: amount, .. } | Operation::CounterIncrement(amount) =
            operation
        {
            assert!(amount > 0, "the checker's bounds hold for positive amounts only: {amount}");
        }
        self.records.push(Record {
            bucket: bucket.to_string(),
            key: key.to_vec(),
            operation,
            outcome,
            invoked,
            completed,
            error: None,
        });
    }

    /// Append another client's history.
    pub fn extend(&mut self, other: History) {
        self.records.extend(other.records);
    }

    /// Every record.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Every (bucket, key) written: the keys to read at the end.
    pub fn keys(&self) -> BTreeSet<(String, Vec<u8>)> {
        self.records.iter().map(|r| (r.bucket.clone(), r.key.clone())).collect()
    }

    /// Check the final state against the history. A key of the history missing from
    /// `final_state` counts as not found.
    pub fn check(&self, final_state: &FinalState) -> Report {
        let mut report = Report::default();
        let mut by_key: BTreeMap<(String, Vec<u8>), Vec<&Record>> = BTreeMap::new();
        for record in &self.records {
            let bucket = report.buckets.entry(record.bucket.clone()).or_default();
            match record.outcome {
                Outcome::Acknowledged => bucket.acknowledged += 1,
                Outcome::Failed => bucket.failed += 1,
                Outcome::Unknown => bucket.unknown += 1,
            }
            by_key.entry((record.bucket.clone(), record.key.clone())).or_default().push(record);
        }
        for ((bucket, key), records) in by_key {
            let value = final_state.get(&(bucket.clone(), key.clone())).cloned().flatten();
            let report = report.buckets.get_mut(&bucket).expect("counted above");
            check_key(
                &format!("{bucket}/{}", String::from_utf8_lossy(&key)),
                &records,
                value,
                report,
            );
        }
        report
    }
}

/// Per (value, item or element): the amount acknowledged and the amount attempted.
#[derive(Clone, Copy, Debug, Default)]
struct Bounds {
    acknowledged: i64,
    attempted: i64,
    /// Attempted with a definite failure.
    failed: i64,
}

impl Bounds {
    fn add(&mut self, amount: i64, outcome: Outcome) {
        self.attempted += amount;
        match outcome {
            Outcome::Acknowledged => self.acknowledged += amount,
            Outcome::Failed => self.failed += amount,
            Outcome::Unknown => {}
        }
    }
}

/// Check one key: its records (all of one kind, the bucket's) against its final value.
fn check_key(name: &str, records: &[&Record], value: Option<Value>, report: &mut BucketReport) {
    let family = |operation: &Operation| match operation {
        Operation::BlindPut(_) | Operation::ContextPut { .. } => 0,
        Operation::CartAdd { .. } => 1,
        Operation::CounterIncrement(_) => 2,
        Operation::SetAdd(_) => 3,
        Operation::LwwPut(_) => 4,
    };
    let first = &records[0].operation;
    assert!(
        records.iter().all(|r| family(&r.operation) == family(first)),
        "{name}: the checker needs one kind of write per key"
    );
    match first {
        Operation::CounterIncrement(_) => check_counter(name, records, value, report),
        Operation::LwwPut(_) => check_lww(name, records, value, report),
        _ => check_members(name, records, value, report),
    }
}

/// A counter: the acknowledged sum <= the value <= the attempted sum.
fn check_counter(name: &str, records: &[&Record], value: Option<Value>, report: &mut BucketReport) {
    let mut counter = Bounds::default();
    for record in records {
        if let Operation::CounterIncrement(amount) = record.operation {
            counter.add(amount, record.outcome);
        }
    }
    let total = match value {
        None => 0,
        Some(Value::Counter(total)) => total,
        Some(other) => return report.wrong_type(name, &other),
    };
    if total < counter.acknowledged {
        report.lost += (counter.acknowledged - total) as usize;
        report.problems.push(format!(
            "{name}: counter is {total}, below the {} acknowledged increments ({} lost)",
            counter.acknowledged,
            counter.acknowledged - total
        ));
    }
    if total > counter.attempted {
        report.unexpected += (total - counter.attempted) as usize;
        report.problems.push(format!(
            "{name}: counter is {total}, above the {} attempted increments",
            counter.attempted
        ));
    }
}

/// Carts, sets and siblings: every acknowledged member is there with at least its
/// acknowledged amount (unless a write saw it: siblings), none above its attempted amount.
fn check_members(name: &str, records: &[&Record], value: Option<Value>, report: &mut BucketReport) {
    let mut members: BTreeMap<Vec<u8>, Bounds> = BTreeMap::new();
    // Values some write saw, and so may have superseded.
    let mut seen: BTreeSet<&[u8]> = BTreeSet::new();
    for record in records {
        match &record.operation {
            Operation::CartAdd { item, quantity } => {
                members.entry(item.clone()).or_default().add(*quantity, record.outcome)
            }
            Operation::SetAdd(member) | Operation::BlindPut(member) => {
                members.entry(member.clone()).or_default().add(1, record.outcome)
            }
            Operation::ContextPut { value, observed } => {
                members.entry(value.clone()).or_default().add(1, record.outcome);
                seen.extend(observed.iter().map(Vec::as_slice));
            }
            Operation::CounterIncrement(_) | Operation::LwwPut(_) => {
                unreachable!("check_key sends these elsewhere")
            }
        }
    }
    // What the final value holds, in the same shape: member -> amount.
    let found: BTreeMap<Vec<u8>, i64> = match (&records[0].operation, value) {
        (_, None) => BTreeMap::new(),
        (Operation::CartAdd { .. }, Some(Value::Cart(items))) => items.into_iter().collect(),
        (Operation::SetAdd(_), Some(Value::Set(elements))) => count(elements),
        (Operation::BlindPut(_) | Operation::ContextPut { .. }, Some(Value::Siblings(values))) => {
            count(values)
        }
        (_, Some(other)) => return report.wrong_type(name, &other),
    };
    for (member, bounds) in &members {
        let amount = found.get(member).copied().unwrap_or(0);
        if amount < bounds.acknowledged && !seen.contains(member.as_slice()) {
            report.lost += 1;
            report.problems.push(format!(
                "{name}: {:?} has {amount}, below its acknowledged {}",
                String::from_utf8_lossy(member),
                bounds.acknowledged
            ));
        }
    }
    for (member, amount) in &found {
        if members.get(member).is_some_and(|b| b.failed == b.attempted && *amount > 0) {
            report.failed_present += 1;
        }
        let attempted = members.get(member).map_or(0, |b| b.attempted);
        if *amount > attempted {
            report.unexpected += 1;
            report.problems.push(format!(
                "{name}: {:?} has {amount}, above its attempted {attempted}",
                String::from_utf8_lossy(member)
            ));
        }
    }
}

/// lww: the final value was put by someone, and every acknowledged put is the final value
/// or was replaced by a put invoked after it was acknowledged (see the module docs).
fn check_lww(name: &str, records: &[&Record], value: Option<Value>, report: &mut BucketReport) {
    let values = match value {
        None => Vec::new(),
        Some(Value::Siblings(values)) => values,
        Some(other) => return report.wrong_type(name, &other),
    };
    if values.len() > 1 {
        report.unexpected += 1;
        report.problems.push(format!("{name}: holds {} values; lww keeps one", values.len()));
    }
    let put_value = |record: &&Record| match &record.operation {
        Operation::LwwPut(value) => value.clone(),
        _ => unreachable!("check_key sends only lww puts here"),
    };
    // The last invoked put that wrote a final value: the most lenient reading when a value
    // was put more than once.
    let mut final_put: Option<&Record> = None;
    for value in &values {
        let writes = records.iter().filter(|r| &put_value(r) == value);
        if writes.clone().count() > 0 && writes.clone().all(|r| r.outcome == Outcome::Failed) {
            report.failed_present += 1;
        }
        match writes.max_by_key(|r| r.invoked) {
            Some(put) => {
                if final_put.is_none_or(|f| f.invoked < put.invoked) {
                    final_put = Some(put);
                }
            }
            None => {
                report.unexpected += 1;
                report.problems.push(format!(
                    "{name}: holds {:?}, which nobody put",
                    String::from_utf8_lossy(value)
                ));
            }
        }
    }
    for record in records.iter().filter(|r| r.outcome == Outcome::Acknowledged) {
        let put = put_value(record);
        if values.contains(&put) {
            continue;
        }
        let why = match final_put {
            Some(put) if put.invoked > record.completed => continue,
            Some(put) => format!(
                "the final value {:?} ({:?}) was put {:.1} ms before this one was acknowledged",
                String::from_utf8_lossy(&put_value(&put)),
                put.outcome,
                record.completed.duration_since(put.invoked).as_secs_f64() * 1e3
            ),
            None if values.is_empty() => "the key reads as not found".to_string(),
            None => "the final value was never put".to_string(),
        };
        report.lost += 1;
        report.problems.push(format!(
            "{name}: acknowledged put {:?} is gone: {why}",
            String::from_utf8_lossy(&put)
        ));
    }
}

/// How many times each value occurs.
fn count(values: Vec<Vec<u8>>) -> BTreeMap<Vec<u8>, i64> {
    let mut out = BTreeMap::new();
    for value in values {
        *out.entry(value).or_insert(0) += 1;
    }
    out
}

/// What the checker found in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketReport {
    /// Writes acknowledged.
    pub acknowledged: usize,
    /// Writes whose outcome is unknown.
    pub unknown: usize,
    /// Writes that failed with a definite error.
    pub failed: usize,
    /// Acknowledged writes missing from the final state (see the module docs for the unit).
    pub lost: usize,
    /// Things in the final state no write explains, and values of the wrong type.
    pub unexpected: usize,
    /// Values (items, elements, puts) in the final state whose every attempt failed with a
    /// definite error: not a finding of the checker (a failed write may or may not be
    /// there), but a sign that an error the client took as definite was not.
    pub failed_present: usize,
    /// One line per finding.
    pub problems: Vec<String>,
}

impl BucketReport {
    fn wrong_type(&mut self, name: &str, value: &Value) {
        self.unexpected += 1;
        self.problems.push(format!("{name}: reads as {value:?}, not the bucket's type"));
    }
}

/// What the checker found, per bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Per bucket name.
    pub buckets: BTreeMap<String, BucketReport>,
}

impl Report {
    /// Acknowledged writes lost, over all buckets.
    pub fn lost(&self) -> usize {
        self.buckets.values().map(|b| b.lost).sum()
    }

    /// Unexplained findings, over all buckets.
    pub fn unexpected(&self) -> usize {
        self.buckets.values().map(|b| b.unexpected).sum()
    }

    /// Acknowledged writes, over all buckets.
    pub fn acknowledged(&self) -> usize {
        self.buckets.values().map(|b| b.acknowledged).sum()
    }

    /// Whether the final state is explained by the history.
    pub fn is_valid(&self) -> bool {
        self.lost() == 0 && self.unexpected() == 0
    }
}

impl fmt::Display for Report {
    /// One line of counts per bucket, then at most 20 findings per bucket.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, b) in &self.buckets {
            write!(
                f,
                "{name}: acknowledged {}, unknown {}, failed {}, lost {}, unexpected {}",
                b.acknowledged, b.unknown, b.failed, b.lost, b.unexpected
            )?;
            match b.failed_present {
                0 => writeln!(f)?,
                n => writeln!(f, " ({n} failed writes are there anyway)")?,
            }
        }
        for (name, b) in &self.buckets {
            for problem in b.problems.iter().take(20) {
                writeln!(f, "  {problem}")?;
            }
            if b.problems.len() > 20 {
                writeln!(f, "  {name}: {} more findings", b.problems.len() - 20)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(bucket: &str, key: &str) -> (String, Vec<u8>) {
        (bucket.to_string(), key.as_bytes().to_vec())
    }

    /// A history of every kind of write, some acknowledged, some unknown, some failed.
    fn history() -> History {
        let mut h = History::default();
        let cart = |item: &str| Operation::CartAdd { item: item.into(), quantity: 1 };
        h.record("carts", b"c", cart("a"), Outcome::Acknowledged);
        h.record("carts", b"c", cart("b"), Outcome::Acknowledged);
        h.record("carts", b"c", cart("u"), Outcome::Unknown);
        h.record("carts", b"c", cart("f"), Outcome::Failed);
        for outcome in [Outcome::Acknowledged, Outcome::Acknowledged, Outcome::Unknown] {
            h.record("counters", b"k", Operation::CounterIncrement(1), outcome);
        }
        h.record("sets", b"s", Operation::SetAdd(b"x".to_vec()), Outcome::Acknowledged);
        h.record("sets", b"s", Operation::SetAdd(b"y".to_vec()), Outcome::Unknown);
        h.record("siblings", b"v", Operation::BlindPut(b"p".to_vec()), Outcome::Acknowledged);
        h.record("siblings", b"v", Operation::BlindPut(b"q".to_vec()), Outcome::Acknowledged);
        // A blind put, then a put that saw it.
        h.record("siblings", b"w", Operation::BlindPut(b"r".to_vec()), Outcome::Acknowledged);
        let seen = Operation::ContextPut { value: b"s".to_vec(), observed: vec![b"r".to_vec()] };
        h.record("siblings", b"w", seen, Outcome::Acknowledged);
        // Two lww puts, one after the other.
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        h.record_at("lww", b"l", lww("a"), Outcome::Acknowledged, at(0), at(1));
        h.record_at("lww", b"l", lww("b"), Outcome::Acknowledged, at(2), at(3));
        h
    }

    fn lww(value: &str) -> Operation {
        Operation::LwwPut(value.as_bytes().to_vec())
    }

    /// A final state that holds every acknowledged write, one unknown write and not the other.
    fn correct() -> FinalState {
        let items = |names: &[&str]| names.iter().map(|n| (n.as_bytes().to_vec(), 1)).collect();
        let values = |names: &[&str]| names.iter().map(|n| n.as_bytes().to_vec()).collect();
        FinalState::from([
            (key("carts", "c"), Some(Value::Cart(items(&["a", "b", "u"])))),
            (key("counters", "k"), Some(Value::Counter(2))),
            (key("sets", "s"), Some(Value::Set(values(&["x"])))),
            (key("siblings", "v"), Some(Value::Siblings(values(&["p", "q"])))),
            (key("siblings", "w"), Some(Value::Siblings(values(&["s"])))),
            (key("lww", "l"), Some(Value::Siblings(values(&["b"])))),
        ])
    }

    /// Goal: a final state with every acknowledged write passes, whatever became of the
    /// unknown and failed ones. Method: the synthetic history against a state holding some
    /// unknown writes (and a failed one that was stored anyway).
    #[test]
    fn accepts_a_state_that_keeps_every_acknowledged_write() {
        let history = history();
        let report = history.check(&correct());
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.acknowledged(), 11);
        let carts = &report.buckets["carts"];
        assert_eq!((carts.acknowledged, carts.unknown, carts.failed), (2, 1, 1));

        let mut with_more = correct();
        with_more.insert(key("counters", "k"), Some(Value::Counter(3)));
        let items = [("a", 1), ("b", 1), ("f", 1)].map(|(i, q)| (i.as_bytes().to_vec(), q));
        with_more.insert(key("carts", "c"), Some(Value::Cart(items.to_vec())));
        let report = history.check(&with_more);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.buckets["carts"].failed_present, 1, "the failed add f is there");
    }

    /// Goal: each kind of loss is caught and counted in its bucket. Method: drop one
    /// acknowledged write at a time from the correct state.
    #[test]
    fn catches_a_lost_acknowledged_write_of_each_kind() {
        let history = history();
        let cases: [(&str, &str, Option<Value>); 7] = [
            ("carts", "c", Some(Value::Cart(vec![(b"b".to_vec(), 1)]))),
            ("counters", "k", Some(Value::Counter(1))),
            ("sets", "s", None),
            ("siblings", "v", Some(Value::Siblings(vec![b"q".to_vec()]))),
            ("carts", "c", Some(Value::Cart(vec![(b"a".to_vec(), 1), (b"b".to_vec(), 0)]))),
            // The put that saw r is gone, r is back: s was lost.
            ("siblings", "w", Some(Value::Siblings(vec![b"r".to_vec()]))),
            // The older lww put won over the newer one.
            ("lww", "l", Some(Value::Siblings(vec![b"a".to_vec()]))),
        ];
        for (bucket, k, value) in cases {
            let mut state = correct();
            state.insert(key(bucket, k), value.clone());
            let report = history.check(&state);
            assert_eq!(report.lost(), 1, "{bucket} {value:?}: {report}");
            assert_eq!(report.buckets[bucket].lost, 1, "{report}");
            assert_eq!(report.unexpected(), 0, "{report}");
        }
        // A key never read counts as not found.
        let mut state = correct();
        state.remove(&key("counters", "k"));
        assert_eq!(history.check(&state).buckets["counters"].lost, 2);
        state.remove(&key("lww", "l"));
        assert_eq!(history.check(&state).buckets["lww"].lost, 2);
    }

    /// Goal: a siblings value may disappear only when a write saw it, whatever that write's
    /// outcome; one nobody saw may not. Method: puts with and without contexts against
    /// final states that keep or drop each value.
    #[test]
    fn a_sibling_disappears_only_when_a_write_saw_it() {
        let put = |v: &str, saw: &[&str]| Operation::ContextPut {
            value: v.into(),
            observed: saw.iter().map(|s| s.as_bytes().to_vec()).collect(),
        };
        let mut h = History::default();
        h.record("siblings", b"k", Operation::BlindPut(b"a".to_vec()), Outcome::Acknowledged);
        h.record("siblings", b"k", Operation::BlindPut(b"b".to_vec()), Outcome::Acknowledged);
        // Saw a (and not b, written concurrently): may replace a only.
        h.record("siblings", b"k", put("c", &["a"]), Outcome::Acknowledged);
        // Saw c, outcome unknown: it may have been stored, so c may be gone too.
        h.record("siblings", b"k", put("d", &["c"]), Outcome::Unknown);
        let state = |values: &[&str]| {
            let values = values.iter().map(|v| v.as_bytes().to_vec()).collect();
            FinalState::from([(key("siblings", "k"), Some(Value::Siblings(values)))])
        };
        for kept in [&["b", "c"][..], &["b", "d"], &["a", "b", "c"]] {
            let report = h.check(&state(kept));
            assert!(report.is_valid(), "{kept:?}: {report}");
        }
        // b was seen by no one; c was seen by d, which may have been stored.
        for (kept, lost) in [(&["c", "d"][..], 1), (&["a", "d"], 1), (&["d"], 1), (&[], 1)] {
            let report = h.check(&state(kept));
            assert_eq!(report.lost(), lost, "{kept:?}: {report}");
        }
    }

    /// Goal: the lww mode reports an acknowledged put as lost exactly when the final value's
    /// put was invoked before it was acknowledged (concurrent or older), never when that put
    /// began after it; a value nobody put, or two values, is unexpected. Method: puts with
    /// chosen times, in sequence and overlapping, against each possible final value.
    #[test]
    fn lww_reports_a_put_dropped_for_a_concurrent_or_older_one() {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        let mut h = History::default();
        let mut put = |v: &str, outcome, from, to| {
            h.record_at("lww", b"k", lww(v), outcome, at(from), at(to));
        };
        put("a", Outcome::Acknowledged, 0, 10);
        put("b", Outcome::Acknowledged, 20, 30); // after a
        put("c", Outcome::Acknowledged, 40, 50); // after b; overlaps d
        put("d", Outcome::Acknowledged, 45, 60);
        put("f", Outcome::Failed, 65, 66);
        put("u", Outcome::Unknown, 70, 80); // after every acknowledged put
        let check = |values: &[&str]| {
            let values = values.iter().map(|v| v.as_bytes().to_vec()).collect();
            h.check(&FinalState::from([(key("lww", "k"), Some(Value::Siblings(values)))]))
        };
        // (final value, acknowledged puts lost): c and d overlap, so whichever of them is
        // final was invoked before the other was acknowledged.
        for (value, lost) in [("u", 0), ("f", 0), ("d", 1), ("c", 1), ("b", 2), ("a", 3)] {
            let report = check(&[value]);
            assert_eq!(report.lost(), lost, "final {value}: {report}");
            assert_eq!(report.unexpected(), 0, "final {value}: {report}");
        }
        let report = check(&["z"]);
        assert_eq!((report.lost(), report.unexpected()), (4, 1), "{report}");
        let report = check(&["c", "d"]);
        assert_eq!((report.lost(), report.unexpected()), (0, 1), "{report}");
        let report = h.check(&FinalState::new());
        assert_eq!((report.lost(), report.unexpected()), (4, 0), "{report}");
    }

    /// Goal: what no client attempted is caught too. Method: a counter above every attempt,
    /// an element nobody added, a cart item added twice its attempts, a value of the wrong
    /// type.
    #[test]
    fn catches_what_no_write_explains() {
        let history = history();
        let cases: [(&str, &str, Value); 4] = [
            ("counters", "k", Value::Counter(4)),
            ("sets", "s", Value::Set(vec![b"x".to_vec(), b"z".to_vec()])),
            ("carts", "c", Value::Cart(vec![(b"a".to_vec(), 2), (b"b".to_vec(), 1)])),
            ("siblings", "v", Value::Counter(2)),
        ];
        for (bucket, k, value) in cases {
            let mut state = correct();
            state.insert(key(bucket, k), Some(value.clone()));
            let report = history.check(&state);
            assert_eq!(report.buckets[bucket].unexpected, 1, "{bucket} {value:?}: {report}");
            assert!(!report.is_valid());
        }
    }

    /// Goal: outcomes are classified by the client's error. Method: one error of each group.
    #[test]
    fn classifies_client_results() {
        assert_eq!(Outcome::of::<()>(&Ok(())), Outcome::Acknowledged);
        let unknown = Error::QuorumNotMet("1 of 2".into());
        assert_eq!(Outcome::of::<()>(&Err(unknown)), Outcome::Unknown);
        assert_eq!(Outcome::of::<()>(&Err(Error::Timeout("t".into()))), Outcome::Unknown);
        assert_eq!(Outcome::of::<()>(&Err(Error::Transport("t".into()))), Outcome::Unknown);
        let refused = Error::UnknownBucket("nope".into());
        assert_eq!(Outcome::of::<()>(&Err(refused)), Outcome::Failed);
    }
}
