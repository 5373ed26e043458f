//! The one rule every accept loop follows: stop when shutdown begins; on an accept error (EMFILE and
//! friends) log and back off instead of spinning on a full descriptor table.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Pause after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next accepted connection, or `None` once `shutdown` is cancelled.
pub async fn next<T, F, Fut>(mut accept: F, shutdown: &CancellationToken, what: &str) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = accept() => match r {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}
