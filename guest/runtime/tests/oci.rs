//! `uvm oci` (runc's command line) end to end, through the runtime binary
//! invoked as `uvm-runc` (a link, as containerd's shim would call it). Needs
//! root. Every command is its own process, as with runc: a container made by
//! one `create` is started, signalled and deleted by later processes that
//! find it only through the state under --root.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

mod common;

use common::{ok, text, tmp};

/// runc's failure: exit 1, one line on stderr containing `needle`.
fn assert_fails(out: &Output, needle: &str) {
    common::assert_fails(out, 1, needle);
}

const BIN: &str = env!("CARGO_BIN_EXE_uvm-container");

/// A busybox rootfs, built once; and the runtime under its OCI name.
fn setup() -> (&'static Path, &'static Path) {
    static PATHS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let (r, b) = PATHS.get_or_init(|| {
        let dir = tmp().join("oci-rootfs");
        let out = Command::new(BIN)
            .args(["mkrootfs", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "mkrootfs: {}", text(&out.stderr));
        let link = tmp().join("uvm-runc");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(BIN, &link).unwrap();
        (dir, link)
    });
    (r, b)
}

/// One test's state root, cgroup parent and bundle.
struct Env {
    root: PathBuf,
    cgroup_parent: String,
    bundle: PathBuf,
}

impl Env {
    /// A bundle whose rootfs is the shared busybox tree, read-only, with
    /// `args` as its process and `dir` of the test bind-mounted at /shared.
    fn new(tag: &str, args: &[&str]) -> Env {
        setup();
        let unique = format!("{tag}-{}", std::process::id());
        let root = tmp().join(format!("oci-state-{unique}"));
        let bundle = tmp().join(format!("oci-bundle-{unique}"));
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(bundle.join("shared")).unwrap();
        let env = Env {
            root,
            cgroup_parent: format!("uvm-test-oci-{unique}"),
            bundle,
        };
        env.write_config(|c| c["process"]["args"] = serde_json::json!(args));
        env
    }

    fn shared(&self) -> PathBuf {
        self.bundle.join("shared")
    }

    /// Writes config.json after `edit` changed the default one.
    fn write_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let (rootfs, _) = setup();
        let mut c = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["true"],
                "env": ["PATH=/bin:/usr/bin"],
                "cwd": "/",
            },
            "root": {"path": rootfs, "readonly": true},
            "hostname": "ocitest",
            "annotations": {"org.example.key": "value"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/shared", "type": "bind", "source": "shared", "options": ["rbind", "rw"]},
            ],
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"},
            ]},
        });
        edit(&mut c);
        std::fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(&c).unwrap(),
        )
        .unwrap();
    }

    fn cmd(&self) -> Command {
        let (_, runc) = setup();
        let mut c = Command::new(runc);
        c.arg("--root")
            .arg(&self.root)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent);
        c
    }

    /// A command whose output is collected. `create` and `run -d` must not
    /// get pipes: the container keeps its stdio (as with runc), and
    /// reading to EOF would wait for it to exit.
    fn oci(&self, args: &[&str]) -> Output {
        let start = Instant::now();
        let out = self.cmd().args(args).stdin(Stdio::null()).output().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            start.elapsed()
        );
        out
    }

    /// `create` with the container's stdout and stderr in files of the
    /// shared directory; returns the exit status and the runtime's stderr
    /// (the container's stderr is that of create until then).
    fn create(&self, id: &str, extra: &[&str]) -> (i32, String) {
        let out = self.shared().join(format!("{id}.out"));
        let err = self.shared().join(format!("{id}.err"));
        let status = self
            .cmd()
            .arg("create")
            .arg("--bundle")
            .arg(&self.bundle)
            .args(extra)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        (
            status.code().unwrap_or(-1),
            std::fs::read_to_string(&err).unwrap(),
        )
    }

    fn state(&self, id: &str) -> serde_json::Value {
        let out = self.oci(&["state", id]);
        serde_json::from_slice(&ok(&out).into_bytes()).unwrap()
    }

    /// Polls `state` until it says `status` (a killed PID 1 is reaped by
    /// whoever adopted it, a moment later).
    fn wait_status(&self, id: &str, status: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.state(id);
            if s["status"] == status {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} never {status}: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// No state and no container cgroup left.
    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.root.join("containers"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "state left: {left:?}");
        common::assert_no_cgroups(&self.cgroup_parent);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // After a failed test: force-delete whatever is left.
        if let Ok(rd) = std::fs::read_dir(self.root.join("containers")) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.cmd().args(["delete", "--force", &id]).output();
            }
        }
        common::remove_cgroup_parent(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

#[test]
fn lifecycle_across_processes() {
    let env = Env::new(
        "life",
        &["sh", "-c", "echo started > /shared/mark; exec sleep 100"],
    );
    let pid_file = env.shared().join("pid");
    let (rc, err) = env.create("c1", &["--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(rc, 0, "create: {err}");
    let s = env.state("c1");
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], "c1");
    assert_eq!(s["ociVersion"], "1.0.2");
    assert_eq!(s["bundle"], env.bundle.to_str().unwrap());
    assert_eq!(s["annotations"]["org.example.key"], "value");
    let pid = s["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // Created: set up, but the workload has not run.
    assert!(!env.shared().join("mark").exists());

    ok(&env.oci(&["start", "c1"]));
    let s = env.state("c1");
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["pid"].as_i64(), Some(pid));
    // start returns once the workload is exec'd, not once it has written.
    let mark = env.shared().join("mark");
    for _ in 0..100 {
        if std::fs::read_to_string(&mark).is_ok_and(|m| m == "started\n") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "started\n");
    let ps: Vec<i64> =
        serde_json::from_str(&ok(&env.oci(&["ps", "--format", "json", "c1"]))).unwrap();
    assert_eq!(ps, vec![pid]);
    // exec joins it: same hostname, its status passes through.
    let out = env.oci(&["exec", "c1", "sh", "-c", "hostname; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ocitest\n");
    // Starting twice is refused.
    assert_fails(&env.oci(&["start", "c1"]), "already running");
    // Deleting a running container needs --force.
    assert_fails(&env.oci(&["delete", "c1"]), "still running");

    // A later process signals it, found through --root only.
    ok(&env.oci(&["kill", "c1", "KILL"]));
    let s = env.wait_status("c1", "stopped");
    assert_eq!(s["pid"], 0);
    assert_fails(&env.oci(&["kill", "c1"]), "container not running");
    assert_fails(&env.oci(&["start", "c1"]), "has stopped");
    ok(&env.oci(&["delete", "c1"]));
    assert_fails(&env.oci(&["state", "c1"]), "does not exist");
    env.assert_clean();
}

#[test]
fn created_container_is_killed_by_another_process_and_deleted() {
    let env = Env::new("kill", &["sleep", "100"]);
    let (rc, err) = env.create("k1", &[]);
    assert_eq!(rc, 0, "create: {err}");
    let pid = env.state("k1")["pid"].as_i64().unwrap();
    // The default signal is TERM, which PID 1 dies of when it comes from
    // outside its namespace.
    ok(&env.oci(&["kill", "k1"]));
    env.wait_status("k1", "stopped");
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            st.contains(") Z")
        }
    );
    ok(&env.oci(&["delete", "k1"]));
    // A created container is deleted (killed) without --force.
    let (rc, err) = env.create("k2", &[]);
    assert_eq!(rc, 0, "create: {err}");
    ok(&env.oci(&["delete", "k2"]));
    env.assert_clean();
}

#[test]
fn run_exits_with_the_container_status_and_cleans_up() {
    let env = Env::new("run", &["sh", "-c", "hostname; exit 7"]);
    let out = env
        .cmd()
        .args(["run", "--bundle"])
        .arg(&env.bundle)
        .arg("r1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ocitest\n");
    env.assert_clean();
}

/// Each hook appends its name and the state it read on stdin to
/// /shared/hooks.log (startContainer runs inside the container, where the
/// same file is reached through the bind mount).
#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let env = Env::new(
        "hooks",
        &[
            "sh",
            "-c",
            "echo workload >> /shared/hooks.log; exec sleep 100",
        ],
    );
    let script = env.shared().join("hook.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"$1 $(cat)\" >> \"$2/hooks.log\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let host = env.shared();
    let hook = |name: &str, path: &str, dir: &str| serde_json::json!([{"path": path, "args": ["hook.sh", name, dir], "env": ["PATH=/bin:/usr/bin"], "timeout": 10}]);
    let (hp, hd) = (script.to_str().unwrap(), host.to_str().unwrap());
    env.write_config(|c| {
        c["process"]["args"] = serde_json::json!([
            "sh",
            "-c",
            "echo workload >> /shared/hooks.log; exec sleep 100"
        ]);
        c["hooks"] = serde_json::json!({
            "prestart": hook("prestart", hp, hd),
            "createRuntime": hook("createRuntime", hp, hd),
            // Before pivot_root, in the container's mount namespace: host paths.
            "createContainer": hook("createContainer", hp, hd),
            "startContainer": hook("startContainer", "/shared/hook.sh", "/shared"),
            "poststart": hook("poststart", hp, hd),
            "poststop": hook("poststop", hp, hd),
        });
    });
    let (rc, err) = env.create("h1", &[]);
    assert_eq!(rc, 0, "create: {err}");
    let pid = env.state("h1")["pid"].as_i64().unwrap();
    ok(&env.oci(&["start", "h1"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(host.join("hooks.log"))
        .unwrap()
        .contains("workload")
    {
        assert!(Instant::now() < deadline, "the workload never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    ok(&env.oci(&["kill", "h1", "KILL"]));
    env.wait_status("h1", "stopped");
    ok(&env.oci(&["delete", "h1"]));
    let log = std::fs::read_to_string(host.join("hooks.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let names: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    // The workload and poststart race (poststart follows start's return).
    let mut sorted = names.clone();
    if sorted[4] == "poststart" {
        sorted.swap(4, 5);
    }
    assert_eq!(
        sorted,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "workload",
            "poststart",
            "poststop"
        ],
        "{log}"
    );
    let expect = [
        ("prestart", "creating"),
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("startContainer", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ];
    for (name, status) in expect {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        let s: serde_json::Value = serde_json::from_str(&line[name.len() + 1..]).unwrap();
        assert_eq!(s["status"], status, "{name}: {s}");
        assert_eq!(s["id"], "h1", "{name}: {s}");
        assert_eq!(s["bundle"], env.bundle.to_str().unwrap(), "{name}: {s}");
        assert_eq!(s["annotations"]["org.example.key"], "value", "{name}: {s}");
        let want = if status == "stopped" { 0 } else { pid };
        assert_eq!(s["pid"].as_i64(), Some(want), "{name}: {s}");
    }
    env.assert_clean();
}

#[test]
fn failing_create_hook_fails_create_and_leaves_nothing() {
    let env = Env::new("hookfail", &["true"]);
    env.write_config(|c| {
        c["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/false"}]});
    });
    let (rc, err) = env.create("f1", &[]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("createRuntime hook /bin/false"), "{err}");
    assert_fails(&env.oci(&["state", "f1"]), "does not exist");
    env.assert_clean();
}

#[test]
fn console_socket_receives_the_terminal() {
    let env = Env::new("tty", &["sh", "-c", "tty; echo hello-tty"]);
    env.write_config(|c| {
        c["process"]["terminal"] = serde_json::json!(true);
        c["process"]["args"] = serde_json::json!(["sh", "-c", "tty; echo hello-tty"]);
    });
    let sock = env.shared().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                fd = fds.first().copied();
            }
        }
        let n = msg.bytes;
        let name = String::from_utf8_lossy(&buf[..n]).into_owned();
        // SAFETY: the descriptor just received is ours alone.
        let master: std::fs::File =
            unsafe { std::os::fd::FromRawFd::from_raw_fd(fd.expect("no descriptor received")) };
        (name, master)
    });
    let (rc, err) = env.create("t1", &["--console-socket", sock.to_str().unwrap()]);
    assert_eq!(rc, 0, "create: {err}");
    let (name, mut master) = t.join().unwrap();
    assert!(name.starts_with("/dev/pts/"), "{name}");
    ok(&env.oci(&["start", "t1"]));
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    // Reading the master ends with EIO once the terminal's last user exits.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = text(&out).replace('\r', "");
    assert_eq!(out, format!("{name}\nhello-tty\n"));
    env.wait_status("t1", "stopped");
    ok(&env.oci(&["delete", "t1"]));
    // A terminal without a socket is refused before anything is made.
    let (rc, err) = env.create("t2", &[]);
    assert_eq!(rc, 1);
    assert!(err.contains("--console-socket"), "{err}");
    env.assert_clean();
}

#[test]
fn bad_bundles_and_unknown_ids_fail_like_runc() {
    let env = Env::new("bad", &["sleep", "100"]);
    assert_fails(
        &env.oci(&["state", "nope"]),
        "container \"nope\" does not exist",
    );
    assert_fails(&env.oci(&["start", "nope"]), "does not exist");
    assert_fails(&env.oci(&["kill", "nope", "KILL"]), "does not exist");
    assert_fails(&env.oci(&["delete", "nope"]), "does not exist");
    // As runc: forcing the delete of nothing succeeds.
    ok(&env.oci(&["delete", "--force", "nope"]));
    assert_fails(&env.oci(&["state", "../x"]), "invalid container id");
    assert_fails(
        &env.oci(&["create", "--bundle", "/nonexistent/bundle", "b1"]),
        "/nonexistent/bundle",
    );
    let empty = env.shared().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_fails(
        &env.oci(&["create", "--bundle", empty.to_str().unwrap(), "b1"]),
        "config.json not found",
    );
    std::fs::write(empty.join("config.json"), "{not json").unwrap();
    assert_fails(
        &env.oci(&["create", "--bundle", empty.to_str().unwrap(), "b1"]),
        "config.json",
    );
    // A command that is not there fails create, not start.
    env.write_config(|c| c["process"]["args"] = serde_json::json!(["/no/such/command"]));
    let (rc, err) = env.create("b2", &[]);
    assert_eq!(rc, 1);
    assert!(err.contains("/no/such/command"), "{err}");
    assert_fails(&env.oci(&["state", "b2"]), "does not exist");
    // The same id twice.
    env.write_config(|c| c["process"]["args"] = serde_json::json!(["sleep", "100"]));
    assert_eq!(env.create("b3", &[]).0, 0);
    let (rc, err) = env.create("b3", &[]);
    assert_eq!(rc, 1);
    assert!(err.contains("container with id \"b3\" exists"), "{err}");
    assert_fails(&env.oci(&["kill", "b3", "NOSUCHSIG"]), "unknown signal");
    ok(&env.oci(&["delete", "b3"]));
    // Refused clearly.
    assert_fails(
        &env.oci(&["--systemd-cgroup", "state", "x"]),
        "--systemd-cgroup is not supported",
    );
    // --log with --log-format json: the error as a JSON line.
    let log = env.shared().join("log.json");
    let out = env.oci(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        "gone",
    ]);
    assert_fails(&out, "does not exist");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"].as_str().unwrap().contains("does not exist"),
        "{line}"
    );
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    env.assert_clean();
}

#[test]
fn features_lists_hooks_and_namespaces() {
    let env = Env::new("features", &["true"]);
    let f: serde_json::Value = serde_json::from_str(&ok(&env.oci(&["features"]))).unwrap();
    assert_eq!(f["hooks"].as_array().unwrap().len(), 6, "{f}");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("pid")));
    assert_eq!(f["linux"]["cgroup"]["systemd"], false);
}

/// What runtime-tools checks and runc does: the spec's own device nodes,
/// default devices usable under a deny-all device rule, oomScoreAdj, v1
/// memory swappiness and OOM killer, an absolute `linux.cgroupsPath`.
#[test]
fn spec_devices_oom_score_memory_knobs_and_cgroups_path() {
    let env = Env::new("knobs", &["true"]);
    let cg = format!("/{}/knobs", env.cgroup_parent);
    env.write_config(|c| {
        c["process"]["args"] = serde_json::json!([
            "sh",
            "-c",
            "echo x > /dev/null && echo null-ok > /shared/m; exec sleep 100"
        ]);
        c["process"]["oomScoreAdj"] = serde_json::json!(500);
        c["linux"]["devices"] = serde_json::json!([
            // Not a device the host has: made by mknod, which the
            // deny-all device rule would refuse without the spec's own
            // devices allowed after it.
            {"path": "/dev/uvmtest", "type": "c", "major": 1, "minor": 250,
             "fileMode": 0o620, "uid": 1, "gid": 2}
        ]);
        c["linux"]["cgroupsPath"] = serde_json::json!(cg);
        c["linux"]["resources"] = serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": {"limit": 67108864, "swappiness": 10, "disableOOMKiller": true},
        });
    });
    let (rc, err) = env.create("n1", &[]);
    assert_eq!(rc, 0, "create: {err}");
    ok(&env.oci(&["start", "n1"]));
    let pid = env.state("n1")["pid"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.shared().join("m").exists() {
        assert!(Instant::now() < deadline, "/dev/null was not writable");
        std::thread::sleep(Duration::from_millis(10));
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dev = std::fs::metadata(format!("/proc/{pid}/root/dev/uvmtest")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 250));
    assert_eq!(dev.mode() & 0o7777, 0o620);
    assert_eq!((dev.uid(), dev.gid()), (1, 2));
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), "500");
    let mem = Path::new("/sys/fs/cgroup/memory").join(cg.trim_start_matches('/'));
    if mem.exists() {
        let procs = std::fs::read_to_string(mem.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        let sw = std::fs::read_to_string(mem.join("memory.swappiness")).unwrap();
        assert_eq!(sw.trim(), "10");
        let oom = std::fs::read_to_string(mem.join("memory.oom_control")).unwrap();
        assert!(oom.contains("oom_kill_disable 1"), "{oom}");
    }
    ok(&env.oci(&["delete", "--force", "n1"]));
    assert!(!mem.exists(), "cgroup left: {}", mem.display());
    env.assert_clean();
}

/// Without a mount namespace (as runc allows) nothing is mounted: the
/// rootfs becomes the root by chroot.
#[test]
fn no_mount_namespace_chroots() {
    let env = Env::new("chroot", &["true"]);
    env.write_config(|c| {
        c["process"]["args"] = serde_json::json!([
            "sh",
            "-c",
            "ls /bin/busybox && cat /proc/self/mountinfo | wc -l"
        ]);
        c["mounts"] = serde_json::json!([]);
        c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "uts"}]);
    });
    let out = env
        .cmd()
        .args(["run", "--bundle"])
        .arg(&env.bundle)
        .arg("m1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // /proc was not mounted: the rootfs's empty directory is all there is.
    assert_eq!(ok(&out), "/bin/busybox\n0\n");
    env.assert_clean();
}
