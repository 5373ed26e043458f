//! Handing freed heap back to the kernel after a burst.
//!
//! glibc keeps what a burst freed in its arenas: after 10,000 idle keep-alive connections closed,
//! the agent's RSS stayed at 355 MB (bench, `idle` phase), and what a load peak left behind stayed
//! counted in the RSS of every later moment (with 1,000 open streams after a load test: 70 MB, of
//! which the streams needed 17). That is memory the node cannot give its pods. `malloc_trim(0)`
//! returns the free pages of every arena (`madvise`, not only the top of the heap). It walks the
//! whole heap, so it runs only when glibc's free bytes grew by [`TRIM_AFTER_FREED`] since their low
//! point after the last trim, on a blocking thread, never on the request path.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often glibc's free bytes are looked at (`mallinfo2`, a walk of the arenas' free bins).
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Freed bytes that make a trim worth its walk.
pub const TRIM_AFTER_FREED: u64 = 8 << 20;

/// Decides when to trim from glibc's free bytes alone.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    /// The fewest free bytes seen since the last trim (the heap reuses free chunks first, so
    /// growth above this low point is memory a burst freed). Before the first look it is zero:
    /// start-up is a burst too (the eBPF object, the kernel's BTF and the relocations aya
    /// parses to load the programs are freed once they are attached).
    low: Option<u64>,
}

impl TrimPolicy {
    /// `free` bytes in glibc's arenas now: whether to trim (then the low point starts again).
    /// A trim does not lower this count (the chunks stay free, only their pages go back).
    pub fn observe(&mut self, free: u64) -> bool {
        let low = self.low.map_or(0, |l| l.min(free));
        if free - low >= TRIM_AFTER_FREED {
            self.low = Some(free);
            return true;
        }
        self.low = Some(low);
        false
    }
}

/// Checks glibc's free bytes until `stop`, trimming the heap after each burst. Does nothing
/// where the allocator is not glibc's.
pub fn spawn_trimmer(stop: CancellationToken) {
    if free_bytes().is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut policy = TrimPolicy::default();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    // mallinfo2 takes every arena's lock while it walks the bins: not on a
                    // worker thread, whose tasks would wait for their allocations meanwhile.
                    let free = tokio::task::spawn_blocking(free_bytes).await.ok().flatten();
                    if free.is_some_and(|f| policy.observe(f)) {
                        let _ = tokio::task::spawn_blocking(trim).await;
                    }
                }
            }
        }
    });
}

/// Bytes glibc holds free in its arenas (`mallinfo2().fordblks`); `None` off glibc.
#[allow(unsafe_code)]
fn free_bytes() -> Option<u64> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads allocator statistics (taking the arenas' locks itself).
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks as u64)
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
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
    fn trims_once_eight_mib_were_freed_since_the_low_point() {
        const MIB: u64 = 1 << 20;
        let mut p = TrimPolicy::default();
        assert!(!p.observe(2 * MIB), "start-up freed 2 MiB: not yet");
        assert!(p.observe(8 * MIB), "what start-up freed counts from zero");
        assert!(!p.observe(3 * MIB), "reuse lowers the low point");
        assert!(!p.observe(10 * MIB), "7 MiB freed: not yet");
        assert!(p.observe(11 * MIB), "8 MiB freed since the low point");
        assert!(
            !p.observe(11 * MIB),
            "the trim left the chunks free: no second trim"
        );
        assert!(!p.observe(18 * MIB));
        assert!(p.observe(19 * MIB));
        assert!(
            !p.observe(3 * MIB),
            "a new burst starts from where the heap was reused"
        );
        assert!(p.observe(11 * MIB));
    }

    #[test]
    fn glibc_reports_what_was_freed() {
        let before = free_bytes().expect("glibc");
        let blocks: Vec<Vec<u8>> = (0..4_096).map(|i| vec![i as u8; 4096]).collect();
        // Above them in the heap, so the freed blocks cannot merge into its top (which glibc
        // returns by itself) and stay free chunks.
        let keep: Vec<u8> = vec![1; 4096];
        drop(blocks);
        let after = free_bytes().expect("glibc");
        assert!(
            after >= before + 8 * 1024 * 1024,
            "16 MiB freed: {before} free bytes before, {after} after"
        );
        drop(keep);
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
