//! Stage one: an accepted connection becomes an [`Inbound`] only if our redirect produced it — we know
//! its original destination and the tagged cgroup that made it. Anything else is refused: the proxy is
//! never an open relay.

use std::net::SocketAddr;
use std::path::PathBuf;

use spendguard_common::OrigDst;
use tokio::net::TcpStream;

use crate::identity::{AgentName, TagStore};
use crate::redirect::{self, Redirect};

/// Where original destinations come from: the BPF map in production, a table in in-process tests.
pub trait OrigDstSource: Send + Sync {
    fn take(&self, peer: SocketAddr) -> Option<OrigDst>;
}

impl OrigDstSource for Redirect {
    fn take(&self, peer: SocketAddr) -> Option<OrigDst> {
        self.take_orig_dst(peer)
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent: AgentName,
    /// The tagged cgroup directory (the caller or its nearest tagged ancestor).
    pub tagged_cgroup: PathBuf,
    /// The caller's own cgroup id.
    pub cgroup_id: u64,
    /// `namespace/name` of the pod whose label tagged the cgroup (for the audit log).
    pub pod: Option<String>,
}

#[derive(Debug)]
pub struct Inbound {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub orig_dst: SocketAddr,
    pub identity: Identity,
    /// Client bytes already read by an earlier stage (explicit mode's CONNECT), replayed first.
    pub pending: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error(
        "not produced by the SpendGuard redirect (no original destination recorded for this peer)"
    )]
    NotRedirected,
    #[error("the tag of cgroup id {0} was removed before the connection was accepted")]
    TagGone(u64),
}

impl Inbound {
    pub fn identify(
        stream: TcpStream,
        peer: SocketAddr,
        redirects: &dyn OrigDstSource,
        tags: &TagStore,
    ) -> Result<Inbound, InboundError> {
        let orig = redirects.take(peer).ok_or(InboundError::NotRedirected)?;
        let tag = tags
            .by_id_or_reconcile(orig.tag_cgroup_id)
            .ok_or(InboundError::TagGone(orig.tag_cgroup_id))?;
        Ok(Inbound {
            stream,
            peer,
            orig_dst: redirect::orig_dst_addr(&orig),
            identity: Identity {
                pod: match &tag.source {
                    crate::identity::tags::TagSource::Pod {
                        namespace, name, ..
                    } => Some(format!("{namespace}/{name}")),
                    crate::identity::tags::TagSource::Manual => None,
                },
                agent: tag.agent,
                tagged_cgroup: tag.cgroup,
                cgroup_id: orig.cgroup_id,
            },
            pending: Vec::new(),
        })
    }
}
