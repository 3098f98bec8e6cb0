//! # The canonical state encoding
//!
//! Every state starts with a two-byte header, then the resolver's fields:
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 1    | type tag ([`Tag`]): which resolver owns the state  |
//! | 1      | 1    | format version of that resolver's body             |
//! | 2      | ..   | body, defined by the resolver's module             |
//!
//! Bodies are built from fixed-width big-endian integers and length-prefixed byte strings
//! (`u32` length, then the bytes); collections are written in sorted order with no duplicates,
//! so equal states are equal bytes. [`Decoder`] checks every length against what is left
//! before reading and reports the offset of the first bad byte; it never panics on any input.

use crate::hlc::{Timestamp, TIMESTAMP_BYTES};
use crate::ResolveError;

/// Header length in bytes.
pub const HEADER_BYTES: usize = 2;

/// Largest actor id (node id) stored in a state, in bytes.
pub const ACTOR_BYTES_MAX: usize = 255;

/// The type tags. Never reuse a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// `siblings` states.
    Siblings = 1,
    /// `lww` states.
    Lww = 2,
    /// `orset` states.
    Orset = 3,
    /// `pncounter` states.
    Pncounter = 4,
    /// `cart` states.
    Cart = 5,
}

/// Builds a state: header first, then fields in order.
#[derive(Debug)]
pub struct Encoder {
    out: Vec<u8>,
}

impl Encoder {
    /// Start a state with `tag` and `version`.
    pub fn new(tag: Tag, version: u8) -> Self {
        Self { out: vec![tag as u8, version] }
    }

    /// Start a state with `tag` and `version`, with room for `capacity` bytes (for a caller
    /// that knows about how large the state will be: a large one then grows no buffer).
    pub fn with_capacity(tag: Tag, version: u8, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity.max(HEADER_BYTES));
        out.extend_from_slice(&[tag as u8, version]);
        Self { out }
    }

    /// Append one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// Append a big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Append a big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Append a big-endian i64.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Append a timestamp (12 bytes).
    pub fn timestamp(&mut self, t: Timestamp) -> &mut Self {
        self.out.extend_from_slice(&t.to_bytes());
        self
    }

    /// Append bytes as they are (their length must be known from an earlier field).
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.out.extend_from_slice(v);
        self
    }

    /// Append a byte string with a u32 length prefix.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Values are bounded far below 4 GiB by the engine limits; a longer one is a bug.
        let len = u32::try_from(v.len()).expect("byte string over 4 GiB in a state");
        self.u32(len);
        self.out.extend_from_slice(v);
        self
    }

    /// The finished state.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// Reads a state's fields in order, checking every bound.
#[derive(Debug)]
pub struct Decoder<'a> {
    input: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    /// Check the header for `tag` and return the decoder positioned at the body and the
    /// format version found.
    pub fn new(input: &'a [u8], tag: Tag) -> Result<(Self, u8), ResolveError> {
        if input.len() < HEADER_BYTES {
            return Err(ResolveError::Corrupt(format!(
                "state of {} bytes is shorter than its header",
                input.len()
            )));
        }
        if input[0] != tag as u8 {
            return Err(ResolveError::Corrupt(format!(
                "state has type tag {} where {:?} ({}) was expected",
                input[0], tag, tag as u8
            )));
        }
        Ok((Self { input, at: HEADER_BYTES }, input[1]))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ResolveError> {
        let left = self.input.len() - self.at;
        if n > left {
            return Err(ResolveError::Corrupt(format!(
                "{what} of {n} bytes at offset {} runs past the end ({left} bytes left)",
                self.at
            )));
        }
        let slice = &self.input[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    /// Read one byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, ResolveError> {
        Ok(self.take(1, what)?[0])
    }

    /// Read a big-endian u32.
    pub fn u32(&mut self, what: &str) -> Result<u32, ResolveError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_be_bytes(b))
    }

    /// Read a big-endian u64.
    pub fn u64(&mut self, what: &str) -> Result<u64, ResolveError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(b))
    }

    /// Read a big-endian i64.
    pub fn i64(&mut self, what: &str) -> Result<i64, ResolveError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(i64::from_be_bytes(b))
    }

    /// Read a timestamp.
    pub fn timestamp(&mut self, what: &str) -> Result<Timestamp, ResolveError> {
        let mut b = [0u8; TIMESTAMP_BYTES];
        b.copy_from_slice(self.take(TIMESTAMP_BYTES, what)?);
        Ok(Timestamp::from_bytes(b))
    }

    /// Where the next field starts, as an offset into the input.
    pub fn position(&self) -> usize {
        self.at
    }

    /// The input from `start` (an earlier [`Decoder::position`]) up to the next field.
    pub fn read_since(&self, start: usize) -> &'a [u8] {
        &self.input[start..self.at]
    }

    /// Read exactly `n` bytes (a length known from an earlier field).
    pub fn take_exact(&mut self, n: usize, what: &str) -> Result<&'a [u8], ResolveError> {
        self.take(n, what)
    }

    /// Read a u32-length-prefixed byte string.
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], ResolveError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    /// A collection count, checked against the bytes left so a corrupt count cannot make
    /// the caller reserve huge memory: every element takes at least `element_bytes_min`.
    pub fn count(&mut self, what: &str, element_bytes_min: usize) -> Result<usize, ResolveError> {
        let n = self.u32(what)? as usize;
        let left = self.input.len() - self.at;
        if n.saturating_mul(element_bytes_min.max(1)) > left {
            return Err(ResolveError::Corrupt(format!(
                "{what} count {n} at offset {} cannot fit in {left} bytes",
                self.at - 4
            )));
        }
        Ok(n)
    }

    /// Require that the whole input was read: trailing bytes make a state non-canonical.
    pub fn finish(self) -> Result<(), ResolveError> {
        if self.at != self.input.len() {
            return Err(ResolveError::Corrupt(format!(
                "{} trailing bytes after the state at offset {}",
                self.input.len() - self.at,
                self.at
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields written by the encoder read back in order, and the decoder insists on the end.
    #[test]
    fn round_trip() {
        let t = Timestamp { physical_ms: 99, logical: 3 };
        let state =
            Encoder::new(Tag::Lww, 1).u8(7).u32(8).i64(-9).timestamp(t).bytes(b"ab").finish();
        let (mut d, version) = Decoder::new(&state, Tag::Lww).unwrap();
        assert_eq!(version, 1);
        assert_eq!(d.u8("a").unwrap(), 7);
        assert_eq!(d.u32("b").unwrap(), 8);
        assert_eq!(d.i64("c").unwrap(), -9);
        assert_eq!(d.timestamp("d").unwrap(), t);
        assert_eq!(d.bytes("e").unwrap(), b"ab");
        d.finish().unwrap();
    }

    /// Wrong tags, short input, overlong lengths and trailing bytes are typed errors.
    #[test]
    fn rejects_bad_input() {
        assert!(Decoder::new(&[], Tag::Lww).is_err());
        assert!(Decoder::new(&[Tag::Cart as u8, 1], Tag::Lww).is_err());
        let (mut d, _) = Decoder::new(&[Tag::Lww as u8, 1, 0, 0, 0, 9, 1], Tag::Lww).unwrap();
        assert!(d.bytes("value").is_err());
        let (mut d, _) =
            Decoder::new(&[Tag::Lww as u8, 1, 0xff, 0xff, 0xff, 0xff], Tag::Lww).unwrap();
        assert!(d.count("items", 1).is_err());
        let (d, _) = Decoder::new(&[Tag::Lww as u8, 1, 0], Tag::Lww).unwrap();
        assert!(d.finish().is_err());
    }
}
