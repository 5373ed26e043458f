//! A cluster store that several test worlds share: a network namespace of its own holding one
//! `redis-server`, and a bridge that each world's node namespace joins by a veth pair. So the agents
//! of three worlds ("nodes") lease from one real Redis, and every packet stays inside namespaces the
//! test created (the node namespaces reach only 10.77.9.0/24 through this link).

use std::sync::atomic::{AtomicU8, Ordering};

use crate::redis_server::RedisServer;
use crate::{Netns, World};

/// The store's address on the bridge (inside the store namespace).
pub const STORE_IP: &str = "10.77.9.254";

// Fields drop in order: the server before its namespace.
pub struct StoreNet {
    pub redis: RedisServer,
    pub ns: Netns,
    next: AtomicU8,
}

impl StoreNet {
    /// A store namespace with a bridge at [`STORE_IP`] and a started `redis-server` on it.
    pub fn start() -> StoreNet {
        Self::start_with(RedisServer::start_in)
    }

    /// Like [`StoreNet::start`], with a store that speaks only TLS (`rediss://`, a private CA:
    /// `redis.tls_ca()`).
    pub fn start_tls() -> StoreNet {
        Self::start_with(RedisServer::start_in_tls)
    }

    fn start_with(server: fn(&Netns, &str) -> RedisServer) -> StoreNet {
        let ns = Netns::new(format!("{}s", crate::unique()));
        // A fixed address: a bridge without one takes the lowest address of its ports, so a node
        // attached later with a lower (random) veth address changed the store's MAC under the
        // nodes already attached, whose ARP entries then pointed nowhere for up to ~45 s — the
        // store "did not answer" for them (one test run in three).
        ns.ip(&[
            "link",
            "add",
            "sgbr",
            "address",
            "02:00:0a:4d:09:fe",
            "type",
            "bridge",
        ]);
        ns.ip(&["addr", "add", &format!("{STORE_IP}/24"), "dev", "sgbr"]);
        ns.ip(&["link", "set", "sgbr", "up"]);
        let redis = server(&ns, STORE_IP);
        StoreNet {
            redis,
            ns,
            next: AtomicU8::new(1),
        }
    }

    /// Joins `w`'s node namespace to the store's bridge (call before its agent starts).
    pub fn attach(&self, w: &World) {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        assert!(k < 250, "too many nodes on one store network");
        let (near, far) = (format!("{}r", w.id), format!("{}t", w.id));
        crate::run(
            "ip",
            &[
                "link",
                "add",
                &near,
                "netns",
                &w.node.name,
                "type",
                "veth",
                "peer",
                "name",
                &far,
                "netns",
                &self.ns.name,
            ],
        );
        w.node
            .ip(&["addr", "add", &format!("10.77.9.{k}/24"), "dev", &near]);
        w.node.ip(&["link", "set", &near, "up"]);
        self.ns.ip(&["link", "set", &far, "master", "sgbr"]);
        self.ns.ip(&["link", "set", &far, "up"]);
    }

    /// The URL the agents use.
    pub fn url(&self) -> String {
        self.redis.url()
    }
}
