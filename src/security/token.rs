//! # Client tokens and their grants
//!
//! A token is a bearer credential that any node of the cluster can check on its own, without
//! a lookup: `cw1.<payload hex>.<tag hex>`, where the tag is HMAC-SHA256 of the payload under
//! the cluster's token key ([`super::ClusterKeys::token_key`]). The payload is
//! `<id>|<grants>`: a random 16-hex-digit id (what revocation names) and the grants in the
//! text form below.
//!
//! Grants, as written on the command line and in the payload: a comma-separated list of
//! `BUCKET=RIGHTS` (RIGHTS a combination of `r`, read: get; `w`, write: put, delete, update),
//! `*=RIGHTS` for every bucket, and `admin` for the admin grant (status, ring, creating and
//! revoking tokens). For example `carts=rw,default=r` or `*=rw,admin`.
//!
//! A token cannot be forged without the secret, nor changed without breaking its tag (the
//! tag is checked in constant time). Revocation is by id: the set of revoked ids is gossiped
//! between nodes and kept across restarts (src/cluster), and every request of a logged-in
//! connection checks it, so a revoked token stops working on sessions already open too.

use std::collections::BTreeMap;

use super::{hex_decode, hex_encode};
use crate::error::Error;

/// A right on a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// get.
    Read,
    /// put, delete, update.
    Write,
}

/// What a token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    /// The token's id (16 lowercase hex digits); empty for the grants of a member or of
    /// insecure mode, which no token carries.
    pub id: String,
    /// The admin grant.
    pub admin: bool,
    /// Rights per bucket; `*` for every bucket. (read, write).
    buckets: BTreeMap<String, (bool, bool)>,
}

/// The token prefix: the format's version.
const PREFIX: &str = "cw1";

/// Bytes of a token id.
pub const TOKEN_ID_BYTES: usize = 8;

impl Grants {
    /// Every grant: what a member's forwarded requests and insecure mode get.
    pub fn all() -> Self {
        let buckets = BTreeMap::from([("*".to_string(), (true, true))]);
        Self { id: String::new(), admin: true, buckets }
    }

    /// Parse the text form (see the module doc); the id is left empty.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |why: String| Error::BadRequest(format!("grants {text:?}: {why}"));
        let mut grants = Self { id: String::new(), admin: false, buckets: BTreeMap::new() };
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            if part == "admin" {
                grants.admin = true;
                continue;
            }
            let (bucket, rights) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not BUCKET=RIGHTS")))?;
            let bucket = bucket.trim();
            if bucket != "*" && crate::config::check_name(bucket).is_err() {
                return Err(bad(format!("{bucket:?} is not a bucket name")));
            }
            let (mut read, mut write) = (false, false);
            for right in rights.trim().chars() {
                match right {
                    'r' => read = true,
                    'w' => write = true,
                    other => return Err(bad(format!("{other:?} is not a right (r, w)"))),
                }
            }
            if !(read || write) {
                return Err(bad(format!("{part:?} grants nothing")));
            }
            let entry = grants.buckets.entry(bucket.to_string()).or_default();
            entry.0 |= read;
            entry.1 |= write;
        }
        if !grants.admin && grants.buckets.is_empty() {
            return Err(bad("grants nothing".to_string()));
        }
        Ok(grants)
    }

    /// The text form, as [`Grants::parse`] reads it.
    pub fn to_text(&self) -> String {
        let mut parts: Vec<String> = self
            .buckets
            .iter()
            .map(|(bucket, (read, write))| {
                let rights = [(read, "r"), (write, "w")]
                    .iter()
                    .filter(|(has, _)| **has)
                    .map(|(_, letter)| *letter)
                    .collect::<String>();
                format!("{bucket}={rights}")
            })
            .collect();
        if self.admin {
            parts.push("admin".to_string());
        }
        parts.join(",")
    }

    /// Whether these grants hold `right` on `bucket`.
    pub fn allows(&self, bucket: &str, right: Right) -> bool {
        let has = |(read, write): &(bool, bool)| match right {
            Right::Read => *read,
            Right::Write => *write,
        };
        self.buckets.get(bucket).is_some_and(has) || self.buckets.get("*").is_some_and(has)
    }

    /// `Ok` when these grants hold `right` on `bucket`, else `forbidden`.
    pub fn check(&self, bucket: &str, right: Right) -> Result<(), Error> {
        if self.allows(bucket, right) {
            return Ok(());
        }
        let what = match right {
            Right::Read => "read",
            Right::Write => "write",
        };
        Err(Error::Forbidden(format!("the token has no {what} grant on bucket {bucket:?}")))
    }

    /// `Ok` when these grants hold the admin grant, else `forbidden`.
    pub fn check_admin(&self, what: &str) -> Result<(), Error> {
        if self.admin {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("{what} needs the admin grant")))
        }
    }
}

/// Mint a token for `grants` under `key`, with a new random id. Returns the token and its id.
pub fn mint(key: &ring::hmac::Key, grants: &Grants) -> Result<(String, String), Error> {
    let mut id = [0u8; TOKEN_ID_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| Error::Internal("the system random source failed".into()))?;
    let id = hex_encode(&id);
    let payload = format!("{id}|{}", grants.to_text());
    let tag = ring::hmac::sign(key, payload.as_bytes());
    Ok((format!("{PREFIX}.{}.{}", hex_encode(payload.as_bytes()), hex_encode(tag.as_ref())), id))
}

/// Check `token` under `key` and return its grants (with its id); `unauthorized` when it is
/// malformed or its tag does not match. (Revocation is the caller's to check.)
pub fn verify(key: &ring::hmac::Key, token: &str) -> Result<Grants, Error> {
    let refused = || Error::Unauthorized("the token is not valid for this cluster".to_string());
    let mut parts = token.trim().split('.');
    let (Some(PREFIX), Some(payload), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused());
    };
    let payload = hex_decode(payload).ok_or_else(refused)?;
    let tag = hex_decode(tag).ok_or_else(refused)?;
    ring::hmac::verify(key, &payload, &tag).map_err(|_| refused())?;
    let payload = String::from_utf8(payload).map_err(|_| refused())?;
    let (id, grants) = payload.split_once('|').ok_or_else(refused)?;
    let mut grants = Grants::parse(grants).map_err(|_| refused())?;
    grants.id = id.to_string();
    Ok(grants)
}

/// Whether `id` has the form of a token id: 16 lowercase hex digits.
pub fn is_token_id(id: &str) -> bool {
    id.len() == 2 * TOKEN_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[byte; 32])
    }

    /// A minted token verifies to its grants and id; the text form round-trips.
    #[test]
    fn a_token_carries_its_grants() {
        let grants = Grants::parse("carts=rw, default=r").unwrap();
        let (token, id) = mint(&key(1), &grants).unwrap();
        let back = verify(&key(1), &token).unwrap();
        assert_eq!(back.id, id);
        assert!(is_token_id(&id));
        assert!(back.allows("carts", Right::Write));
        assert!(back.allows("default", Right::Read));
        assert!(!back.allows("default", Right::Write));
        assert!(!back.allows("sets", Right::Read));
        assert!(!back.admin);
        assert_eq!(Grants::parse(&back.to_text()).unwrap().to_text(), back.to_text());
    }

    /// Another cluster's key, a changed payload, a changed tag and garbage are all refused.
    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let (token, _) = mint(&key(1), &Grants::parse("default=r").unwrap()).unwrap();
        assert!(matches!(verify(&key(2), &token), Err(Error::Unauthorized(_))));
        let parts: Vec<&str> = token.split('.').collect();
        let payload = String::from_utf8(hex_decode(parts[1]).unwrap()).unwrap();
        let wider = hex_encode(format!("{}|*=rw,admin", &payload[..16]).as_bytes());
        let altered = format!("{}.{}.{}", parts[0], wider, parts[2]);
        assert!(matches!(verify(&key(1), &altered), Err(Error::Unauthorized(_))));
        let mut tag = parts[2].to_string();
        tag.replace_range(0..1, if tag.starts_with('0') { "1" } else { "0" });
        let retagged = format!("{}.{}.{}", parts[0], parts[1], tag);
        assert!(matches!(verify(&key(1), &retagged), Err(Error::Unauthorized(_))));
        for garbage in ["", "cw1", "cw1..", "x.y.z", "cw1.zz.zz", "cw1.00.00.00"] {
            assert!(matches!(verify(&key(1), garbage), Err(Error::Unauthorized(_))), "{garbage}");
        }
    }

    /// `*` covers every bucket; `admin` is separate from bucket rights; bad text is refused.
    #[test]
    fn grants_parse_and_check() {
        let all = Grants::parse("*=rw,admin").unwrap();
        assert!(all.allows("anything", Right::Write) && all.admin);
        let admin_only = Grants::parse("admin").unwrap();
        assert!(!admin_only.allows("default", Right::Read));
        assert!(matches!(admin_only.check("default", Right::Read), Err(Error::Forbidden(_))));
        assert!(admin_only.check_admin("status").is_ok());
        assert!(matches!(
            Grants::parse("default=r").unwrap().check_admin("status"),
            Err(Error::Forbidden(_))
        ));
        for bad in ["", "default", "default=x", "default=", "bad name=r", "admin,"] {
            if bad == "admin," {
                assert!(Grants::parse(bad).is_ok());
                continue;
            }
            assert!(matches!(Grants::parse(bad), Err(Error::BadRequest(_))), "{bad:?}");
        }
    }
}
