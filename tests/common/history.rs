//! # A history checker for CRDT and sibling buckets
//!
//! A fault test records every write a client attempted, with what the client learnt of its
//! outcome, and at the end reads the converged state of every key it wrote. The checker then
//! says whether that final state can be explained by the history:
//!
//! - an **acknowledged** write (the node answered ok) must be in the final state;
//! - a write that **failed** with a definite error, or whose outcome is **unknown** (timeout,
//!   quorum not met, connection lost: some replicas may have it), may or may not be there;
//! - nothing may be there that no client attempted.
//!
//! Per kind of write that gives:
//!
//! | write                  | lost when                                  | unexpected when                        |
//! |------------------------|--------------------------------------------|----------------------------------------|
//! | cart add (item, q)     | the item's quantity < acknowledged adds' q | quantity > every attempted add's q     |
//! | counter increment (+a) | the value < sum of acknowledged a          | the value > sum of every attempted a   |
//! | set add (element)      | the element is missing                     | the set holds an element never added   |
//! | blind siblings put (v) | no sibling has the value v                 | a sibling's value was never put        |
//!
//! The checker knows nothing of removes, decrements or puts with a context: the workloads that
//! use it only add, so "acknowledged means present" is the whole specification, and it holds
//! whatever order the writes were applied in. Values and items must be unique per key for a
//! missing one to be attributable to one write (the workloads name them after the client and a
//! sequence number); the checker does not require it, it only counts per value.
//!
//! Counts are per bucket. For carts, sets and siblings `lost` counts values (items, elements,
//! sibling values) that are missing or short; for counters it counts increments (the shortfall
//! of the final value below the acknowledged sum).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

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
    /// Record one attempted write.
    pub fn record(&mut self, bucket: &str, key: &[u8], operation: Operation, outcome: Outcome) {
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
}

impl Bounds {
    fn add(&mut self, amount: i64, outcome: Outcome) {
        self.attempted += amount;
        if outcome == Outcome::Acknowledged {
            self.acknowledged += amount;
        }
    }
}

/// Check one key: its records (all of one kind, the bucket's) against its final value.
fn check_key(name: &str, records: &[&Record], value: Option<Value>, report: &mut BucketReport) {
    let mut counter = Bounds::default();
    let mut members: BTreeMap<Vec<u8>, Bounds> = BTreeMap::new();
    for record in records {
        match &record.operation {
            Operation::CounterIncrement(amount) => counter.add(*amount, record.outcome),
            Operation::CartAdd { item, quantity } => {
                members.entry(item.clone()).or_default().add(*quantity, record.outcome)
            }
            Operation::SetAdd(member) | Operation::BlindPut(member) => {
                members.entry(member.clone()).or_default().add(1, record.outcome)
            }
        }
    }
    // What the final value holds, in the same shape: member -> amount.
    let found: BTreeMap<Vec<u8>, i64> = match (&records[0].operation, value) {
        (Operation::CounterIncrement(_), value) => {
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
            return;
        }
        (Operation::CartAdd { .. }, None) => BTreeMap::new(),
        (Operation::CartAdd { .. }, Some(Value::Cart(items))) => items.into_iter().collect(),
        (Operation::SetAdd(_), None) | (Operation::BlindPut(_), None) => BTreeMap::new(),
        (Operation::SetAdd(_), Some(Value::Set(elements))) => count(elements),
        (Operation::BlindPut(_), Some(Value::Siblings(values))) => count(values),
        (_, Some(other)) => return report.wrong_type(name, &other),
    };
    for (member, bounds) in &members {
        let amount = found.get(member).copied().unwrap_or(0);
        if amount < bounds.acknowledged {
            report.lost += 1;
            report.problems.push(format!(
                "{name}: {:?} has {amount}, below its acknowledged {}",
                String::from_utf8_lossy(member),
                bounds.acknowledged
            ));
        }
    }
    for (member, amount) in &found {
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
            writeln!(
                f,
                "{name}: acknowledged {}, unknown {}, failed {}, lost {}, unexpected {}",
                b.acknowledged, b.unknown, b.failed, b.lost, b.unexpected
            )?;
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
        h
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
        assert_eq!(report.acknowledged(), 7);
        let carts = &report.buckets["carts"];
        assert_eq!((carts.acknowledged, carts.unknown, carts.failed), (2, 1, 1));

        let mut with_more = correct();
        with_more.insert(key("counters", "k"), Some(Value::Counter(3)));
        let items = [("a", 1), ("b", 1), ("f", 1)].map(|(i, q)| (i.as_bytes().to_vec(), q));
        with_more.insert(key("carts", "c"), Some(Value::Cart(items.to_vec())));
        assert!(history.check(&with_more).is_valid());
    }

    /// Goal: each kind of loss is caught and counted in its bucket. Method: drop one
    /// acknowledged write at a time from the correct state.
    #[test]
    fn catches_a_lost_acknowledged_write_of_each_kind() {
        let history = history();
        let cases: [(&str, &str, Option<Value>); 5] = [
            ("carts", "c", Some(Value::Cart(vec![(b"b".to_vec(), 1)]))),
            ("counters", "k", Some(Value::Counter(1))),
            ("sets", "s", None),
            ("siblings", "v", Some(Value::Siblings(vec![b"q".to_vec()]))),
            ("carts", "c", Some(Value::Cart(vec![(b"a".to_vec(), 1), (b"b".to_vec(), 0)]))),
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
