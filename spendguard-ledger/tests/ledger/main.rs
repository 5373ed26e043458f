#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure by design"
)]
//! In-process tests of the ledger: real redb files in temporary directories, an injected clock.

mod common;
mod concurrency;
mod hierarchy;
mod lifecycle;
mod migrate;
mod modes;
mod periods;
mod props;
mod zones;
