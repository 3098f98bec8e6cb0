//! # Quorum bookkeeping for the coordinator
//!
//! Pure state machines (STYLE 9): the coordinator feeds them replica answers as they arrive
//! and asks whether the request has succeeded, failed, or must wait. No I/O, no time: the
//! shell in [`super::coordinator`] sends the RPCs, applies the timeout, and turns the
//! outcome into the client's answer.
//!
//! - [`WriteQuorum`]: succeeded once W replicas stored the write and DW of them synced it;
//!   failed as soon as the replicas that have not answered can no longer make up W or DW.
//! - [`ReadQuorum`]: succeeded once R replicas answered (a "not found" is an answer); then
//!   [`ReadQuorum::merged`] is the merge of every state received, and
//!   [`ReadQuorum::stale`] names the replicas whose answer differs from it: read repair
//!   sends them the merged state.

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided: wait for more answers.
    Pending,
    /// The quorum was met.
    Succeeded,
    /// The quorum can no longer be met.
    Failed,
}

/// Write acknowledgements against W and DW.
#[derive(Clone, Debug)]
pub struct WriteQuorum {
    targets: usize,
    w: usize,
    dw: usize,
    stored: usize,
    durable: usize,
    failed: usize,
}

impl WriteQuorum {
    /// A write sent to `targets` replicas that needs `w` stores, `dw` of them durable.
    pub fn new(targets: usize, w: usize, dw: usize) -> Self {
        assert!(dw <= w, "dw {dw} over w {w}");
        Self { targets, w, dw, stored: 0, durable: 0, failed: 0 }
    }

    /// A replica stored the write (and synced it, if `durable`).
    pub fn stored(&mut self, durable: bool) -> Outcome {
        self.stored += 1;
        self.durable += usize::from(durable);
        self.outcome()
    }

    /// A replica failed or refused.
    pub fn failed(&mut self) -> Outcome {
        self.failed += 1;
        self.outcome()
    }

    /// Where the write stands.
    pub fn outcome(&self) -> Outcome {
        if self.stored >= self.w && self.durable >= self.dw {
            return Outcome::Succeeded;
        }
        let waiting = self.targets.saturating_sub(self.stored + self.failed);
        if self.stored + waiting < self.w || self.durable + waiting < self.dw {
            return Outcome::Failed;
        }
        Outcome::Pending
    }

    /// Replicas that stored it so far.
    pub fn stored_count(&self) -> usize {
        self.stored
    }
}

/// Read answers against R.
#[derive(Clone, Debug)]
pub struct ReadQuorum<Node> {
    targets: usize,
    r: usize,
    answers: Vec<(Node, Option<Vec<u8>>)>,
    failed: usize,
}

impl<Node: Clone + PartialEq> ReadQuorum<Node> {
    /// A read sent to `targets` replicas that needs `r` answers.
    pub fn new(targets: usize, r: usize) -> Self {
        Self { targets, r, answers: Vec::new(), failed: 0 }
    }

    /// A replica answered with its state (`None`: it has none).
    pub fn answered(&mut self, node: Node, state: Option<Vec<u8>>) -> Outcome {
        self.answers.push((node, state));
        self.outcome()
    }

    /// A replica failed.
    pub fn failed(&mut self) -> Outcome {
        self.failed += 1;
        self.outcome()
    }

    /// Where the read stands.
    pub fn outcome(&self) -> Outcome {
        if self.answers.len() >= self.r {
            return Outcome::Succeeded;
        }
        let waiting = self.targets.saturating_sub(self.answers.len() + self.failed);
        if self.answers.len() + waiting < self.r {
            Outcome::Failed
        } else {
            Outcome::Pending
        }
    }

    /// Whether every target has answered or failed.
    pub fn complete(&self) -> bool {
        self.answers.len() + self.failed >= self.targets
    }

    /// The merge of every state received, or `None` if no replica had one. A state
    /// byte-equal to what is merged so far is not merged again: merge is idempotent, and
    /// replicas in step answer the same bytes, so a read of a large state (a 1 000-item cart)
    /// does not decode, join and encode it once more to learn nothing.
    pub fn merged<E>(
        &self,
        merge: impl Fn(&[u8], &[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let mut merged: Option<Vec<u8>> = None;
        for state in self.answers.iter().filter_map(|(_, s)| s.as_ref()) {
            merged = Some(match merged {
                None => state.clone(),
                Some(acc) if acc == *state => acc,
                Some(acc) => merge(&acc, state)?,
            });
        }
        Ok(merged)
    }

    /// Replicas whose answer differs from `merged` (including those that had nothing).
    pub fn stale(&self, merged: &[u8]) -> Vec<Node> {
        self.answers
            .iter()
            .filter(|(_, state)| state.as_deref() != Some(merged))
            .map(|(node, _)| node.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// W stores succeed; failures that leave W unreachable fail at once.
    #[test]
    fn write_quorum() {
        let mut q = WriteQuorum::new(3, 2, 0);
        assert_eq!(q.stored(false), Outcome::Pending);
        assert_eq!(q.stored(false), Outcome::Succeeded);

        let mut q = WriteQuorum::new(3, 2, 0);
        assert_eq!(q.failed(), Outcome::Pending);
        assert_eq!(q.failed(), Outcome::Failed, "one left cannot make two");

        let mut q = WriteQuorum::new(3, 3, 0);
        assert_eq!(q.stored(false), Outcome::Pending);
        assert_eq!(q.failed(), Outcome::Failed, "W = N fails on the first failure");
    }

    /// DW counts only durable stores.
    #[test]
    fn durable_write_quorum() {
        let mut q = WriteQuorum::new(3, 2, 1);
        assert_eq!(q.stored(false), Outcome::Pending);
        assert_eq!(q.stored(false), Outcome::Pending, "W met but DW not");
        assert_eq!(q.stored(true), Outcome::Succeeded);

        let mut q = WriteQuorum::new(2, 1, 1);
        assert_eq!(q.stored(false), Outcome::Pending);
        assert_eq!(q.failed(), Outcome::Failed, "no replica left to sync");
    }

    /// R answers succeed; the merge and the stale replicas come out of them.
    #[test]
    fn read_quorum_and_repair() {
        let mut q = ReadQuorum::new(3, 2);
        assert_eq!(q.answered("a", Some(vec![1])), Outcome::Pending);
        assert_eq!(q.answered("b", None), Outcome::Succeeded);
        q.answered("c", Some(vec![3]));
        assert!(q.complete());
        let max = |a: &[u8], b: &[u8]| Ok::<_, ()>(a.max(b).to_vec());
        let merged = q.merged(max).unwrap().unwrap();
        assert_eq!(merged, vec![3]);
        assert_eq!(q.stale(&merged), vec!["a", "b"]);
    }

    /// Replicas that answered the same bytes are merged without calling `merge`; a different
    /// answer is merged in.
    #[test]
    fn equal_answers_are_not_merged_again() {
        let mut q = ReadQuorum::new(3, 3);
        q.answered("a", Some(vec![2]));
        q.answered("b", Some(vec![2]));
        let calls = std::cell::Cell::new(0);
        let max = |a: &[u8], b: &[u8]| {
            calls.set(calls.get() + 1);
            Ok::<_, ()>(a.max(b).to_vec())
        };
        assert_eq!(q.merged(max).unwrap(), Some(vec![2]));
        assert_eq!(calls.get(), 0, "two equal answers need no merge");
        q.answered("c", Some(vec![5]));
        assert_eq!(q.merged(max).unwrap(), Some(vec![5]));
        assert_eq!(calls.get(), 1);
    }

    /// A read fails once too few replicas can answer; R = 1 succeeds on a not-found.
    #[test]
    fn read_quorum_failure() {
        let mut q: ReadQuorum<&str> = ReadQuorum::new(2, 2);
        assert_eq!(q.failed(), Outcome::Failed);
        let mut q = ReadQuorum::new(3, 1);
        assert_eq!(q.answered("a", None), Outcome::Succeeded);
        assert_eq!(q.merged(|a, _| Ok::<_, ()>(a.to_vec())).unwrap(), None);
    }
}
