//! The foundation, for real: BPF programs on this kernel, real namespaces and cgroups.
//! Each test builds its own world (see `spendguard_tests`), so they run in parallel.

use spendguard_tests::servers::EchoServer;
use spendguard_tests::{
    privileged, probe, Place, World, NODE_VETH_IP, POD_VETH_IP, PROXY_PORT, UPSTREAM_A, UPSTREAM_B,
    UPSTREAM_V6,
};

fn reply(v: &serde_json::Value) -> serde_json::Value {
    let r = v["reply"]
        .as_str()
        .unwrap_or_else(|| panic!("no reply in {v}"));
    serde_json::from_str(r).unwrap_or_else(|e| {
        panic!("reply {r:?} is not the echo server's JSON ({e}); probe said {v}")
    })
}

/// Went through the proxy: the upstream saw a connection other than the client's own socket.
fn assert_proxied(v: &serde_json::Value, server: &str) {
    let r = reply(v);
    assert_eq!(r["server"], server, "reached the wrong upstream: {v}");
    assert_ne!(
        r["peer"], v["local"],
        "upstream saw the client's own socket: not proxied: {v}"
    );
    assert_eq!(r["data"], "hello", "payload altered: {v}");
}

/// Went directly: the upstream saw the client's own socket.
fn assert_direct(v: &serde_json::Value, server: &str) {
    let r = reply(v);
    assert_eq!(r["server"], server, "{v}");
    assert_eq!(
        r["peer"], v["local"],
        "connection was redirected but should not be: {v}"
    );
}

fn a443(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:443")
    } else {
        format!("{ip}:443")
    }
}

#[test]
fn tagged_node_process_is_redirected_and_original_destination_recovered() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, &a443(UPSTREAM_A), "A");
    let _b = EchoServer::start(&w.node, &a443(UPSTREAM_B), "B");
    w.start_agent();
    let tagged = w.cgroup.child("tagged");
    w.tag(&tagged.path, "acme.research");
    let at = Place {
        cgroup: Some(&tagged.path),
        netns: Some(&w.node),
        uid: None,
    };

    let va = probe(at, &["tcp", &a443(UPSTREAM_A), "hello"]);
    assert!(
        va["peer"]
            .as_str()
            .unwrap_or("")
            .ends_with(&format!(":{PROXY_PORT}")),
        "client was not sent to the proxy: {va}"
    );
    assert_proxied(&va, "A");
    // Two destinations through one proxy: each connection reaches its own original destination.
    let vb = probe(at, &["tcp", &a443(UPSTREAM_B), "hello"]);
    assert_proxied(&vb, "B");

    // IPv6 from the node namespace goes to the proxy's [::1] listener and on to the v6 upstream.
    let _v6 = EchoServer::start(&w.node, &a443(UPSTREAM_V6), "V6");
    let v6 = probe(at, &["tcp", &a443(UPSTREAM_V6), "hello"]);
    assert_eq!(v6["peer"], format!("[::1]:{PROXY_PORT}"), "{v6}");
    assert_proxied(&v6, "V6");

    // Other ports are never touched.
    let _p80 = EchoServer::start(&w.node, &format!("{UPSTREAM_A}:80"), "A80");
    assert_direct(
        &probe(at, &["tcp", &format!("{UPSTREAM_A}:80"), "hello"]),
        "A80",
    );
}

#[test]
fn tagged_pod_process_is_redirected_through_the_redirect_ip() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, &a443(UPSTREAM_A), "A");
    w.start_agent();
    let pod = w.cgroup.child("pod");
    w.tag(&pod.path, "acme.pod");
    let v = probe(
        Place {
            cgroup: Some(&pod.path),
            netns: Some(&w.pod),
            uid: None,
        },
        &["tcp", &a443(UPSTREAM_A), "hello"],
    );
    assert_eq!(
        v["peer"],
        format!("{NODE_VETH_IP}:{PROXY_PORT}"),
        "pod was not sent to SPENDGUARD_REDIRECT_IP: {v}"
    );
    assert!(
        v["local"].as_str().unwrap_or("").starts_with(POD_VETH_IP),
        "{v}"
    );
    assert_proxied(&v, "A");

    // A pod's own loopback stays the pod's: never redirected to the node.
    let _lo = EchoServer::start(&w.pod, "127.0.0.1:443", "POD-LO");
    assert_direct(
        &probe(
            Place {
                cgroup: Some(&pod.path),
                netns: Some(&w.pod),
                uid: None,
            },
            &["tcp", "127.0.0.1:443", "hello"],
        ),
        "POD-LO",
    );
}

#[test]
fn untagged_and_descendant_cgroups() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, &a443(UPSTREAM_A), "A");
    w.start_agent();
    let parent = w.cgroup.child("parent");
    let child = parent.child("child");
    let other = w.cgroup.child("other");
    w.tag(&parent.path, "acme");
    // Untagged sibling, in both namespaces: untouched.
    assert_direct(
        &probe(
            Place {
                cgroup: Some(&other.path),
                netns: Some(&w.node),
                uid: None,
            },
            &["tcp", &a443(UPSTREAM_A), "hello"],
        ),
        "A",
    );
    let pod_direct = probe(
        Place {
            cgroup: Some(&other.path),
            netns: Some(&w.pod),
            uid: None,
        },
        &["tcp", &a443(UPSTREAM_A), "hello"],
    );
    assert_direct(&pod_direct, "A");
    // Descendant of a tagged cgroup: redirected, and identified as the tag's agent.
    assert_proxied(
        &probe(
            Place {
                cgroup: Some(&child.path),
                netns: Some(&w.node),
                uid: None,
            },
            &["tcp", &a443(UPSTREAM_A), "hello"],
        ),
        "A",
    );
    // The nearest tag wins.
    w.tag(&child.path, "acme.child");
    assert_proxied(
        &probe(
            Place {
                cgroup: Some(&child.path),
                netns: Some(&w.node),
                uid: None,
            },
            &["tcp", &a443(UPSTREAM_A), "hello"],
        ),
        "A",
    );
    let agents = w.cli(&["agents", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&agents.stdout).expect("agents --json");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["agent"].as_str())
        .collect();
    assert_eq!(names, ["acme", "acme.child"]);
    let log = w.agent_log();
    assert!(
        log.contains("agent=acme.child"),
        "connection not attributed to the nearest tag:\n{log}"
    );
}

#[test]
fn udp_443_from_tagged_cgroups_is_refused() {
    if !privileged() {
        return;
    }
    let w = World::new();
    w.start_agent();
    let tagged = w.cgroup.child("quic");
    let untagged = w.cgroup.child("plain");
    w.tag(&tagged.path, "acme.quic");
    let at = Place {
        cgroup: Some(&tagged.path),
        netns: Some(&w.node),
        uid: None,
    };
    for mode in ["udp-connect", "udp-send"] {
        let v = probe(at, &[mode, &a443(UPSTREAM_A)]);
        assert_eq!(
            v["errno"],
            libc::EPERM,
            "{mode} to 443 from a tagged cgroup must fail with EPERM: {v}"
        );
        let v6 = probe(at, &[mode, &a443(UPSTREAM_V6)]);
        assert_eq!(v6["errno"], libc::EPERM, "{mode} v6: {v6}");
        let ok = probe(at, &[mode, &format!("{UPSTREAM_A}:8443")]);
        assert_eq!(ok["ok"], true, "other UDP ports are untouched: {ok}");
        let plain = probe(
            Place {
                cgroup: Some(&untagged.path),
                netns: Some(&w.node),
                uid: None,
            },
            &[mode, &a443(UPSTREAM_A)],
        );
        assert_eq!(plain["ok"], true, "untagged UDP 443 is untouched: {plain}");
    }
    // aya-log: the BPF program's own log line reaches the agent's tracing log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !w.agent_log().contains("refused UDP 443") {
        assert!(
            std::time::Instant::now() < deadline,
            "BPF log line missing from the agent log:\n{}",
            w.agent_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn connections_the_redirect_did_not_produce_are_refused() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, &a443(UPSTREAM_A), "A");
    w.start_agent();
    let plain = w.cgroup.child("plain");
    for (ns, addr) in [
        (&w.node, format!("127.0.0.1:{PROXY_PORT}")),
        (&w.pod, format!("{NODE_VETH_IP}:{PROXY_PORT}")),
    ] {
        let v = probe(
            Place {
                cgroup: Some(&plain.path),
                netns: Some(ns),
                uid: None,
            },
            &["tcp", &addr, "hello"],
        );
        assert_eq!(
            v["reply"].as_str().unwrap_or(""),
            "",
            "the proxy relayed a connection it did not redirect: {v}"
        );
    }
    let log = w.agent_log();
    assert!(
        log.contains("not produced by the SpendGuard redirect"),
        "{log}"
    );
}

#[test]
fn killed_agent_fails_closed_and_restart_adopts_pinned_programs() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, &a443(UPSTREAM_A), "A");
    w.start_agent();
    let first = w.attached_programs();
    assert_eq!(
        first.len(),
        5,
        "expected connect4/6, sendmsg4/6, sock_ops: {first:?}"
    );
    let tagged = w.cgroup.child("tagged");
    let plain = w.cgroup.child("plain");
    w.tag(&tagged.path, "acme.crash");
    let at = Place {
        cgroup: Some(&tagged.path),
        netns: Some(&w.node),
        uid: None,
    };
    let un = Place {
        cgroup: Some(&plain.path),
        netns: Some(&w.node),
        uid: None,
    };
    assert_proxied(&probe(at, &["tcp", &a443(UPSTREAM_A), "hello"]), "A");

    w.kill_agent();
    let refused = probe(at, &["tcp", &a443(UPSTREAM_A), "hello"]);
    assert_eq!(
        refused["errno"],
        libc::ECONNREFUSED,
        "tagged traffic must fail closed while the agent is down: {refused}"
    );
    assert_direct(&probe(un, &["tcp", &a443(UPSTREAM_A), "hello"]), "A");

    w.start_agent();
    assert!(
        w.agent_log().contains("mode=Adopted"),
        "restart did not adopt the pinned links:\n{}",
        w.agent_log()
    );
    let again = w.attached_programs();
    assert_eq!(
        again.len(),
        5,
        "a restart must not attach a second copy: {again:?}"
    );
    // Tags came back from the state dir.
    assert_proxied(&probe(at, &["tcp", &a443(UPSTREAM_A), "hello"]), "A");

    // A clean stop exits 0 and also leaves the redirect in force.
    let st = w.stop_agent();
    assert!(st.success(), "SIGTERM must exit 0: {st}");
    assert_eq!(
        probe(at, &["tcp", &a443(UPSTREAM_A), "hello"])["errno"],
        libc::ECONNREFUSED
    );
}

#[test]
fn uninstall_restores_direct_traffic() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, &a443(UPSTREAM_A), "A");
    w.start_agent();
    let tagged = w.cgroup.child("tagged");
    w.tag(&tagged.path, "acme.bye");
    let at = Place {
        cgroup: Some(&tagged.path),
        netns: Some(&w.node),
        uid: None,
    };
    assert_proxied(&probe(at, &["tcp", &a443(UPSTREAM_A), "hello"]), "A");
    w.kill_agent();
    let out = w.uninstall();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 links detached"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        w.attached_programs().is_empty(),
        "programs still attached after uninstall"
    );
    assert!(!w.pin_dir.exists(), "pin dir left behind");
    assert_direct(&probe(at, &["tcp", &a443(UPSTREAM_A), "hello"]), "A");
}

#[test]
fn control_socket_is_root_only() {
    if !privileged() {
        return;
    }
    let w = World::new();
    w.start_agent();
    // The CLI as an unprivileged user: refused, non-zero exit, one clear line.
    let out = w.cli_as(Some(65534), &["agents"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("spendguard: ") && err.trim().lines().count() == 1,
        "{err}"
    );

    // Even with the file mode opened up, the server checks SO_PEERCRED.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(w.state.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    std::fs::set_permissions(w.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod sock");
    let v = probe(
        Place {
            uid: Some(65534),
            ..Default::default()
        },
        &[
            "unix",
            w.socket().to_str().expect("utf8"),
            r#"{"op":"agents"}"#,
        ],
    );
    assert!(
        v["reply"]
            .as_str()
            .unwrap_or("")
            .contains("permission denied"),
        "non-root peer was served: {v}"
    );
    // And the root CLI now refuses the too-open socket rather than trusting it.
    let out = w.cli(&["agents"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("mode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad CLI input: clear errors, nothing changes.
    std::fs::set_permissions(w.socket(), std::fs::Permissions::from_mode(0o600))
        .expect("chmod sock");
    let bad = w.cli(&["tag", "--cgroup", "/tmp", "--agent", "acme"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("cgroup"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = w.cli(&[
        "tag",
        "--cgroup",
        w.cgroup.path.to_str().expect("utf8"),
        "--agent",
        "Bad Name",
    ]);
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).contains("is not a valid agent name")
    );
    let list = w.cli(&["agents", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

#[test]
fn agent_inside_a_tagged_cgroup_never_redirects_its_own_upstream_connections() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, &a443(UPSTREAM_A), "A");
    // The agent itself runs in a cgroup that is tagged: only SO_MARK keeps its upstream connects from
    // being sent back to itself.
    let agent_cg = w.cgroup.child("agent-home");
    *w.agent_cgroup.lock().expect("lock") = Some(agent_cg.path.clone());
    w.start_agent();
    w.tag(&agent_cg.path, "acme.self");
    let client = w.cgroup.child("client");
    w.tag(&client.path, "acme.client");
    let at = Place {
        cgroup: Some(&client.path),
        netns: Some(&w.node),
        uid: None,
    };
    let v = probe(at, &["tcp", &a443(UPSTREAM_A), "hello"]);
    assert_proxied(&v, "A");
    // IPv4-mapped IPv6 destination from a dual-stack socket: redirected too, to the v4 upstream.
    let mapped = probe(at, &["tcp", &format!("[::ffff:{UPSTREAM_A}]:443"), "hello"]);
    assert!(
        mapped["peer"]
            .as_str()
            .unwrap_or("")
            .contains(&format!(":{PROXY_PORT}")),
        "{mapped}"
    );
    let r = reply(&mapped);
    assert_eq!(r["server"], "A", "{mapped}");
    assert_eq!(r["data"], "hello");
    let log = w.agent_log();
    assert!(
        !log.contains("not produced by the SpendGuard redirect"),
        "the agent looped into itself:\n{log}"
    );
    drop(client);
    drop(agent_cg);
}
