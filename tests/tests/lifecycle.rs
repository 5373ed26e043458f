//! A node's whole life (issue 13): reboots, re-created cgroups, upgrades, lost or damaged state.
//! The agent must come back, and tagged traffic must never flow unmetered on the way.
//!
//! A "reboot" here is what a reboot leaves behind for the agent: bpffs empty (`uninstall` unpins
//! everything), every cgroup created anew (new ids under the same paths), the state dir kept.

use std::path::Path;
use std::time::Duration;

use spendguard_tests::metered::Metered;
use spendguard_tests::servers::EchoServer;
use spendguard_tests::{prev_release_bin, privileged, probe, Place, World};

const A443: &str = "10.77.3.1:443";

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).expect("stat cgroup").ino()
}

/// Went through the proxy to upstream A (the upstream saw the proxy, not the client).
fn proxied(v: &serde_json::Value) -> bool {
    let Some(r) = v["reply"].as_str() else {
        return false;
    };
    let Ok(r) = serde_json::from_str::<serde_json::Value>(r) else {
        return false;
    };
    r["server"] == "A" && r["peer"] != v["local"]
}

/// Reached upstream A directly: the one outcome a tagged cgroup must never see.
fn direct(v: &serde_json::Value) -> bool {
    v["reply"]
        .as_str()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .is_some_and(|r| r["peer"] == v["local"])
}

fn at<'a>(w: &'a World, cg: &'a Path) -> Place<'a> {
    Place {
        cgroup: Some(cg),
        netns: Some(&w.node),
        uid: None,
    }
}

/// Reconciles only every 10 minutes: whatever tags a re-created cgroup in these tests is the
/// kernel's mkdir hook, not the agent's polling.
fn slow_reconcile(w: &World) {
    w.set_agent_env("SPENDGUARD_TAG_RECONCILE_SECONDS", "600");
}

#[test]
fn simulated_reboot_recreated_cgroup_and_empty_bpffs_the_agent_comes_back() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, A443, "A");
    w.start_agent();
    let path = w.cgroup.path.join("svc");
    std::fs::create_dir(&path).expect("mkdir");
    w.tag(&path, "acme.svc");
    assert!(proxied(&probe(at(&w, &path), &["tcp", A443, "hello"])));
    let old_id = inode(&path);

    // The issue's reproduction: stop, uninstall (bpffs empty, as after a reboot), re-create the
    // cgroup (as systemd does when a unit restarts), start.
    assert!(w.stop_agent().success());
    let out = w.uninstall();
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_dir(&path).expect("rmdir");
    std::fs::create_dir(&path).expect("re-create");
    assert_ne!(inode(&path), old_id, "a re-created cgroup has a new id");
    w.start_agent();
    assert!(w.agent_log().contains("mode=Attached"), "{}", w.agent_log());
    let v = probe(at(&w, &path), &["tcp", A443, "hello"]);
    assert!(
        proxied(&v),
        "after the reboot the tag must be re-resolved by path: {v}"
    );
    let tags = w.cli(&["agents", "--json"]);
    let text = String::from_utf8_lossy(&tags.stdout);
    assert!(
        text.contains(&inode(&path).to_string()),
        "agents shows the new id: {text}"
    );
    std::fs::remove_dir(&path).expect("cleanup");
}

#[test]
fn a_cgroup_gone_at_start_waits_and_is_tagged_by_the_kernel_when_it_is_created() {
    if !privileged() {
        return;
    }
    let w = World::new();
    slow_reconcile(&w);
    let _a = EchoServer::start(&w.node, A443, "A");
    w.start_agent();
    let path = w.cgroup.path.join("unit.service");
    std::fs::create_dir(&path).expect("mkdir");
    w.tag(&path, "acme.unit");
    w.stop_agent();
    std::fs::remove_dir(&path).expect("rmdir: the unit stopped");

    // Starts with the tagged cgroup missing: not fatal, the tag waits.
    w.start_agent();
    assert!(
        w.agent_log().contains("does not exist (yet)"),
        "{}",
        w.agent_log()
    );
    // Created again while the agent reconciles only every 10 minutes: a process in it is
    // redirected at once, because the kernel tagged the cgroup inside mkdir().
    std::fs::create_dir(&path).expect("re-create");
    let v = probe(at(&w, &path), &["tcp", A443, "hello"]);
    assert!(
        proxied(&v),
        "the re-created cgroup's first connection must be redirected and served: {v}\n{}\n{}",
        w.agent_log(),
        bpf_dump(&w)
    );
    // And again, with the agent running (a systemd unit restart).
    std::fs::remove_dir(&path).expect("rmdir");
    std::fs::create_dir(&path).expect("re-create");
    let v = probe(at(&w, &path), &["tcp", A443, "hello"]);
    assert!(proxied(&v), "{v}");
    // A sibling that is not tagged is never touched.
    let plain = w.cgroup.child("plain.service");
    assert!(direct(&probe(at(&w, &plain.path), &["tcp", A443, "hello"])));
    std::fs::remove_dir(&path).expect("cleanup");
}

/// The pinned maps' contents, for failure messages.
fn bpf_dump(w: &World) -> String {
    let dir = w
        .pin_dir
        .join(format!("maps/v{}", spendguard_common_layout()));
    let mut out = String::new();
    for m in ["SG_PENDING", "SG_TAGGED", "SG_CONFIG"] {
        let o = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(dir.join(m))
            .output();
        if let Ok(o) = o {
            out.push_str(&format!("{m}:\n{}\n", String::from_utf8_lossy(&o.stdout)));
        }
    }
    out
}

/// Starts `n` probes per 20 ms from `cg` in a thread until `stop`; returns every result.
fn probe_loop(
    w: &World,
    cg: &Path,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        out.push(probe(at(w, cg), &["tcp", A443, "hello"]));
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

#[test]
fn upgrade_from_the_previous_release_adopts_its_links_and_replaces_its_maps_without_a_window() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, A443, "A");
    // Release 0.1: maps pinned directly in maps/, layout 1.
    w.set_agent_bin(Some(prev_release_bin("spendguard-agent")));
    w.start_agent();
    let tagged = w.cgroup.child("tagged");
    w.tag(&tagged.path, "acme.upgrade");
    assert!(proxied(&probe(
        at(&w, &tagged.path),
        &["tcp", A443, "hello"]
    )));
    let legacy = w.pin_dir.join("maps/SG_TAGGED");
    assert!(legacy.exists(), "the previous release pins maps/SG_TAGGED");
    let links_before = w.attached_programs();

    let stop = std::sync::atomic::AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        let h = s.spawn(|| probe_loop(&w, &tagged.path, &stop));
        std::thread::sleep(Duration::from_millis(200));
        assert!(w.stop_agent().success());
        w.set_agent_bin(None);
        w.start_agent();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().expect("probe thread")
    });
    let leaked: Vec<_> = results.iter().filter(|v| direct(v)).collect();
    assert!(
        leaked.is_empty(),
        "tagged connections reached the provider directly during the upgrade: {leaked:?}"
    );
    assert!(results.iter().any(proxied), "{results:?}");
    assert!(w.agent_log().contains("mode=Adopted"), "{}", w.agent_log());
    assert_eq!(
        w.attached_programs().len(),
        links_before.len(),
        "adopted, not attached a second time"
    );
    assert!(!legacy.exists(), "layout-1 maps unpinned after the swap");
    assert!(w
        .pin_dir
        .join(format!("maps/v{}/SG_TAGGED", spendguard_common_layout()))
        .exists());
    assert!(proxied(&probe(
        at(&w, &tagged.path),
        &["tcp", A443, "hello"]
    )));
}

/// The map layout this build pins (read from the tree, so the test needs no BPF crate).
fn spendguard_common_layout() -> u32 {
    let src = include_str!("../../spendguard-common/src/lib.rs");
    src.lines()
        .find_map(|l| l.strip_prefix("pub const MAP_LAYOUT: u32 = "))
        .and_then(|v| v.trim_end_matches(';').parse().ok())
        .expect("MAP_LAYOUT in spendguard-common")
}

#[test]
fn pinned_maps_that_do_not_match_the_layout_are_recreated_and_tags_survive() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let _a = EchoServer::start(&w.node, A443, "A");
    w.start_agent();
    let tagged = w.cgroup.child("tagged");
    w.tag(&tagged.path, "acme.layout");
    w.stop_agent();
    // A foreign map where this layout's SG_PENDING belongs (a damaged pin dir, another build).
    let pending = w
        .pin_dir
        .join(format!("maps/v{}/SG_PENDING", spendguard_common_layout()));
    std::fs::remove_file(&pending).expect("unpin");
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pending)
        .args([
            "type",
            "hash",
            "key",
            "8",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "SG_PENDING",
        ])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{out:?}");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        let h = s.spawn(|| probe_loop(&w, &tagged.path, &stop));
        std::thread::sleep(Duration::from_millis(100));
        w.start_agent();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().expect("probe thread")
    });
    assert!(results.iter().all(|v| !direct(v)), "{results:?}");
    assert!(
        w.agent_log().contains("do not match map layout"),
        "{}",
        w.agent_log()
    );
    assert!(proxied(&probe(
        at(&w, &tagged.path),
        &["tcp", A443, "hello"]
    )));
}

const SMALL: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50}"#;

fn chat(m: &Metered) -> (u16, String) {
    let (code, _, body) = m.curl(
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", SMALL],
    );
    (code, body)
}

/// While the agent refuses to start, tagged connections are refused (the pinned redirect stays),
/// never sent to the provider directly.
fn assert_fail_closed(m: &Metered) {
    let v = probe(m.at(), &["tcp", A443, "hello"]);
    assert_eq!(v["errno"], libc::ECONNREFUSED, "{v}");
    let before = m.fake.request_count();
    let (code, _) = chat(m);
    assert_eq!(code, 0, "curl cannot connect");
    assert_eq!(m.fake.request_count(), before, "the provider saw nothing");
}

#[test]
fn a_missing_ledger_with_tags_present_is_refused_and_recover_holds_every_request() {
    if !privileged() {
        return;
    }
    let m = Metered::new("acme.lost");
    let (code, body) = chat(&m);
    assert_eq!(code, 200, "{body}");
    assert!(m.w.stop_agent().success());
    let ledger = m.w.state_dir().join("ledger.redb");
    std::fs::remove_file(&ledger).expect("lose the ledger");

    let (st, log) = m.w.start_agent_expect_failure();
    assert!(!st.success());
    assert!(
        log.contains("ledger.redb is missing") && log.contains("spendguard-agent recover"),
        "{log}"
    );
    assert!(!ledger.exists(), "never a silent fresh ledger");
    assert_fail_closed(&m);

    let out = m.w.agent_cmd(&["recover"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("recovery hold"), "{text}");
    m.w.start_agent();
    let before = m.fake.request_count();
    let (code, body) = chat(&m);
    assert_eq!(code, 402, "{body}");
    assert!(
        body.contains("agent_paused") && body.contains("recover --confirm"),
        "{body}"
    );
    assert_eq!(m.fake.request_count(), before, "held: nothing forwarded");
    let out = m.w.cli(&["recover", "--confirm"]);
    assert!(out.status.success(), "{out:?}");
    let (code, body) = chat(&m);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn damaged_ledger_tags_and_ca_are_named_and_fail_closed() {
    if !privileged() {
        return;
    }
    let m = Metered::new("acme.damaged");
    assert_eq!(chat(&m).0, 200);
    let dir = m.w.state_dir();
    assert!(m.w.stop_agent().success());

    // Garbage ledger.
    let ledger = dir.join("ledger.redb");
    let good = std::fs::read(&ledger).expect("ledger");
    std::fs::write(
        &ledger,
        b"not a ledger at all, just some bytes of garbage .....",
    )
    .expect("w");
    let (_, log) = m.w.start_agent_expect_failure();
    assert!(
        log.contains("ledger.redb") && log.contains("damaged"),
        "{log}"
    );
    assert_fail_closed(&m);
    std::fs::write(&ledger, &good).expect("restore");

    // Truncated tags file.
    let tags = dir.join("tags.json");
    let good_tags = std::fs::read(&tags).expect("tags");
    std::fs::write(&tags, &good_tags[..good_tags.len() / 2]).expect("w");
    let (_, log) = m.w.start_agent_expect_failure();
    assert!(
        log.contains("tags.json") && log.contains("corrupt"),
        "{log}"
    );
    assert_fail_closed(&m);

    // CA key lost: never a new CA generated over the old certificate.
    std::fs::write(&tags, &good_tags).expect("restore");
    let key = dir.join("ca.key");
    let good_key = std::fs::read(&key).expect("key");
    std::fs::remove_file(&key).expect("rm key");
    let cert_before = std::fs::read(dir.join("ca.crt")).expect("cert");
    let (_, log) = m.w.start_agent_expect_failure();
    assert!(log.contains("ca.key") && log.contains("does not"), "{log}");
    assert_eq!(
        std::fs::read(dir.join("ca.crt")).expect("cert"),
        cert_before
    );
    assert_fail_closed(&m);
    let write_key = |bytes: &[u8]| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(&key, bytes).expect("write key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    write_key(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n");
    let (_, log) = m.w.start_agent_expect_failure();
    assert!(log.contains("damaged") && log.contains("ca.key"), "{log}");
    write_key(&good_key);

    // All restored: it starts and nothing was lost.
    m.w.start_agent();
    assert_eq!(chat(&m).0, 200);
    assert!(m.spent_total("acme.damaged") > 0);
}

#[test]
fn recover_rebuilds_lost_tags_from_the_pinned_map_as_a_paused_quarantine() {
    if !privileged() {
        return;
    }
    let m = Metered::new("acme.tags");
    assert_eq!(chat(&m).0, 200);
    assert!(m.w.stop_agent().success());
    let tags = m.w.state_dir().join("tags.json");
    std::fs::write(&tags, b"{\"version\":1,\"ta").expect("damage");
    let out = m.w.agent_cmd(&["recover"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 cgroups the kernel still redirects"),
        "{text}"
    );
    m.w.start_agent();
    // Still redirected, now as the paused quarantine agent: refused with 402, not forwarded.
    let before = m.fake.request_count();
    let (code, body) = chat(&m);
    assert_eq!(code, 402, "{body}");
    assert!(body.contains("spendguard.quarantine.recovered"), "{body}");
    assert_eq!(m.fake.request_count(), before);
    // The operator tags it again: served as itself.
    m.w.tag(&m.agent_cg.path, "acme.tags");
    assert_eq!(chat(&m).0, 200);
}

/// What the ledger charges for [`SMALL`] when the fake reports prompt=20, completion=10.
fn small_cost() -> u64 {
    spendguard_tests::metered::price("gpt-4o-mini")
        .cost(&spendguard_pricing::Usage {
            input_uncached: 20,
            output: 10,
            ..spendguard_pricing::Usage::default()
        })
        .0
}

#[test]
fn rolling_update_from_the_previous_release_under_load_loses_no_charge() {
    if !privileged() {
        return;
    }
    // Release 0.1 runs the node; a DaemonSet update stops it and starts this build on the same
    // state dir and pins, while the workload keeps calling.
    let m = Metered::with("acme.rolling", |w| {
        w.set_agent_bin(Some(prev_release_bin("spendguard-agent")));
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, other) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let (mut ok, mut other) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (code, _, body) = m.curl(
                    "/v1/chat/completions",
                    &[
                        "-H",
                        "content-type: application/json",
                        "-H",
                        "x-fake-usage: prompt=20,completion=10",
                        "-d",
                        SMALL,
                    ],
                );
                match code {
                    200 => ok += 1,
                    // Refused while no agent listens (curl could not connect), or a clean error.
                    c => other.push((c, body)),
                }
            }
            (ok, other)
        });
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            m.w.stop_agent().success(),
            "the old agent drains and exits 0"
        );
        m.w.set_agent_bin(None);
        m.w.start_agent();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().expect("load thread")
    });
    assert!(ok >= 4, "load ran through both agents: {ok} ok, {other:?}");
    assert!(
        other.iter().all(|(c, _)| *c == 0 || *c == 503),
        "only refusals during the handover: {other:?}"
    );
    assert!(
        m.w.agent_log().contains("mode=Adopted"),
        "{}",
        m.w.agent_log()
    );
    assert!(
        m.w.agent_log()
            .contains("ledger migrated from schema version 1"),
        "{}",
        m.w.agent_log()
    );
    // Every request the provider answered is charged exactly once, at its real cost, across
    // both agents; nothing is left for crash recovery.
    let spent = m.settled_spend("acme.rolling");
    let served = m.fake.request_count() as u64;
    assert_eq!(
        served, ok,
        "the provider saw exactly the requests that got answers"
    );
    assert_eq!(
        spent,
        ok * small_cost(),
        "{ok} requests at {} each",
        small_cost()
    );
    let audit = m.audit("acme.rolling");
    let allowed = audit
        .iter()
        .filter(|e| e["decision"] == "allowed" && e["model"] == "gpt-4o-mini")
        .count();
    assert!(allowed as u64 >= ok, "{audit:?}");
    assert!(
        audit.iter().all(|e| e["recovered"] != true),
        "a graceful handover leaves nothing to recover: {audit:?}"
    );
}

#[test]
fn wait_ready_orders_workloads_after_the_agent_and_never_believes_an_old_boot() {
    if !privileged() {
        return;
    }
    let w = World::new();
    let wait = |timeout: &str| w.cli(&["wait-ready", "--timeout", timeout]);
    assert!(
        !wait("0").status.success(),
        "not ready before the agent runs"
    );
    let bg = {
        let mut cmd = std::process::Command::new(spendguard_tests::bin("spendguard"));
        cmd.env("SPENDGUARD_SOCKET", w.socket())
            .args(["wait-ready", "--timeout", "60"]);
        cmd.spawn().expect("spawn wait-ready")
    };
    w.start_agent();
    let out = bg.wait_with_output().expect("wait-ready");
    assert!(out.status.success(), "{out:?}");
    let log = w.agent_log();
    let ms = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split("since_start_ms=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no since_start_ms on {what:?}:\n{log}"))
    };
    eprintln!(
        "agent start: redirect in force after {} ms, ready after {} ms",
        ms("redirect in force"),
        ms("spendguard-agent ready")
    );
    assert!(w.stop_agent().success());
    assert!(!wait("0").status.success(), "a stopped agent is not ready");
    // A file left from another boot (a crash, then a reboot without tmpfs) is not believed.
    let ready = w.socket().with_file_name("ready");
    std::fs::write(
        &ready,
        r#"{"boot_id":"00000000-0000-0000-0000-000000000000","pid":1,"since":"2026-01-01T00:00:00Z"}"#,
    )
    .expect("write");
    assert!(!wait("0").status.success());
}
