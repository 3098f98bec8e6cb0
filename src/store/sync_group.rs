//! # Sync groups: one blocking `sync` at a time per engine, shared by every waiting request
//!
//! A write with dw > 0 answers only after its replica's engine has synced it. The engines
//! group-commit already (many `sync` callers share one `fdatasync`), but each caller is a
//! thread that blocks; calling `sync` from a blocking-pool task per request made the node
//! hand thousands of requests a second to pool threads, and that hand-off, not the disk,
//! limited dw=1 throughput (docs/BENCHMARKS.md).
//!
//! ## The contract
//! - [`SyncGroups::sync`] returns once a `sync` of the engine that *started after the call*
//!   has returned, with that sync's outcome. So every write the engine took before the call
//!   is durable when it returns `Ok` (the engine's own `sync` contract).
//! - Per engine, at most one blocking `sync` runs at a time. Callers that arrive while one
//!   runs wait for the next, which starts as soon as the running one ends and serves all of
//!   them at once.
//! - Runs on the node's thread (`spawn_local`). It asks the engine with
//!   [`StorageEngine::sync_then`], which the memory-log engines answer from their flusher
//!   thread, so a round costs no thread of the node's; only an engine that hands the answer
//!   back (the `btree`) has its blocking `sync` run on tokio's pool.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use cartwheel_engines::StorageEngine;
use futures::channel::oneshot;

use crate::error::Error;

type Reply = oneshot::Sender<Result<(), Error>>;

#[derive(Default)]
struct Group {
    /// Callers for the next sync.
    waiting: Vec<Reply>,
    /// Whether a round task is running for this engine.
    running: bool,
}

/// The sync groups of a node, one per engine (keyed by the engine's address).
#[derive(Default)]
pub struct SyncGroups {
    groups: Rc<RefCell<HashMap<usize, Group>>>,
    /// Blocking syncs started, over all engines.
    syncs: Rc<std::cell::Cell<u64>>,
    /// Told of each sync and how long it took ([`crate::metrics`]).
    observer: Option<crate::metrics::SyncObserver>,
}

impl SyncGroups {
    /// Sync groups that tell `observer` of every sync they run.
    pub fn observed_by(observer: crate::metrics::SyncObserver) -> Self {
        Self { observer: Some(observer), ..Self::default() }
    }

    /// Wait until everything `engine` took before this call is durable (see the module doc).
    pub async fn sync(&self, engine: &Arc<dyn StorageEngine>) -> Result<(), Error> {
        let id = Arc::as_ptr(engine).cast::<()>() as usize;
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut groups = self.groups.borrow_mut();
            let group = groups.entry(id).or_default();
            group.waiting.push(reply);
            !std::mem::replace(&mut group.running, true)
        };
        if start {
            let (groups, syncs) = (Rc::clone(&self.groups), Rc::clone(&self.syncs));
            let observer = self.observer.clone();
            tokio::task::spawn_local(rounds(groups, syncs, observer, id, Arc::clone(engine)));
        }
        answer.await.map_err(|_| Error::Internal("the sync task ended without an answer".into()))?
    }

    /// Blocking syncs started so far, over all engines.
    pub fn syncs(&self) -> u64 {
        self.syncs.get()
    }
}

/// Sync `engine` for the callers waiting, round after round, until none are left.
async fn rounds(
    groups: Rc<RefCell<HashMap<usize, Group>>>,
    syncs: Rc<std::cell::Cell<u64>>,
    observer: Option<crate::metrics::SyncObserver>,
    id: usize,
    engine: Arc<dyn StorageEngine>,
) {
    loop {
        let batch = {
            let mut groups = groups.borrow_mut();
            let group = groups.get_mut(&id).expect("a running group stays in the map");
            if group.waiting.is_empty() {
                group.running = false;
                return;
            }
            std::mem::take(&mut group.waiting)
        };
        syncs.set(syncs.get() + 1);
        let engine = Arc::clone(&engine);
        let started = std::time::Instant::now();
        let outcome = sync_engine(engine).await;
        if let Some(observer) = &observer {
            observer.synced(started);
        }
        for reply in batch {
            let _ = reply.send(outcome.clone());
        }
    }
}

/// One sync of `engine`: answered by the engine itself where it can
/// ([`StorageEngine::sync_then`]), else a blocking `sync` on tokio's pool.
async fn sync_engine(engine: Arc<dyn StorageEngine>) -> Result<(), Error> {
    let (answer, answered) = oneshot::channel();
    let done: cartwheel_engines::SyncDone = Box::new(move |outcome| {
        let _ = answer.send(outcome);
    });
    if let Err(done) = engine.sync_then(done) {
        let blocking = tokio::task::spawn_blocking(move || done(engine.sync()));
        if let Err(e) = blocking.await {
            return Err(Error::Internal(format!("sync task failed: {e}")));
        }
    }
    match answered.await {
        Ok(outcome) => outcome.map_err(Error::from),
        Err(_) => Err(Error::Internal("the engine dropped a sync unanswered".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use cartwheel_engines::{EngineKind, EngineOptions};

    /// Many concurrent callers all get `Ok`, share one or two syncs, and their writes are in
    /// the files when the calls return (read back from a copy taken before any close): for
    /// the engines that answer a sync themselves (`log`, `buffer`) and for the one whose
    /// blocking `sync` runs on the pool (`btree`).
    #[test]
    fn concurrent_callers_share_syncs_and_their_writes_survive() {
        for kind in [EngineKind::Log, EngineKind::Buffer, EngineKind::Btree] {
            callers_share_syncs_and_their_writes_survive(kind);
        }
    }

    fn callers_share_syncs_and_their_writes_survive(kind: EngineKind) {
        let dir = tempfile::tempdir().unwrap();
        let open =
            |dir: &Path| cartwheel_engines::open(kind, dir, &EngineOptions::default()).unwrap();
        let engine = open(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let groups = Rc::new(SyncGroups::default());
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let mut tasks = Vec::new();
            for i in 0..200u32 {
                engine.put(&i.to_be_bytes(), b"durable").unwrap();
                let (groups, engine) = (Rc::clone(&groups), Arc::clone(&engine));
                tasks.push(tokio::task::spawn_local(async move { groups.sync(&engine).await }));
            }
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            let syncs = groups.syncs();
            assert!((1..=2).contains(&syncs), "{kind:?}: {syncs} syncs for 200 callers");
            let groups = groups.groups.borrow();
            assert!(groups.values().all(|g| !g.running && g.waiting.is_empty()));
        });
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() && entry.file_name() != "LOCK" {
                std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
            }
        }
        drop(engine);
        let engine = open(copy.path());
        for i in 0..200u32 {
            let value = engine.get(&i.to_be_bytes()).unwrap();
            assert_eq!(value.as_deref(), Some(&b"durable"[..]), "{kind:?}: key {i}");
        }
    }
}
