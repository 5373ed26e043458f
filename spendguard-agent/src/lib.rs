//! SpendGuard's node agent: redirect (eBPF), identity (cgroups → agents), proxy, control socket.
//! The binaries in `src/bin` are thin: everything testable lives here.

pub mod accept;
pub mod activity;
pub mod config;
pub mod control;
pub mod heap;
pub mod identity;
pub mod injector;
pub mod k8s;
pub mod metering;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod proxy;
pub mod redirect;
pub mod report;
pub mod run;
pub mod statedir;
pub mod tls;
pub mod top;
