//! Unit tests of the causal machinery: version vectors, contexts and dot maps.

use super::*;
use crate::codec::Tag;

fn vv(entries: &[(&'static str, u64)]) -> VersionVector<'static> {
    let mut v = VersionVector::default();
    for (actor, counter) in entries {
        v.raise(actor.as_bytes(), *counter);
    }
    v
}

/// Join is the pointwise maximum and descends from both sides.
#[test]
fn version_vector_join_and_descends() {
    let a = vv(&[("a", 3), ("b", 1)]);
    let b = vv(&[("b", 4), ("c", 2)]);
    let j = a.join(&b);
    assert_eq!(j, vv(&[("a", 3), ("b", 4), ("c", 2)]));
    assert!(j.descends(&a) && j.descends(&b));
    assert!(!a.descends(&b) && !b.descends(&a));
    assert!(a.covers(b"a", 3) && !a.covers(b"a", 4) && !a.covers(b"z", 1));
}

/// A context round-trips, no context is `None`, garbage is BadContext.
#[test]
fn context_encoding() {
    let v = vv(&[("n1", 7), ("n2", 1)]);
    let bytes = encode_context(Tag::Orset, 1, &v);
    assert_eq!(decode_context(Tag::Orset, 1, &bytes).unwrap(), Some(v));
    assert_eq!(decode_context(Tag::Orset, 1, b"").unwrap(), None);
    let empty = encode_context(Tag::Orset, 1, &VersionVector::default());
    assert_eq!(decode_context(Tag::Orset, 1, &empty).unwrap(), Some(VersionVector::default()));
    for bad in [&bytes[..bytes.len() - 1], b"\x03\x01zz", &[Tag::Cart as u8, 1, 0, 0, 0, 0]] {
        assert!(matches!(decode_context(Tag::Orset, 1, bad), Err(ResolveError::BadContext(_))));
    }
}

/// A dot counter at u64::MAX is Overflow, never a wrap; a refused payload leaves the map
/// as it was.
#[test]
fn dots_never_wrap() {
    let full = vv(&[("n1", u64::MAX)]);
    assert!(matches!(full.next_counter(b"n1"), Err(ResolveError::Overflow(_))));
    assert_eq!(full.next_counter(b"n2"), Ok(1));
    let mut map: DotMap<'_, ()> = DotMap::default();
    map.write(b"x", b"n1", |_| Ok(())).unwrap();
    let before = map.clone();
    let refused = map.write(b"x", b"n2", |_| Err(ResolveError::Overflow("no".into())));
    assert!(refused.is_err());
    assert_eq!(map, before);
}

/// A remove whose context is ahead of the clock waits for the clock, then applies, and
/// leaves other keys' unseen dots alone.
#[test]
fn deferred_remove_applies_once_covered() {
    let mut a: DotMap<'_, ()> = DotMap::default();
    a.write(b"x", b"n1", |_| Ok(())).unwrap();
    let mut b = a.clone();
    b.write(b"x", b"n1", |_| Ok(())).unwrap(); // n1:2 for x
    b.write(b"y", b"n1", |_| Ok(())).unwrap(); // n1:3 for y
                                               // A client read b and removes x through a, which has not seen b's writes.
    let ctx = b.clock().clone();
    a.remove(b"x", Some(&ctx)).unwrap();
    assert_eq!(a.deferred_count(), 1);
    let joined = a.join(&b);
    assert_eq!(joined.deferred_count(), 0);
    let keys: Vec<&[u8]> = joined.entries().iter().map(|e| e.key).collect();
    assert_eq!(keys, vec![b"y".as_slice()], "x removed, y kept");
}
