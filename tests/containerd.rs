//! containerd, started by the test with its own config, root, state and
//! socket under a temporary folder (tests/containerd/lib.sh), running an
//! image the test makes from files (uvm's busybox root, imported with `ctr
//! image import`). Here, on the host: containerd's own runc shim with uvm
//! as its runc binary (`--runc-binary`, BinaryName), and the uvm shim's
//! refusals that come before any VM. The uvm shim booting a pod's microVM
//! is the boot session's `containerd` case (tests/boot.rs).

use std::path::PathBuf;
use std::process::Command;

const IMAGE: &str = "uvm.test/busybox:1";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `script` in bash with the helpers sourced, a containerd of its own
/// started on `$T/c` and the image imported; `$UVM`, `$SHIM`, `$T` are
/// set, the shim's folder is first on containerd's PATH. Returns status
/// and stdout; stderr goes into the assertion messages.
fn with_containerd(name: &str, script: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let t = std::env::temp_dir().join(format!("uvm-ctrd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(t.join("bin")).unwrap();
    let shim = env!("CARGO_BIN_EXE_containerd-shim-uvm-v2");
    std::os::unix::fs::symlink(shim, t.join("bin/containerd-shim-uvm-v2")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_uvm"), t.join("bin/uvm-runc")).unwrap();
    let full = format!(
        "set -u\nsource {lib}\nT={t}\nUVM={uvm}\nIMAGE={IMAGE}\n\
         $UVM container mkrootfs $T/rootfs >/dev/null || exit 90\n\
         PATH=$T/bin:$PATH ctrd_start $T/c || exit 91\n\
         ctrd_image $T/rootfs $IMAGE || {{ ctrd_stop; exit 92; }}\n\
         ( {script} )\nrc=$?\nctrd_stop\nexit $rc\n",
        lib = repo().join("tests/containerd/lib.sh").display(),
        t = t.display(),
        uvm = env!("CARGO_BIN_EXE_uvm"),
    );
    let out = Command::new("timeout")
        .args(["300", "bash", "-c", &full])
        .envs(env.iter().copied())
        .output()
        .expect("run bash");
    let log = std::fs::read_to_string(t.join("c/containerd.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&t);
    let stderr = format!(
        "{}\n--- containerd's log (tail):\n{}",
        String::from_utf8_lossy(&out.stderr),
        log.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn host_release() -> String {
    let out = Command::new("uname").arg("-r").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn runc_shim_with_uvm_as_its_runc_runs_the_image_on_the_host() {
    let (rc, out, err) = with_containerd(
        "runc",
        r#"
R="--snapshotter native --runc-binary $T/bin/uvm-runc --runc-root $T/c/runc"
ctrd run $R $IMAGE t1 sh -c 'echo "release $(uname -r)"; echo "pid $$"; exit 3' </dev/null; echo "run rc=$?"
ctrd container rm t1; echo "rm rc=$?"
# ctr task ls, kill and delete of a detached one.
ctrd run -d $R $IMAGE t2 sleep 1000 </dev/null >/dev/null; echo "run-d rc=$?"
ctrd task ls | awk '$1 == "t2" { print "task", $1, $3 }'
ctrd task kill -s KILL t2; echo "kill rc=$?"
for i in $(seq 50); do ctrd task ls | grep -q 't2.*STOPPED' && break; sleep 0.1; done
ctrd task ls | awk '$1 == "t2" { print "task", $1, $3 }'
ctrd task delete t2 >/dev/null; echo "delete rc=$?"
ctrd container rm t2; echo "rm2 rc=$?"
# A workload that does not exist: runc's words through the shim, non-zero.
ctrd run --rm $R $IMAGE t3 /no/such/program </dev/null 2>$T/bad.err; echo "bad rc=$? $(head -c 300 $T/bad.err)"
echo "left containers=$(ctrd container ls -q | wc -l) tasks=$(ctrd task ls -q | wc -l) runc-state=$(ls $T/c/runc/uvm-test/containers 2>/dev/null | wc -l) shims=$(pgrep -f -c "[c]ontainerd-shim-runc-v2 .*-address $T/c/")"
"#,
        &[],
    );
    assert_eq!(rc, 0, "{out}\n{err}");
    let want = format!("release {}\npid 1\nrun rc=3\n", host_release());
    assert!(out.starts_with(&want), "{out}\n{err}");
    assert!(out.contains("rm rc=0\nrun-d rc=0\ntask t2 RUNNING\nkill rc=0\ntask t2 STOPPED\ndelete rc=0\nrm2 rc=0\n"), "{out}\n{err}");
    let bad = out.lines().find(|l| l.starts_with("bad rc=")).unwrap_or("");
    assert!(!bad.starts_with("bad rc=0"), "{out}\n{err}");
    assert!(bad.contains("/no/such/program"), "{out}\n{err}");
    assert!(
        out.contains("left containers=0 tasks=0 runc-state=0 shims=0\n"),
        "{out}\n{err}"
    );
}

#[test]
fn uvm_shim_refuses_what_it_cannot_run_in_one_line_and_leaves_nothing() {
    // No guest to boot (UVM_GUEST_DIR names none): the shim's create fails
    // before any VM, containerd says why, and nothing of the pod is left.
    let (rc, out, err) = with_containerd(
        "uvmbad",
        r#"
ctrd run --snapshotter native --runtime io.containerd.uvm.v2 $IMAGE p1 sh -c 'exit 3' </dev/null 2>$T/p1.err; echo "run rc=$? $(tr '\n' ' ' < $T/p1.err)"
ctrd container rm p1; echo "rm rc=$?"
sleep 0.5
echo "left containers=$(ctrd container ls -q | wc -l) tasks=$(ctrd task ls -q | wc -l) sandbox=$(ls -d /run/uvm/sandbox/p1 2>/dev/null | wc -l) shims=$(pgrep -f -c "[c]ontainerd-shim-uvm-v2 .*-address $T/c/") mounts=$(grep -c "$T/c/state" /proc/mounts)"
"#,
        &[("UVM_GUEST_DIR", "/nonexistent/uvm-guest")],
    );
    assert_eq!(rc, 0, "{out}\n{err}");
    let run = out.lines().find(|l| l.starts_with("run rc=")).unwrap_or("");
    assert!(!run.starts_with("run rc=0"), "{out}\n{err}");
    assert!(
        run.contains("default guest /nonexistent/uvm-guest/vmlinuz not found"),
        "{out}\n{err}"
    );
    assert!(out.contains("rm rc=0\n"), "{out}\n{err}");
    assert!(
        out.contains("left containers=0 tasks=0 sandbox=0 shims=0 mounts=0\n"),
        "{out}\n{err}"
    );
}

#[test]
fn the_shim_binary_alone_says_what_it_lacks_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-uvm-v2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("io.containerd.uvm.v2: "), "{err}");
}
