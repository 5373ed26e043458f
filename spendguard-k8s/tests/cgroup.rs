//! The resolver against real directory trees laid out the way kubelet and the container runtimes
//! lay them out (see the sources cited in `src/cgroup.rs`), built in a temp dir.

use std::path::{Path, PathBuf};

use spendguard_k8s::{CgroupDriver, CgroupResolver, QosClass};

/// A UID with dashes, as the API server generates them.
const UID: &str = "5f0c2e1a-7b3d-4c8e-9a61-0d2f4b6c8e10";
const UID_: &str = "5f0c2e1a_7b3d_4c8e_9a61_0d2f4b6c8e10";
const CID: &str = "3b1f0e9d2c4a5b6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6";

fn mkdir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    p.to_path_buf()
}

/// (systemd pod dir, cgroupfs pod dir) relative to the root, spelled out by hand.
fn pod_paths(qos: QosClass) -> (String, String) {
    match qos {
        QosClass::Guaranteed => (
            format!("kubepods.slice/kubepods-pod{UID_}.slice"),
            format!("kubepods/pod{UID}"),
        ),
        QosClass::Burstable => (
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            format!("kubepods/burstable/pod{UID}"),
        ),
        QosClass::BestEffort => (
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"),
            format!("kubepods/besteffort/pod{UID}"),
        ),
    }
}

#[test]
fn finds_pods_and_containers_for_both_drivers_every_qos_and_runtime() {
    // (runtime scheme, systemd container dir name, cgroupfs container dir name)
    let runtimes = [
        (
            "containerd",
            format!("cri-containerd-{CID}.scope"),
            CID.to_string(),
        ),
        ("cri-o", format!("crio-{CID}.scope"), format!("crio-{CID}")),
        ("docker", format!("docker-{CID}.scope"), CID.to_string()),
    ];
    for driver in [CgroupDriver::Systemd, CgroupDriver::Cgroupfs] {
        for qos in QosClass::ALL {
            for (scheme, systemd_name, cgroupfs_name) in &runtimes {
                let tmp = tempfile::tempdir().expect("tempdir");
                let root = tmp.path();
                let (sd, cf) = pod_paths(qos);
                let (pod_rel, container_name) = match driver {
                    CgroupDriver::Systemd => (sd, systemd_name),
                    CgroupDriver::Cgroupfs => (cf, cgroupfs_name),
                };
                let pod = mkdir(&root.join(&pod_rel));
                let container = mkdir(&pod.join(container_name));
                // Noise a real node has next to it: another pod, the pause container, conmon.
                mkdir(&pod.join(format!("crio-conmon-{CID}.scope")));
                mkdir(&pod.parent().expect("parent").join("podother"));
                let what = format!("{driver:?} {qos:?} {scheme}");

                let r = CgroupResolver::new(root);
                assert_eq!(r.drivers(), vec![driver], "{what}");
                assert_eq!(r.pod_dirs(UID, qos), vec![pod.clone()], "{what}");
                assert_eq!(r.existing_pod_dirs(UID, qos), vec![pod.clone()], "{what}");
                let id = format!("{scheme}://{CID}");
                assert_eq!(r.container_dir(UID, qos, &id), Some(container), "{what}");
                // A container of another pod, or the wrong QoS class, is not found.
                assert_eq!(r.container_dir("other-uid", qos, &id), None, "{what}");
                let wrong_qos = QosClass::ALL.into_iter().find(|q| *q != qos).expect("qos");
                assert_eq!(
                    r.existing_pod_dirs(UID, wrong_qos),
                    Vec::<PathBuf>::new(),
                    "{what}"
                );
                assert_eq!(r.container_dir(UID, wrong_qos, &id), None, "{what}");
            }
        }
    }
}

#[test]
fn systemd_slices_use_underscores_for_the_uid_dashes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    mkdir(&tmp.path().join("kubepods.slice"));
    let r = CgroupResolver::new(tmp.path());
    let dirs = r.pod_dirs(UID, QosClass::Burstable);
    assert_eq!(dirs.len(), 1);
    let name = dirs[0].file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(name, format!("kubepods-burstable-pod{UID_}.slice"));
    assert!(
        !name.contains(UID),
        "dashed uid must not appear in a systemd slice name"
    );
}

#[test]
fn before_the_pod_exists_the_expected_paths_follow_the_detected_driver() {
    for qos in QosClass::ALL {
        let (sd, cf) = pod_paths(qos);

        // Neither kubepods yet (kubelet not started): both candidates, systemd first.
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let r = CgroupResolver::new(root);
        assert!(r.drivers().is_empty());
        assert_eq!(
            r.pod_dirs(UID, qos),
            vec![root.join(&sd), root.join(&cf)],
            "{qos:?}"
        );
        assert!(r.existing_pod_dirs(UID, qos).is_empty());
        assert_eq!(
            r.container_dir(UID, qos, &format!("containerd://{CID}")),
            None
        );

        // systemd node: only the systemd path.
        mkdir(&root.join("kubepods.slice"));
        assert_eq!(r.pod_dirs(UID, qos), vec![root.join(&sd)], "{qos:?}");

        // cgroupfs node: only the cgroupfs path.
        let tmp2 = tempfile::tempdir().expect("tempdir");
        mkdir(&tmp2.path().join("kubepods"));
        let r2 = CgroupResolver::new(tmp2.path());
        assert_eq!(r2.drivers(), vec![CgroupDriver::Cgroupfs]);
        assert_eq!(
            r2.pod_dirs(UID, qos),
            vec![tmp2.path().join(&cf)],
            "{qos:?}"
        );
    }
}

#[test]
fn an_existing_pod_dir_wins_over_candidates_of_the_other_driver() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // Both roots exist (a node whose driver was switched), the pod only under cgroupfs.
    mkdir(&root.join("kubepods.slice"));
    let (_, cf) = pod_paths(QosClass::BestEffort);
    let pod = mkdir(&root.join(&cf));
    let r = CgroupResolver::new(root);
    assert_eq!(
        r.drivers(),
        vec![CgroupDriver::Systemd, CgroupDriver::Cgroupfs]
    );
    assert_eq!(r.pod_dirs(UID, QosClass::BestEffort), vec![pod]);
}

#[test]
fn a_custom_kubelet_cgroup_root_is_found_below_the_mount() {
    // kind runs kubelet with --cgroup-root=/kubelet.
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    mkdir(&root.join("system.slice/containerd.service"));
    let kp = mkdir(&root.join("kubelet.slice/kubelet-kubepods.slice"));
    let r = CgroupResolver::new(root);
    assert_eq!(r.drivers(), vec![CgroupDriver::Systemd]);
    let expected = kp.join(format!(
        "kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice"
    ));
    assert_eq!(r.pod_dirs(UID, QosClass::Burstable), vec![expected.clone()]);
    let c = mkdir(&expected.join(format!("cri-containerd-{CID}.scope")));
    assert_eq!(
        r.container_dir(UID, QosClass::Burstable, &format!("containerd://{CID}")),
        Some(c)
    );

    let tmp2 = tempfile::tempdir().expect("tempdir");
    let pod = mkdir(&tmp2.path().join(format!("kubelet/kubepods/pod{UID}")));
    let r2 = CgroupResolver::new(tmp2.path());
    assert_eq!(r2.drivers(), vec![CgroupDriver::Cgroupfs]);
    assert_eq!(r2.pod_dirs(UID, QosClass::Guaranteed), vec![pod]);
}

#[test]
fn on_a_hybrid_host_the_v1_layout_says_where_the_v2_pod_dir_will_appear() {
    // kubelet (cgroupfs driver, --cgroup-root=/sg-kube) made kubepods in the v1 hierarchies only;
    // the v2 tree gets the pod's directory when runc starts its first container.
    let tmp = tempfile::tempdir().expect("tempdir");
    let v2 = mkdir(&tmp.path().join("unified"));
    let cpu = mkdir(&tmp.path().join("cpu"));
    let memory = mkdir(&tmp.path().join("memory"));
    mkdir(&memory.join("sg-kube/kubepods/besteffort"));
    mkdir(&cpu.join("sg-kube/kubepods/besteffort"));
    let want = v2.join(format!("sg-kube/kubepods/besteffort/pod{UID}"));

    // Without the v1 hint: the default root's guesses, wrong for a custom --cgroup-root.
    let plain = CgroupResolver::new(&v2);
    assert!(!plain.pod_dirs(UID, QosClass::BestEffort).contains(&want));

    let r = CgroupResolver::new(&v2).with_v1_hierarchies(vec![
        tmp.path().join("absent"),
        cpu.clone(),
        memory,
    ]);
    assert_eq!(r.pod_dirs(UID, QosClass::BestEffort), vec![want.clone()]);
    assert_eq!(r.drivers(), vec![CgroupDriver::Cgroupfs]);
    mkdir(&want);
    assert_eq!(r.existing_pod_dirs(UID, QosClass::BestEffort), vec![want]);

    // A kubepods in the v2 tree itself always wins over the v1 hint (whose kubepods is under
    // sg-kube, not at the root).
    std::fs::remove_dir_all(v2.join("sg-kube")).expect("rm");
    mkdir(&v2.join("kubepods/burstable"));
    assert_eq!(
        r.pod_dirs(UID, QosClass::Burstable),
        vec![v2.join(format!("kubepods/burstable/pod{UID}"))]
    );
}
