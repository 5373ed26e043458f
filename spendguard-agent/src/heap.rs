//! Handing freed heap back to the kernel after a burst of connections.
//!
//! glibc keeps what a burst freed in its arenas: after 10,000 idle keep-alive connections closed,
//! the agent's RSS stayed at 355 MB (bench, `idle` phase), memory the node could not use for its
//! pods. `malloc_trim(0)` returns the free pages of every arena (`madvise`, not only the top of the
//! heap). It walks the whole heap, so it runs only when many connections have closed since the
//! last trim, on a blocking thread, never on the request path.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the open-connection count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Connections that must have closed since the busiest moment before a trim is worth its walk
/// (at ~25 KB each, about 25 MB of freed heap).
pub const TRIM_AFTER_CLOSED: i64 = 1_000;

/// Decides when to trim from the open-connection count alone.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    /// The most connections open since the last trim.
    peak: i64,
}

impl TrimPolicy {
    /// `open` connections now: whether to trim (then the peak starts again from `open`).
    pub fn observe(&mut self, open: i64) -> bool {
        self.peak = self.peak.max(open);
        if self.peak - open >= TRIM_AFTER_CLOSED {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Watches `metrics`' open connections until `stop`, trimming the heap after each burst.
pub fn spawn_trimmer(metrics: Arc<Metrics>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut policy = TrimPolicy::default();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if policy.observe(metrics.proxy.open_connections()) {
                        let _ = tokio::task::spawn_blocking(trim).await;
                    }
                }
            }
        }
    });
}

#[allow(unsafe_code)]
fn trim() {
    let before = rss_kb();
    // SAFETY: malloc_trim only returns free pages of glibc's arenas to the kernel; it takes the
    // arenas' locks itself and is safe to call from any thread at any time.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(
        rss_before_kb = before,
        rss_after_kb = rss_kb(),
        "heap trimmed after connections closed"
    );
}

/// This process's resident set (KiB), from `/proc/self/statm`; 0 if unreadable.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_thousand_connections_closed_since_the_peak() {
        let mut p = TrimPolicy::default();
        assert!(!p.observe(0));
        assert!(!p.observe(10_000));
        assert!(!p.observe(9_500), "500 closed: not yet");
        assert!(p.observe(8_999), "1,001 closed since the peak");
        assert!(
            !p.observe(8_999),
            "the peak starts again where the trim was"
        );
        assert!(!p.observe(8_500));
        assert!(p.observe(7_999));
        // A new burst raises the peak again.
        assert!(!p.observe(12_000));
        assert!(p.observe(0));
    }

    #[test]
    fn a_trim_returns_freed_pages_that_glibc_kept() {
        // 64 MiB in 4 KiB blocks, touched; every 16th block stays, so the freed ones are holes
        // below the top of the heap, which glibc's own trimming never returns.
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8; 4096]).collect();
        let keep: Vec<Vec<u8>> = blocks.iter_mut().step_by(16).map(std::mem::take).collect();
        drop(blocks);
        let before = rss_kb();
        trim();
        let after = rss_kb();
        assert!(
            before.saturating_sub(after) >= 32 * 1024,
            "RSS {before} KiB before the trim, {after} KiB after"
        );
        assert_eq!(
            keep.iter().map(|b| b[0] as u64).sum::<u64>(),
            (0..16_384u64).step_by(16).map(|i| i % 256).sum::<u64>()
        );
    }
}
