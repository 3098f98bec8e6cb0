//! Unit tests of the log engine's keydir.

use super::*;

/// The keydir finds, replaces and removes keys, and rebuilding the arena keeps every key.
#[test]
fn keydir_insert_remove_rebuild() {
    let mut keydir = Keydir::default();
    let at = |i: u32| Location { segment: i % 7, offset: i };
    for i in 0..10_000u32 {
        assert!(keydir.insert(&i.to_be_bytes(), at(i), i).is_none());
    }
    assert!(keydir.insert(&5u32.to_be_bytes(), at(99), 1).is_some());
    for i in (0..10_000u32).step_by(2) {
        assert!(keydir.remove(&i.to_be_bytes()).is_some());
    }
    keydir.rebuild_arena();
    assert_eq!(keydir.len(), 5_000);
    for i in 0..10_000u32 {
        let slot = keydir.get(&i.to_be_bytes()).copied();
        if i % 2 == 0 {
            assert!(slot.is_none());
        } else if i == 5 {
            assert_eq!(slot.unwrap().location(), at(99));
        } else {
            assert_eq!((slot.unwrap().location(), slot.unwrap().value_len), (at(i), i));
        }
    }
}
