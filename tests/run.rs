//! `uvm run` on this host: the process and container levels end to end (as
//! root), and bad input at every level, which uvm refuses before it needs
//! KVM. The vm levels boot in tests/boot.rs's runner session.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const UVM: &str = env!("CARGO_BIN_EXE_uvm");

/// The workload every level runs: its hostname, its cgroups, what -e, -w
/// and -u gave it, and a status of its own.
const WORKLOAD: &str =
    "hostname; cat /proc/self/cgroup; echo \"env=$FOO cwd=$(pwd) id=$(id -u):$(id -g)\"; exit 3";

fn cache() -> PathBuf {
    let d = std::env::temp_dir().join("uvm-run-tests-cache");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn uvm_run(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(UVM)
        .arg("run")
        .args(args)
        .env("UVM_CACHE_DIR", cache())
        .output()
        .expect("run uvm");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "uvm run {args:?} took {:?}",
        start.elapsed()
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A one-line error, status 125 (2 for what clap itself refuses), nothing on stdout.
fn assert_refused(args: &[&str], code: i32, needle: &str) {
    let out = uvm_run(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "uvm run {args:?}: {err}");
    assert!(
        out.stdout.is_empty(),
        "uvm run {args:?} printed {:?}",
        text(&out.stdout)
    );
    assert!(
        err.contains(needle),
        "uvm run {args:?}: {err:?} lacks {needle:?}"
    );
    if code == 125 {
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unknown_level_and_missing_command() {
    assert_refused(&["-i", "kata", "--", "true"], 2, "unknown isolation level");
    assert_refused(&["-i", "vm"], 2, "required");
}

#[test]
fn flags_a_level_cannot_honour_name_the_level() {
    for (args, needle) in [
        (
            &["-i", "process", "--hostname", "h", "--", "true"][..],
            "the process level cannot honour --hostname",
        ),
        (
            &["-i", "process", "--rootfs", "/", "--", "true"][..],
            "the process level cannot honour --rootfs",
        ),
        (
            &["-i", "process", "--net", "none", "--", "true"][..],
            "the process level cannot honour --net",
        ),
        (
            &["-i", "process", "-v", "/tmp:/tmp", "--", "true"][..],
            "the process level cannot honour -v",
        ),
        (
            &["-i", "vm", "-v", "/etc/hostname:/h", "--", "true"][..],
            "the vm level cannot honour -v: /etc/hostname:/h: a VM is given folders",
        ),
        (
            &["-i", "vm+container", "-v", "/etc/hostname:/h", "--", "true"][..],
            "the vm+container level cannot honour -v",
        ),
        (
            &["-i", "vm", "--pids-limit", "10", "--", "true"][..],
            "the vm level cannot honour --pids-limit",
        ),
        (
            &["-i", "vm", "--cpus", "0.5", "--", "true"][..],
            "the vm level cannot honour --cpus",
        ),
        (
            &["-i", "vm+container", "--image", "x", "--", "true"][..],
            "the vm+container level cannot honour --image: images live in the host runtime's store",
        ),
        (
            &["-i", "process", "--image", "x", "--", "true"][..],
            "the process level cannot honour --image",
        ),
    ] {
        assert_refused(args, 125, needle);
    }
}

#[test]
fn bad_values_are_one_line_errors() {
    assert_refused(
        &[
            "-i",
            "container",
            "--rootfs",
            "/nonexistent-rootfs",
            "--",
            "true",
        ],
        125,
        "no such directory",
    );
    assert_refused(
        &["-i", "vm", "--memory", "12XB", "--", "true"],
        125,
        "--memory",
    );
    assert_refused(
        &["-i", "container", "--timeout=-1", "--", "true"],
        125,
        "--timeout",
    );
    assert_refused(
        &["-i", "vm+container", "-e", "NOEQUALS", "--", "true"],
        125,
        "-e NOEQUALS",
    );
}

#[test]
fn an_unwritable_cache_is_refused_and_nothing_is_left() {
    if !is_root() {
        return;
    }
    for level in ["container", "vm"] {
        let out = Command::new(UVM)
            .args([
                "run",
                "-i",
                level,
                "--name",
                "uncached",
                "--cache-dir",
                "/proc/uvm-cache",
                "--",
                "true",
            ])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        // At the vm level on a host whose KVM cannot boot Linux, that is
        // said first; either way one line and 125.
        assert_eq!(out.status.code(), Some(125), "{level}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{level}: {err}");
        assert!(
            err.contains("not writable") || err.contains("KVM") || err.contains("PVM"),
            "{level}: {err}"
        );
    }
    assert!(!Path::new("/run/uvm/vm/uncached").exists());
    assert!(!Path::new("/run/uvm/containers/uncached").exists());
}

fn lines(out: &Output) -> Vec<String> {
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn process_level_runs_on_the_host() {
    if !is_root() {
        return;
    }
    let out = uvm_run(&[
        "-i",
        "process",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "65534:65534",
        "--",
        "sh",
        "-c",
        WORKLOAD,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let l = lines(&out);
    let host = text(&Command::new("hostname").output().unwrap().stdout);
    assert_eq!(l[0], host.trim(), "the host's hostname");
    // The cgroups are uvm's own (no limits asked for, so no cgroup made).
    let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert_eq!(l[1..l.len() - 1].join("\n"), mine.trim_end());
    assert_eq!(l.last().unwrap(), "env=bar cwd=/tmp id=65534:65534");
}

#[test]
fn process_level_limits_are_a_cgroup_of_its_own() {
    if !is_root() {
        return;
    }
    let out = uvm_run(&[
        "-i",
        "process",
        "--name",
        "plim",
        "--memory",
        "32m",
        "--pids-limit",
        "16",
        "--",
        "sh",
        "-c",
        "cat /proc/self/cgroup",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cg = text(&out.stdout);
    assert!(
        cg.lines()
            .any(|l| l.contains(":memory:") && l.ends_with("/uvm-run/plim")),
        "{cg}"
    );
    assert!(
        cg.lines()
            .any(|l| l.contains(":pids:") && l.ends_with("/uvm-run/plim")),
        "{cg}"
    );
    // Enforced: 100 MB held in memory under a 32 MiB limit is OOM-killed.
    let out = uvm_run(&[
        "-i",
        "process",
        "--name",
        "poom",
        "--memory",
        "32m",
        "--",
        "sh",
        "-c",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert!(
        !text(&out.stdout).contains("survived"),
        "{}",
        text(&out.stdout)
    );
    assert_ne!(out.status.code(), Some(0));
    for ctrl in ["memory", "pids"] {
        for name in ["plim", "poom"] {
            let d = PathBuf::from(format!("/sys/fs/cgroup/{ctrl}/uvm-run/{name}"));
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
}

#[test]
fn timeouts_stop_the_workload_with_124() {
    if !is_root() {
        return;
    }
    for level in ["process", "container"] {
        let start = Instant::now();
        let name = format!("tmo-{level}");
        let out = uvm_run(&[
            "-i",
            level,
            "--name",
            &name,
            "--timeout",
            "1",
            "--",
            "sleep",
            "30",
        ]);
        assert_eq!(
            out.status.code(),
            Some(124),
            "{level}: {}",
            text(&out.stderr)
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{level}: {:?}",
            start.elapsed()
        );
        assert!(text(&out.stderr).contains("--timeout"), "{level}");
        assert!(
            !Path::new("/run/uvm/containers").join(&name).exists(),
            "{level}: state left"
        );
    }
}

#[test]
fn container_level_runs_the_runtime_on_the_host() {
    if !is_root() {
        return;
    }
    let out = uvm_run(&[
        "-i",
        "container",
        "--name",
        "lvl-ctr",
        "--memory",
        "64m",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "65534:65534",
        "--",
        "sh",
        "-c",
        WORKLOAD,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let l = lines(&out);
    assert_eq!(l[0], "lvl-ctr", "the container's own hostname");
    // Its own cgroup namespace: every hierarchy's path is its root.
    assert!(l[1..l.len() - 1].iter().all(|c| c.ends_with(":/")), "{l:?}");
    assert_eq!(l.last().unwrap(), "env=bar cwd=/tmp id=65534:65534");
    assert!(!Path::new("/run/uvm/containers/lvl-ctr").exists());
    assert!(!Path::new("/sys/fs/cgroup/memory/uvm")
        .join("lvl-ctr")
        .exists());
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A blob of an OCI layout, by digest; returns its descriptor's digest and size.
fn add_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, data).unwrap();
    let hex = sha256_of(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// `uvm run -i container --image`: an image made here (uvm's busybox root
/// as one layer) and imported into a store of the test's own.
#[test]
fn container_level_runs_an_image() {
    if !is_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("uvm-run-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (root, layout, store) = (dir.join("root"), dir.join("layout"), dir.join("store"));
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let uvm = |args: &[&str]| {
        Command::new(UVM)
            .args(args)
            .env("UVM_IMAGE_STORE", &store)
            .env("UVM_CACHE_DIR", cache())
            .output()
            .unwrap()
    };
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    ok(uvm(&["container", "mkrootfs", root.to_str().unwrap()]));
    let layer = dir.join("layer.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let (l, lsize) = add_blob(&layout, &std::fs::read(&layer).unwrap());
    let config = format!(
        r#"{{"os":"linux","config":{{"Env":["IMG=yes"],"WorkingDir":"/etc","Entrypoint":["/bin/sh","-c"]}},"rootfs":{{"type":"layers","diff_ids":["{l}"]}}}}"#
    );
    let (c, csize) = add_blob(&layout, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{c}","size":{csize}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{lsize}}}]}}"#
    );
    let (m, msize) = add_blob(&layout, manifest.as_bytes());
    let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{m}","size":{msize}}}]}}"#);
    std::fs::write(layout.join("index.json"), index).unwrap();
    ok(uvm(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "runimg:1",
    ]));
    let out = uvm(&[
        "run",
        "-i",
        "container",
        "--image",
        "runimg:1",
        "-e",
        "FOO=bar",
        "--",
        "echo \"$IMG $FOO $(pwd)\"",
    ]);
    assert_eq!(ok(out), "yes bar /etc\n");
    ok(uvm(&["image", "rm", "runimg:1"]));
    assert!(ok(uvm(&["image", "ls", "--json"])).trim() == "[]");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn probe_refuses_bad_input() {
    let out = Command::new(UVM)
        .args(["probe", "-i", "kata"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(UVM)
        .args(["probe", "-i", "process", "--cache-dir", "/proc/uvm-cache"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not writable"), "{err}");
}

/// A scratch network namespace (lo up), removed when dropped.
struct ScratchNetns(String);

impl ScratchNetns {
    fn new(tag: &str) -> Self {
        let name = format!("uvmrun-{tag}-{}", std::process::id());
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ip netns add {name} && ip -n {name} link set lo up"
            ))
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        ScratchNetns(name)
    }
    /// `bash -c script` in the namespace. nsenter, not `ip netns exec`,
    /// which mounts a sysfs of its own, without /sys/fs/cgroup.
    fn sh(&self, script: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.0))
            .args(["bash", "-c", script]);
        c
    }
    /// What a TCP connection to addr:port in the namespace reads, retried
    /// (refused until the workload listens) for about 10 s.
    fn get(&self, addr: &str, port: u16) -> String {
        let script = format!(
            "for i in $(seq 100); do r=$(timeout 5 cat < /dev/tcp/{addr}/{port} 2>/dev/null) && [ -n \"$r\" ] && {{ echo \"$r\"; exit 0; }}; sleep 0.1; done; exit 1"
        );
        text(&self.sh(&script).output().unwrap().stdout)
            .trim()
            .to_string()
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn container_level_publishes_on_loopback_and_the_hosts_addresses() {
    if !is_root() {
        return;
    }
    let ns = ScratchNetns::new("pub");
    let server = ns
        .sh(&format!(
            "UVM_CACHE_DIR={} {UVM} run -i container --name pub-web -p 18191:80 -- sh -c 'for i in 1 2; do nc -l -p 80 -e echo hello-from-$(hostname); done'",
            cache().display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Refused until the container listens; then once on 127.0.0.1 and once
    // on the bridge's address (an address of this namespace's host).
    let get = |addr: &str| ns.get(addr, 18191);
    assert_eq!(get("127.0.0.1"), "hello-from-pub-web", "on loopback");
    assert_eq!(
        get("10.88.0.1"),
        "hello-from-pub-web",
        "on the host's bridge address"
    );
    let out = server.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let map = text(&ns.sh("nft list map ip uvm ports").output().unwrap().stdout);
    assert!(!map.contains("18191"), "the published port is gone: {map}");
    let gc = ns.sh(&format!("{UVM} container gc")).output().unwrap();
    assert!(
        text(&gc.stdout).contains("removed bridge uvm0"),
        "{}",
        text(&gc.stdout)
    );
    assert!(!Path::new("/run/uvm/containers/pub-web").exists());
}

#[test]
fn process_level_publishes_through_uvms_relay() {
    if !is_root() {
        return;
    }
    let ns = ScratchNetns::new("procpub");
    // The namespace's "host" has a second address, on a veth.
    let up = ns
        .sh("ip link add d0 type veth peer name d1 && ip addr add 10.77.0.1/24 dev d0 && ip link set d0 up && ip link set d1 up")
        .status()
        .unwrap();
    assert!(up.success());
    let server = ns
        .sh(&format!(
            "{UVM} run -i process -p 18192:8080 -- sh -c 'for i in 1 2; do busybox nc -l -p 8080 -e echo hello-from-process; done; exit 7'"
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let get = |addr: &str| ns.get(addr, 18192);
    assert_eq!(get("127.0.0.1"), "hello-from-process", "on loopback");
    assert_eq!(get("10.77.0.1"), "hello-from-process", "on another address");
    let out = server.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // The relay went with uvm: nothing listens on the host port any more.
    let left = ns.sh("ss -Hltn 'sport = :18192'").output().unwrap();
    assert_eq!(text(&left.stdout).trim(), "", "the relay is gone");
    // A host port in use fails the run before the workload starts.
    let busy = ns
        .sh(&format!(
            "busybox nc -l -p 18194 & for i in $(seq 100); do ss -Hltn 'sport = :18194' | grep -q . && break; sleep 0.1; done; \
             {UVM} run -i process -p 18194:8080 -- touch /tmp/uvm-procpub-ran; echo rc=$?; kill %1"
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&busy.stdout), text(&busy.stderr));
    assert!(stdout.contains("rc=125"), "{stdout} {stderr}");
    assert!(stderr.contains("host port 18194 is in use"), "{stderr}");
    assert!(
        !Path::new("/tmp/uvm-procpub-ran").exists(),
        "the workload never ran"
    );
}

#[test]
fn a_port_in_use_on_the_host_is_refused_and_nothing_is_left() {
    if !is_root() {
        return;
    }
    let ns = ScratchNetns::new("busy");
    // A program of the "host" holds the port; publishing it would steal
    // its traffic.
    let out = ns
        .sh(&format!(
            "python3 -c 'import socket,time; s=socket.socket(); s.bind((\"0.0.0.0\", 18193)); s.listen(); time.sleep(30)' & \
             for i in $(seq 100); do ss -Hltn 'sport = :18193' | grep -q . && break; sleep 0.1; done; \
             UVM_CACHE_DIR={} {UVM} run -i container --name busy-port -p 18193:80 -- true; echo rc=$?; \
             nft list map ip uvm ports 2>/dev/null | grep -c 18193; kill %1",
            cache().display()
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("rc=125"), "{stdout} {stderr}");
    assert!(stderr.contains("host port 18193/tcp is in use"), "{stderr}");
    assert!(
        !stdout.lines().any(|l| l.trim() == "1"),
        "no element left: {stdout}"
    );
    assert!(!Path::new("/run/uvm/containers/busy-port").exists());
    let _ = ns.sh(&format!("{UVM} gc")).output();
}
