//! Who is calling: cgroup v2 directories, their tags, and agent names.
//!
//! A connection's identity is the nearest tagged cgroup (found by the BPF programs); this module maps
//! that cgroup to an agent name and keeps the tags durable across restarts.

pub mod cgroupfs;
pub mod name;
pub mod subtree;
pub mod tags;

pub use name::AgentName;
pub use tags::{Tag, TagSource, TagStore};
