//! # The node's errors, as a client sees them
//!
//! One enum for everything a request can end in, grouped by what the caller does next: fix the
//! request, retry later, or give up. The first fourteen variants are exactly the wire's `ErrorKind`
//! (schema/cartwheel.capnp), so a server error crosses the wire and comes out of the client
//! library as the same variant. The last two exist only on the client side: the node could
//! not be reached, or the connection failed mid-request.
//!
//! For writes, [`Error::outcome_unknown`] tells whether the write may have been stored anyway
//! (a timeout or a lost connection after sending): retrying such a write is safe for CRDT
//! updates that are idempotent per context, and for puts that carry the read context.

use crate::cartwheel_capnp::ErrorKind;

/// What a request can end in, other than success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Malformed request. Fix the request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No bucket of that name. Fix the request.
    #[error("unknown bucket {0}")]
    UnknownBucket(String),
    /// The operation does not fit the bucket's resolver. Fix the request.
    #[error("wrong operation: {0}")]
    WrongOperation(String),
    /// The key is over the node's limit. Fix the request.
    #[error("key too large: {0}")]
    KeyTooLarge(String),
    /// The value is over the node's limit. Fix the request.
    #[error("value too large: {0}")]
    ValueTooLarge(String),
    /// The key has too many siblings. Read, resolve, write back.
    #[error("too many siblings: {0}")]
    TooManySiblings(String),
    /// Too few replicas answered. A write's outcome is unknown. Retry later.
    #[error("quorum not met (outcome unknown): {0}")]
    QuorumNotMet(String),
    /// The request timed out. A write's outcome is unknown. Retry later.
    #[error("timed out (outcome unknown): {0}")]
    Timeout(String),
    /// Too many requests in flight; nothing was done. Back off and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The node failed (I/O error, corrupt state). Give up and report.
    #[error("internal error: {0}")]
    Internal(String),
    /// No valid credentials: a bad or revoked token, or a peer call from a non-member. Log in.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The credentials hold no grant for this operation. Ask for one.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A counter or a quantity would leave the 64-bit range; nothing was stored.
    #[error("overflow: {0}")]
    Overflow(String),
    /// The node's storage for the key failed (a full disk, an I/O error) and no other node
    /// could take the write; nothing was done. Retry later: the node recovers by itself once
    /// its disk has room, and another node may take it meanwhile.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node could not be reached (client side). Retry later or try another node.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The address tried.
        address: String,
        /// Why it failed.
        reason: String,
    },
    /// The connection failed during the request (client side). A write's outcome is unknown.
    #[error("connection failed (outcome unknown): {0}")]
    Transport(String),
}

impl Error {
    /// Whether the same request may succeed if retried later, unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::QuorumNotMet(_)
                | Self::Timeout(_)
                | Self::Overloaded(_)
                | Self::Unavailable(_)
                | Self::Connect { .. }
                | Self::Transport(_)
        )
    }

    /// Whether a write that failed with this error may have been stored anyway.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::QuorumNotMet(_) | Self::Timeout(_) | Self::Transport(_))
    }

    /// The wire kind; client-side errors have none and map to `internal`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::UnknownBucket(_) => ErrorKind::UnknownBucket,
            Self::WrongOperation(_) => ErrorKind::WrongOperation,
            Self::KeyTooLarge(_) => ErrorKind::KeyTooLarge,
            Self::ValueTooLarge(_) => ErrorKind::ValueTooLarge,
            Self::TooManySiblings(_) => ErrorKind::TooManySiblings,
            Self::QuorumNotMet(_) => ErrorKind::QuorumNotMet,
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::Overloaded(_) => ErrorKind::Overloaded,
            Self::Unauthorized(_) => ErrorKind::Unauthorized,
            Self::Forbidden(_) => ErrorKind::Forbidden,
            Self::Overflow(_) => ErrorKind::Overflow,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Internal(_) | Self::Connect { .. } | Self::Transport(_) => ErrorKind::Internal,
        }
    }

    /// The kind's name in reports, metrics and logs: snake case, as the wire schema's
    /// `ErrorKind` (client-side errors have names of their own).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::UnknownBucket(_) => "unknown_bucket",
            Self::WrongOperation(_) => "wrong_operation",
            Self::KeyTooLarge(_) => "key_too_large",
            Self::ValueTooLarge(_) => "value_too_large",
            Self::TooManySiblings(_) => "too_many_siblings",
            Self::QuorumNotMet(_) => "quorum_not_met",
            Self::Timeout(_) => "timeout",
            Self::Overloaded(_) => "overloaded",
            Self::Internal(_) => "internal",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Overflow(_) => "overflow",
            Self::Unavailable(_) => "unavailable",
            Self::Connect { .. } => "connect",
            Self::Transport(_) => "transport",
        }
    }

    /// The message without the kind's prefix, as sent on the wire.
    pub fn message(&self) -> String {
        match self {
            Self::BadRequest(m)
            | Self::WrongOperation(m)
            | Self::KeyTooLarge(m)
            | Self::ValueTooLarge(m)
            | Self::TooManySiblings(m)
            | Self::QuorumNotMet(m)
            | Self::Timeout(m)
            | Self::Overloaded(m)
            | Self::Internal(m)
            | Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::Overflow(m)
            | Self::Unavailable(m)
            | Self::Transport(m)
            | Self::UnknownBucket(m) => m.clone(),
            Self::Connect { .. } => self.to_string(),
        }
    }

    /// Rebuild an error from its wire kind and message.
    pub fn from_wire(kind: ErrorKind, message: String) -> Self {
        match kind {
            ErrorKind::BadRequest => Self::BadRequest(message),
            ErrorKind::UnknownBucket => Self::UnknownBucket(message),
            ErrorKind::WrongOperation => Self::WrongOperation(message),
            ErrorKind::KeyTooLarge => Self::KeyTooLarge(message),
            ErrorKind::ValueTooLarge => Self::ValueTooLarge(message),
            ErrorKind::TooManySiblings => Self::TooManySiblings(message),
            ErrorKind::QuorumNotMet => Self::QuorumNotMet(message),
            ErrorKind::Timeout => Self::Timeout(message),
            ErrorKind::Overloaded => Self::Overloaded(message),
            ErrorKind::Internal => Self::Internal(message),
            ErrorKind::Unauthorized => Self::Unauthorized(message),
            ErrorKind::Forbidden => Self::Forbidden(message),
            ErrorKind::Overflow => Self::Overflow(message),
            ErrorKind::Unavailable => Self::Unavailable(message),
        }
    }
}

impl From<cartwheel_resolvers::ResolveError> for Error {
    fn from(e: cartwheel_resolvers::ResolveError) -> Self {
        use cartwheel_resolvers::ResolveError as R;
        match e {
            R::WrongOperation { .. } => Self::WrongOperation(e.to_string()),
            // The kind is the prefix already: "bad request: ...", not "bad request: bad request".
            R::BadRequest(message) => Self::BadRequest(message),
            R::BadContext(_) => Self::BadRequest(e.to_string()),
            R::TooManySiblings { .. } => Self::TooManySiblings(e.to_string()),
            R::Overflow(message) => Self::Overflow(message),
            R::Corrupt(_) => Self::Internal(e.to_string()),
        }
    }
}

#[cfg(feature = "server")]
impl From<cartwheel_engines::EngineError> for Error {
    fn from(e: cartwheel_engines::EngineError) -> Self {
        use cartwheel_engines::EngineError as E;
        match e {
            E::TooLarge { what: "key", .. } => Self::KeyTooLarge(e.to_string()),
            E::TooLarge { .. } => Self::ValueTooLarge(e.to_string()),
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl From<capnp::Error> for Error {
    fn from(e: capnp::Error) -> Self {
        Self::Transport(e.to_string())
    }
}
