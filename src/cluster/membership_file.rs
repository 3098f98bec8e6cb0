//! # The membership file: the last view, kept across restarts
//!
//! A node's view of the cluster (members with their addresses, and the ring) lives in memory
//! and travels by gossip. Without a copy on disk, a restarted node would start alone, owning
//! every partition, until a seed or a peer reached it; a node restarted with no reachable
//! seed (the first node of a cluster usually has none) would serve requests on that ring of
//! its own. So the node keeps its view in `DATA_DIR/membership`, and a restart begins from it.
//!
//! ## The contract
//! - The file is the `View` message of the wire schema (the same bytes gossip sends),
//!   written to a temporary file, fsynced, renamed over the old one, and the directory
//!   fsynced: a crash leaves the old file or the new one, never a mix.
//! - It is written when the view's *shape* changed (the members' ids and addresses, the
//!   ring, or the revoked client tokens), checked at the start of every gossip round and at
//!   a clean stop, and at once when a token is revoked on this node
//!   (`Cluster::revoke_token`). Heartbeats change every round and are not a reason to
//!   write. A node killed within one gossip interval of a change restarts from the view
//!   before it, and gossip brings the rest. Writes are serialised (one at a time in the
//!   process), since two of them share the temporary file.
//! - At start the node merges the file's view into its own as if a peer had gossiped it
//!   ([`crate::cluster::membership::Membership::restore`]): its own entry there is ignored
//!   (its new incarnation wins), the others start as recently seen, unproven, and turn down
//!   by the usual timeouts if they do not answer, the saved ring is taken when it is newer
//!   than the fresh single-node ring (however far: the file is this node's own), and the
//!   revoked tokens are taken, so a revocation survives restarts.
//! - A missing file means a new node. A file that does not decode is reported by the caller
//!   and ignored: the node starts as new, and its data (in the engines) is untouched.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::cartwheel_capnp::view;
use crate::cluster::membership::View;
use crate::error::Error;
use crate::node::wire;
use crate::ring::Ownership;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "membership";

/// What a view must differ in to be written again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    members: Vec<(String, String)>,
    ring: Ownership,
    revoked_tokens: usize,
}

/// The shape of `view`. The revoked tokens are a grow-only set, so their count tells a new
/// one apart.
pub fn shape(view: &View) -> Shape {
    let mut members: Vec<_> =
        view.members.iter().map(|m| (m.id.clone(), m.address.clone())).collect();
    members.sort();
    Shape { members, ring: view.ring.clone(), revoked_tokens: view.revoked_tokens.len() }
}

/// Held while a file is written: writes share the temporary file.
static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The path of the file in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Write `view` to `path` atomically (see the module doc).
pub fn save(path: &Path, view: &View) -> io::Result<()> {
    let mut message = capnp::message::Builder::new_default();
    wire::set_view(message.init_root::<view::Builder<'_>>(), view);
    let bytes = capnp::serialize::write_message_to_words(&message);
    // Poisoned only by a panic mid-write, which left at most a temporary file behind.
    let _saving = SAVING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let temp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Read the view saved at `path`: `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<View>, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Internal(format!("reading {}: {e}", path.display()))),
    };
    let bad = |e: capnp::Error| Error::Internal(format!("{}: {e}", path.display()));
    let message = capnp::serialize::read_message_from_flat_slice(
        &mut bytes.as_slice(),
        capnp::message::ReaderOptions::new(),
    )
    .map_err(bad)?;
    let root = message.get_root::<view::Reader<'_>>().map_err(bad)?;
    wire::get_view(root).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::MemberInfo;

    fn view() -> View {
        let member = |id: &str, port: u16| MemberInfo {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            incarnation: 7,
            heartbeat: 3,
            leaving: false,
            config_digest: vec![1, 2, 3],
            holds: Default::default(),
            data_bytes: 0,
        };
        let mut ring = Ownership::single("a", 8);
        ring.owners = ["a", "b", "a", "b", "a", "b", "a", "b"].map(String::from).to_vec();
        ring.epoch = 5;
        let revoked_tokens = ["0123456789abcdef", "fedcba9876543210"].map(String::from).into();
        View { members: vec![member("a", 1), member("b", 2)], ring, revoked_tokens }
    }

    /// A saved view loads back equal; no file is `None`; garbage is an error, not a panic.
    #[test]
    fn save_load_missing_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        assert_eq!(load(&file).unwrap(), None);
        save(&file, &view()).unwrap();
        assert_eq!(load(&file).unwrap(), Some(view()));
        fs::write(&file, b"not a capnp message at all").unwrap();
        assert!(load(&file).is_err());
    }

    /// The revoked tokens survive a save and a load, and a node restored from the file
    /// refuses them (the restart path of `Cluster::in_environment`).
    #[test]
    fn revoked_tokens_survive_a_restart() {
        use crate::cluster::membership::{Membership, Timing};
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        let mut saved = view();
        saved.revoked_tokens.insert("00000000000000ff".into());
        save(&file, &saved).unwrap();
        let loaded = load(&file).unwrap().unwrap();
        assert_eq!(loaded.revoked_tokens, saved.revoked_tokens);
        let me = MemberInfo {
            id: "a".into(),
            address: "127.0.0.1:1".into(),
            incarnation: 8,
            heartbeat: 0,
            leaving: false,
            config_digest: vec![1, 2, 3],
            holds: Default::default(),
            data_bytes: 0,
        };
        let timing = Timing::for_interval(100);
        let mut restarted = Membership::new(me, 8, 3, timing, 0);
        restarted.restore(loaded, 0);
        for id in &saved.revoked_tokens {
            assert!(restarted.is_token_revoked(id), "{id}");
        }
        assert!(!restarted.is_token_revoked("1111111111111111"));
        assert_eq!(restarted.ring(), &saved.ring, "the saved ring is taken");
    }

    /// A file whose token ids are malformed, or too many, does not load (and so is not
    /// taken as the node's view): the same check as a gossiped view.
    #[test]
    fn malformed_tokens_do_not_load() {
        use crate::cluster::membership::REVOKED_TOKENS_MAX;
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        for bad in [vec!["0123456789ABCDEF".to_string()], vec!["abc".to_string()]] {
            let mut view = view();
            view.revoked_tokens = bad.into_iter().collect();
            save(&file, &view).unwrap();
            assert!(matches!(load(&file), Err(Error::BadRequest(_))));
        }
        let mut view = view();
        view.revoked_tokens =
            (0..=REVOKED_TOKENS_MAX as u64).map(|i| format!("{i:016x}")).collect();
        save(&file, &view).unwrap();
        assert!(matches!(load(&file), Err(Error::BadRequest(_))));
    }

    /// Heartbeats do not change the shape; an address, the ring or a new revoked token does.
    #[test]
    fn shape_ignores_heartbeats() {
        let mut later = view();
        later.members[0].heartbeat += 10;
        assert_eq!(shape(&later), shape(&view()));
        later.members[1].address = "127.0.0.1:9".into();
        assert_ne!(shape(&later), shape(&view()));
        let mut moved = view();
        moved.ring.epoch += 1;
        assert_ne!(shape(&moved), shape(&view()));
        let mut revoked = view();
        revoked.revoked_tokens.insert("aaaaaaaaaaaaaaaa".into());
        assert_ne!(shape(&revoked), shape(&view()));
    }
}
