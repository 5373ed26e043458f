//! The programs live in `main.rs` (the BPF object); this empty library only lets the agent declare a
//! build-dependency on this crate so cargo rebuilds the agent when the programs change.
#![no_std]
