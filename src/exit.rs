//! # Exit codes of the `cartwheel` binary, in one place
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the node refused or failed the request; a bad configuration; a failed check (`bench`, `sim`) |
//! | 2 | bad command-line arguments (clap's own) |
//! | 3 | cannot connect, or the node could not start (a port in use) |
//! | 4 | not found |

/// The node refused or failed the request, or a run's check failed.
pub const FAILED: u8 = 1;
/// Bad command-line arguments (clap exits with it on its own).
pub const USAGE: u8 = 2;
/// Cannot connect, or the node could not start.
pub const UNREACHABLE: u8 = 3;
/// Not found.
pub const NOT_FOUND: u8 = 4;
