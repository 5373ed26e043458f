//! The privileged control channel: a Unix socket only root can use (directory 0700, socket 0600, and
//! SO_PEERCRED checked by the server; the client checks the socket's owner and mode and the server's
//! credentials before it says anything). One JSON request line, one JSON response line.

pub mod client;
pub mod protocol;
pub mod server;
pub mod snapshot;

/// The largest request line accepted (a tag or limit request is a few hundred bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The largest response line accepted by the client (audit listings can be long).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
