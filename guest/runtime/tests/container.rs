//! The container runtime end to end, through its command line
//! (`uvm-container`, the same code as `uvm container`). Needs root; each
//! test uses its own state directory, cgroup parent, bridge, subnet and
//! network namespaces, and checks that nothing is left behind.
//!
//! Network tests run the runtime inside a scratch network namespace that
//! stands in for the host, with a second one standing in for "outside":
//! traffic never leaves the namespaces the test made.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[macro_use]
mod common;

use common::{assert_fails, is_root, ok, text, tmp};

const BIN: &str = env!("CARGO_BIN_EXE_uvm-container");

fn rootfs() -> &'static Path {
    common::rootfs()
}

/// One test's runtime environment: state root and cgroup parent of its own.
struct Env {
    root: PathBuf,
    cgroup_parent: String,
    /// Extra global arguments (bridge, subnet).
    global: Vec<String>,
    /// Network namespace to run the runtime in.
    netns: Option<String>,
    /// Rootless: the scratch directory holding the caller's rootfs copy and
    /// runtime directory; the runtime then runs as [`NOBODY`].
    rootless: Option<PathBuf>,
}

impl Env {
    fn new(tag: &str) -> Env {
        let unique = format!("{tag}-{}", std::process::id());
        // Its own bridge name too, so `gc` never touches a real bridge.
        let bridge = format!("uvt{tag}{}", std::process::id() % 10000);
        assert!(bridge.len() <= 15, "tag {tag} too long");
        Env {
            root: tmp().join(format!("state-{unique}")),
            cgroup_parent: format!("uvm-test-{unique}"),
            global: vec!["--bridge".into(), bridge],
            netns: None,
            rootless: None,
        }
    }

    /// A rootless caller: uid/gid 65534 through setpriv, with a runtime
    /// directory and a copy of the rootfs of its own (an image the user
    /// unpacked). The runtime finds its state root ($XDG_RUNTIME_DIR/uvm)
    /// by itself.
    fn rootless(tag: &str) -> Env {
        let dir = tmp().join(format!("rootless-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("xdg")).unwrap();
        sh(&format!(
            "cp -a {} {d}/rootfs && chown -R {NOBODY}:{NOBODY} {d} && chmod 700 {d}/xdg",
            rootfs().display(),
            d = dir.display()
        ));
        let mut env = Env::new(tag);
        env.root = dir.join("xdg/uvm");
        env.global.clear();
        env.rootless = Some(dir);
        env
    }

    fn rootfs(&self) -> PathBuf {
        match &self.rootless {
            Some(dir) => dir.join("rootfs"),
            None => rootfs().to_path_buf(),
        }
    }

    fn cmd(&self) -> Command {
        if let Some(dir) = &self.rootless {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={NOBODY}"))
                .arg("--clear-groups")
                .arg(BIN)
                .env("XDG_RUNTIME_DIR", dir.join("xdg"));
            return c;
        }
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        c.arg("--root")
            .arg(&self.root)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(&self.global);
        c
    }

    /// `run --rootfs ROOTFS [args]` (args must include `-- CMD`).
    fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .arg("run")
            .arg("--rootfs")
            .arg(self.rootfs())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn spawn_run(&self, args: &[&str]) -> Running {
        Running(Some(
            self.cmd()
                .arg("run")
                .arg("--rootfs")
                .arg(self.rootfs())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ))
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        let out = self.ctl(&["ps", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }

    /// Waits until container `name` runs; returns its `ps` entry.
    fn wait_running(&self, name: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.ps().into_iter().find(|c| c["name"] == name) {
                if c["status"] == "running" {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "container {name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// No state, no container cgroup, no overlay left.
    fn assert_clean(&self) {
        let containers: Vec<_> = std::fs::read_dir(self.root.join("containers"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(containers.is_empty(), "state left: {containers:?}");
        common::assert_no_cgroups(&self.cgroup_parent);
        let overlays: Vec<_> = std::fs::read_dir(self.root.join("overlay"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(overlays.is_empty(), "overlay dirs left: {overlays:?}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // After a failed test: the runtime's own gc removes what is left.
        let _ = self
            .cmd()
            .arg("gc")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        common::remove_cgroup_parent(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(dir) = &self.rootless {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A runtime process started in the background; killed if the test fails
/// before waiting for it (its container dies with it).
struct Running(Option<Child>);

impl Running {
    fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
    fn output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
    /// As `output`, failing the test if the runtime has not exited within
    /// `limit` (it is then killed).
    fn output_within(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        let c = self.0.as_mut().unwrap();
        while c.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the runtime did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.output()
    }
    /// SIGKILL the runtime.
    fn kill_runtime(mut self) {
        let mut c = self.0.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------- process, rootfs

#[test]
fn pid1_hostname_and_isolation() {
    require_root!();
    let env = Env::new("pid1");
    let out = env.run(&[
        "--net",
        "none",
        "--hostname",
        "box1",
        "--",
        "sh",
        "-c",
        "echo pid=$$; hostname; ls /proc | grep -c '^[0-9]'; grep -vc ':/$' /proc/self/cgroup || true",
    ]);
    let s = ok(&out);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "pid=1", "{s}");
    assert_eq!(lines[1], "box1");
    // Only the shell, ls and grep: no host process is visible.
    let procs: u32 = lines[2].parse().unwrap();
    assert!(procs <= 4, "{procs} processes visible");
    // The cgroup namespace makes every hierarchy's root the container's own
    // cgroup: no line of /proc/self/cgroup shows a path below "/".
    assert_eq!(lines[3], "0", "{s}");
    env.assert_clean();
}

#[test]
fn mountinfo_shows_only_container_mounts() {
    require_root!();
    let env = Env::new("mounts");
    let out = env.run(&["--net", "none", "--", "cat", "/proc/self/mountinfo"]);
    let s = ok(&out);
    let points: Vec<&str> = s
        .lines()
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(points[0], "/", "{s}");
    for p in &points {
        assert!(
            *p == "/" || p.starts_with("/proc") || p.starts_with("/dev") || p.starts_with("/sys"),
            "unexpected mount point {p} in\n{s}"
        );
    }
    for expected in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/sys",
        "/proc/keys",
        "/proc/sys",
    ] {
        assert!(points.contains(&expected), "{expected} missing:\n{s}");
    }
    assert!(
        s.lines().next().unwrap().contains(" - overlay "),
        "root is not the overlay:\n{s}"
    );
    // /sys and /proc/sys are read-only.
    for l in s.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f[4] == "/sys" || f[4] == "/proc/sys" {
            assert!(f[5].split(',').any(|o| o == "ro"), "{l}");
        }
    }
    env.assert_clean();
}

#[test]
fn writes_go_to_the_upper_dir_and_the_image_stays_unchanged() {
    require_root!();
    let env = Env::new("overlay");
    let image = rootfs();
    let hosts_before = std::fs::read(image.join("etc/hosts")).unwrap();
    let out = env.run(&[
        "--net",
        "none",
        "--keep",
        "--name",
        "ov",
        "--",
        "sh",
        "-c",
        "echo data > /newfile && echo 10.0.0.9 extra >> /etc/hosts && rm /bin/true && cat /newfile",
    ]);
    assert_eq!(ok(&out), "data\n");
    let err = text(&out.stderr);
    let upper = PathBuf::from(
        err.trim()
            .rsplit(' ')
            .next()
            .expect("kept upper directory is reported"),
    );
    assert!(upper.ends_with("upper"), "{err}");
    assert_eq!(
        std::fs::read_to_string(upper.join("newfile")).unwrap(),
        "data\n"
    );
    assert!(std::fs::read_to_string(upper.join("etc/hosts"))
        .unwrap()
        .contains("extra"));
    // The image is untouched.
    assert!(!image.join("newfile").exists());
    assert_eq!(
        std::fs::read(image.join("etc/hosts")).unwrap(),
        hosts_before
    );
    assert!(image.join("bin/true").symlink_metadata().is_ok());
    std::fs::remove_dir_all(upper.parent().unwrap()).unwrap();
    env.assert_clean();
}

#[test]
fn exit_codes_env_cwd_user_and_stdin() {
    require_root!();
    let env = Env::new("exit");
    let out = env.run(&["--net", "none", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let out = env.run(&[
        "--net",
        "none",
        "-e",
        "FOO=bar baz",
        "-w",
        "/tmp/work",
        "-u",
        "65534:65534",
        "--",
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; grep CapEff /proc/self/status",
    ]);
    let s = ok(&out);
    let l: Vec<&str> = s.lines().collect();
    assert_eq!(&l[..4], &["bar baz", "/tmp/work", "65534", "65534"], "{s}");
    assert!(
        l[4].ends_with("0000000000000000"),
        "a non-root user has no capabilities: {s}"
    );
    // stdin, stdout and stderr are the runtime's.
    let mut child = env
        .cmd()
        .args(["run", "--rootfs"])
        .arg(rootfs())
        .args(["--net", "none", "--", "sh", "-c", "cat; echo err >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(ok(&out), "through stdin\n");
    assert_eq!(text(&out.stderr), "err\n");
    // A dynamically linked host binary copied by mkrootfs runs (its libraries came along).
    let out = env.run(&["--net", "none", "--", "/bin/ls", "--version"]);
    assert!(ok(&out).contains("GNU coreutils"));
    env.assert_clean();
}

#[test]
fn signals_forwarded_and_signal_death_reported() {
    require_root!();
    let env = Env::new("signals");
    // SIGTERM to the runtime reaches the workload, which exits 42.
    let child = env.spawn_run(&[
        "--net",
        "none",
        "--name",
        "trap",
        "--",
        "sh",
        "-c",
        "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    env.wait_running("trap");
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.output();
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    // Death by SIGKILL (uvm container kill) is 128 + 9.
    let child = env.spawn_run(&["--net", "none", "--name", "victim", "--", "sleep", "60"]);
    env.wait_running("victim");
    ok(&env.ctl(&["kill", "victim"]));
    let out = child.output();
    assert_eq!(out.status.code(), Some(137));
    env.assert_clean();
}

#[test]
fn init_forwards_signals_and_reaps_zombies() {
    require_root!();
    let env = Env::new("init");
    // The workload is PID 2; an orphaned grandchild is reaped by the init.
    let out = env.run(&[
        "--net",
        "none",
        "--init",
        "--",
        "sh",
        "-c",
        "echo $$; (sleep 0.1 &); sleep 0.5; ps -o stat,comm | grep -c '^Z' || true",
    ]);
    assert_eq!(ok(&out), "2\n0\n");
    // SIGTERM reaches a workload without a handler (PID 1 would ignore it).
    let child = env.spawn_run(&[
        "--net", "none", "--init", "--name", "t", "--", "sleep", "60",
    ]);
    env.wait_running("t");
    ok(&env.ctl(&["kill", "t", "-s", "TERM"]));
    assert_eq!(child.output().status.code(), Some(128 + 15));
    assert_fails(
        &env.run(&["--net", "none", "--init", "--", "nosuch"]),
        127,
        "nosuch: command not found",
    );
    env.assert_clean();
}

#[test]
fn library_api_run_with_volumes_and_drop() {
    use uvm_runtime::{state::Paths, RunOptions, Runtime, Source, Volume};
    require_root!();
    let env = Env::new("api");
    let mut rt = Runtime::new(Paths::new(&env.root));
    rt.cgroup_parent = env.cgroup_parent.clone();
    let out_dir = env.root.join("out");
    let in_dir = env.root.join("in");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::create_dir_all(&in_dir).unwrap();
    std::fs::write(in_dir.join("input"), "from-host\n").unwrap();
    let mut o = RunOptions::new(
        Source::Rootfs(rootfs().to_path_buf()),
        vec![
            "sh".into(),
            "-c".into(),
            "cat /in/input > /out/copy; echo x > /in/input || echo read-only > /out/ro; exit 9"
                .into(),
        ],
    );
    o.net = Some(uvm_runtime::NetMode::None);
    o.volumes = vec![
        format!("{}:/out", out_dir.display())
            .parse::<Volume>()
            .unwrap(),
        format!("{}:/in:ro", in_dir.display())
            .parse::<Volume>()
            .unwrap(),
    ];
    let exit = rt.run(&o).unwrap();
    assert_eq!(exit.code(), 9);
    assert!(!exit.oom_killed);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("copy")).unwrap(),
        "from-host\n"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("ro")).unwrap(),
        "read-only\n"
    );
    assert_eq!(
        std::fs::read_to_string(in_dir.join("input")).unwrap(),
        "from-host\n"
    );

    // A container dropped without wait() is killed and cleaned up.
    o.args = vec!["sleep".into(), "60".into()];
    o.volumes.clear();
    let c = rt.create(&o).unwrap();
    let pid = c.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(rt.list().len(), 1);
    drop(c);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    assert!(rt.list().is_empty());
    env.assert_clean();
}

/// The unified (v2) hierarchy of a hybrid host: `/sys/fs/cgroup/unified`,
/// or, where the host does not mount it, a mount of the test's own (the
/// same hierarchy; controllers stay with v1 either way).
fn unified_hierarchy() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let host = PathBuf::from("/sys/fs/cgroup/unified");
    if host.join("cgroup.procs").exists() {
        return host;
    }
    let own = PathBuf::from("/tmp/uvm-test-cgroup2");
    if !own.join("cgroup.procs").exists() {
        std::fs::create_dir_all(&own).unwrap();
        nix::mount::mount(
            Some("cgroup2"),
            &own,
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mounting cgroup2 at {}: {e}", own.display()));
    }
    own
}

/// The cgroup v2 code path on this host's (controller-less) unified
/// hierarchy: the container joins its own v2 cgroup, sees it as its root,
/// and it is removed afterwards; limits fail with a clear message since no
/// controller is delegated there on a hybrid host.
#[test]
fn cgroup_v2_path_on_the_unified_hierarchy() {
    use uvm_runtime::cgroups::Hierarchy;
    use uvm_runtime::{state::Paths, NetMode, RunOptions, Runtime, Source, Volume};
    require_root!();
    let unified = unified_hierarchy();
    let env = Env::new("v2");
    let mut rt = Runtime::new(Paths::new(&env.root));
    rt.cgroup_parent = env.cgroup_parent.clone();
    rt.hierarchy = Some(Hierarchy::V2 {
        root: unified.clone(),
    });
    let out_dir = env.root.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut o = RunOptions::new(
        Source::Rootfs(rootfs().to_path_buf()),
        vec![
            "sh".into(),
            "-c".into(),
            "grep '^0::' /proc/self/cgroup > /out/cg; ls /sys/fs/cgroup > /out/ls".into(),
        ],
    );
    o.net = Some(NetMode::None);
    o.volumes = vec![format!("{}:/out", out_dir.display())
        .parse::<Volume>()
        .unwrap()];
    let exit = rt.run(&o).unwrap();
    assert_eq!(exit.code(), 0);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("cg")).unwrap(),
        "0::/\n"
    );
    let ls = std::fs::read_to_string(out_dir.join("ls")).unwrap();
    assert!(ls.lines().any(|l| l == "cgroup.procs"), "{ls}");
    let left: Vec<_> = std::fs::read_dir(unified.join(&env.cgroup_parent))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    o.memory = Some(64 << 20);
    let err = rt.run(&o).unwrap_err().to_string();
    assert!(err.contains("memory controller is not available"), "{err}");
    assert!(rt.list().is_empty());
    // The CLI (single-threaded) starts the container directly in its v2
    // cgroup (clone3 CLONE_INTO_CGROUP).
    let mut v2 = Env::new("v2cli");
    v2.global.push("--cgroup2-root".into());
    v2.global.push(unified.display().to_string());
    let child = v2.spawn_run(&["--net", "none", "--name", "c", "--", "sleep", "60"]);
    let c = v2.wait_running("c");
    let procs = unified
        .join(&v2.cgroup_parent)
        .join(c["id"].as_str().unwrap())
        .join("cgroup.procs");
    let pid = c["pid"].as_i64().unwrap().to_string();
    assert!(std::fs::read_to_string(&procs)
        .unwrap()
        .lines()
        .any(|l| l == pid));
    // The v2 freezer (cgroup.freeze, in every non-root cgroup): pause
    // waits for cgroup.events to say frozen; kill of a paused container
    // still ends it.
    let events = procs.with_file_name("cgroup.events");
    let frozen = || {
        std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("frozen ").map(str::to_string))
            .unwrap()
    };
    ok(&v2.ctl(&["pause", "c"]));
    assert_eq!(frozen(), "1");
    assert_eq!(v2.ps()[0]["status"], "paused");
    assert_fails(&v2.ctl(&["exec", "c", "--", "true"]), 125, "is paused");
    ok(&v2.ctl(&["resume", "c"]));
    assert_eq!(frozen(), "0");
    assert_eq!(v2.ps()[0]["status"], "running");
    ok(&v2.ctl(&["pause", "c"]));
    ok(&v2.ctl(&["kill", "c"]));
    assert_eq!(
        child.output_within(Duration::from_secs(10)).status.code(),
        Some(137)
    );
    v2.assert_clean();
    let _ = std::fs::remove_dir(unified.join(&v2.cgroup_parent));
    let _ = std::fs::remove_dir(unified.join(&env.cgroup_parent));
}

/// An OCI bundle: config.json decides (read-only root, hostname, its own
/// network namespace with only loopback, bind mount relative to the bundle).
#[test]
fn oci_bundle() {
    use oci_spec::runtime::{Mount, Spec};
    require_root!();
    let env = Env::new("bundle");
    let bundle = env.root.join("bundle");
    std::fs::create_dir_all(bundle.join("data")).unwrap();
    std::fs::write(bundle.join("data/f"), "bundle-data\n").unwrap();
    let mut spec = Spec::default();
    let root = spec.root_mut().as_mut().unwrap();
    root.set_path(rootfs().to_path_buf());
    root.set_readonly(Some(true));
    spec.set_hostname(Some("bundlehost".into()));
    let p = spec.process_mut().as_mut().unwrap();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "hostname; cat /data/f; ls /sys/class/net; touch /x 2>/dev/null || echo ro-root".into(),
    ]));
    let mut m = Mount::default();
    m.set_destination("/data".into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some("data".into()));
    m.set_options(Some(vec!["rbind".into(), "ro".into()]));
    spec.mounts_mut().as_mut().unwrap().push(m);
    spec.save(bundle.join("config.json")).unwrap();
    let out = env
        .cmd()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(ok(&out), "bundlehost\nbundle-data\nlo\nro-root\n");
    env.assert_clean();
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_input_one_line_errors_nothing_left_behind() {
    require_root!();
    let env = Env::new("badinput");
    let out = env
        .cmd()
        .args(["run", "--rootfs", "/nonexistent/rootfs", "--", "true"])
        .output()
        .unwrap();
    assert_fails(&out, 125, "rootfs /nonexistent/rootfs does not exist");
    assert_fails(
        &env.run(&["--net", "none", "--", "no-such-command"]),
        127,
        "no-such-command: command not found",
    );
    assert_fails(
        &env.run(&["--net", "none", "--", "/etc/passwd"]),
        126,
        "cannot execute: permission denied",
    );
    assert_fails(
        &env.run(&["--memory", "12XB", "--", "true"]),
        125,
        "invalid --memory value \"12XB\"",
    );
    assert_fails(
        &env.run(&["--cpus", "-1", "--", "true"]),
        125,
        "invalid --cpus value \"-1\"",
    );
    assert_fails(
        &env.run(&["--pids-limit", "0", "--", "true"]),
        125,
        "invalid --pids-limit",
    );
    assert_fails(
        &env.run(&["--net", "bogus", "--", "true"]),
        125,
        "invalid --net",
    );
    assert_fails(&env.run(&["-p", "80", "--", "true"]), 125, "invalid -p");
    assert_fails(
        &env.run(&["--net", "none", "-p", "8080:80", "--", "true"]),
        125,
        "needs --net bridge",
    );
    assert_fails(
        &env.run(&["--name", "bad/name", "--", "true"]),
        125,
        "invalid --name",
    );
    assert_fails(
        &env.run(&["--net", "none", "-w", "/etc/passwd/x", "--", "true"]),
        125,
        "working directory",
    );
    // A name in use: the second run fails, the first is unaffected.
    let first = env.spawn_run(&[
        "--net",
        "none",
        "--name",
        "dup",
        "--",
        "sh",
        "-c",
        "sleep 1; echo first-ok",
    ]);
    env.wait_running("dup");
    assert_fails(
        &env.run(&["--net", "none", "--name", "dup", "--", "true"]),
        125,
        "name \"dup\" is already in use",
    );
    let out = first.output();
    assert_eq!(ok(&out), "first-ok\n");
    env.assert_clean();
}

// ---------------------------------------------------------------- limits

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    require_root!();
    let env = Env::new("oom");
    let out = env.run(&[
        "--net",
        "none",
        "--memory",
        "16m",
        "--",
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(out.status.code(), Some(137));
    assert_fails(
        &out,
        137,
        "out of memory: the kernel OOM-killed a process of the container (memory limit 16 MiB)",
    );
    // 64 MiB in one line: fits in 512m, not in 16m (the same program, only the limit differs).
    let hog = "head -c 64m /dev/zero | tail | wc -c";
    let out = env.run(&["--net", "none", "--memory", "512m", "--", "sh", "-c", hog]);
    assert_eq!(ok(&out).trim(), "67108864");
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    let out = env.run(&["--net", "none", "--memory", "16m", "--", "sh", "-c", hog]);
    assert!(
        text(&out.stderr).contains("out of memory"),
        "{}",
        text(&out.stderr)
    );
    env.assert_clean();
}

fn stats(env: &Env, name: &str) -> serde_json::Value {
    let out = env.ctl(&["stats", name, "--json"]);
    serde_json::from_slice(ok(&out).as_bytes()).unwrap()
}

#[test]
fn fork_bomb_stops_at_pids_limit() {
    require_root!();
    let env = Env::new("pids");
    let child = env.spawn_run(&[
        "--net",
        "none",
        "--name",
        "bomb",
        "--pids-limit",
        "20",
        "--",
        "sh",
        "-c",
        "bomb() { bomb | bomb & }; bomb; sleep 30",
    ]);
    env.wait_running("bomb");
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = stats(&env, "bomb");
        if s["pids_rejected"].as_u64().unwrap_or(0) > 0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s["pids_limit"], 20, "{s}");
    assert!(s["pids_current"].as_u64().unwrap() <= 20, "{s}");
    assert!(
        s["pids_rejected"].as_u64().unwrap() > 0,
        "forks were refused: {s}"
    );
    ok(&env.ctl(&["kill", "bomb"]));
    let out = child.output();
    assert_eq!(out.status.code(), Some(137));
    env.assert_clean();
}

#[test]
fn half_a_cpu_keeps_a_busy_loop_near_half_a_core() {
    require_root!();
    let env = Env::new("cpu");
    let child = env.spawn_run(&[
        "--net",
        "none",
        "--name",
        "busy",
        "--cpus",
        "0.5",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    env.wait_running("busy");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let a = stats(&env, "busy");
    std::thread::sleep(Duration::from_secs(2));
    let b = stats(&env, "busy");
    let wall = t0.elapsed().as_secs_f64();
    let used =
        (b["cpu_usage_ns"].as_u64().unwrap() - a["cpu_usage_ns"].as_u64().unwrap()) as f64 / 1e9;
    let share = used / wall;
    // The quota caps it at 0.5; other tests share the 2 cores, so the floor is loose.
    assert!(
        share <= 0.6,
        "busy loop used {share:.2} CPUs with --cpus 0.5"
    );
    assert!(share >= 0.25, "busy loop got only {share:.2} CPUs");
    if share > 0.4 {
        // It reached the quota (not starved by other load): the kernel throttled it.
        assert!(b["cpu_nr_throttled"].as_u64().unwrap() > 0, "{b}");
    }
    ok(&env.ctl(&["kill", "busy"]));
    assert_eq!(child.output().status.code(), Some(137));
    env.assert_clean();
}

/// The online CPUs, as the kernel lists them.
fn online_cpus() -> Vec<u32> {
    uvm_runtime::cgroups::cpuset::online_cpus()
        .unwrap()
        .into_iter()
        .collect()
}

/// A container's directory in the v1 hierarchy of `controller`.
fn v1_cgroup(env: &Env, controller: &str, c: &serde_json::Value) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(&env.cgroup_parent)
        .join(c["id"].as_str().unwrap())
}

fn read_u64(p: &Path) -> u64 {
    let t = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    t.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}: {t:?}", p.display()))
}

/// The seeds' CPU experiment: two busy loops pinned to the same CPU with
/// shares 20 and 80 split it 20/80 (cpuacct.usage of their cgroups over
/// 3 s), and each sees only that CPU.
#[test]
fn cpu_shares_split_a_shared_cpu_20_80() {
    require_root!();
    if !Path::new("/sys/fs/cgroup/cpuacct").exists() {
        eprintln!("skipped: needs cgroup v1 cpuacct (this is the v1 experiment)");
        return;
    }
    let env = Env::new("shares");
    let cpu = online_cpus().last().unwrap().to_string();
    let busy = |name: &str, shares: &str| {
        env.spawn_run(&[
            "--net",
            "none",
            "--name",
            name,
            "--cpuset-cpus",
            &cpu,
            "--cpu-shares",
            shares,
            "--",
            "sh",
            "-c",
            "grep Cpus_allowed_list /proc/self/status; while :; do :; done",
        ])
    };
    let low = busy("low", "20");
    let high = busy("high", "80");
    let (cl, ch) = (env.wait_running("low"), env.wait_running("high"));
    for (c, shares) in [(&cl, 20), (&ch, 80)] {
        assert_eq!(
            read_u64(&v1_cgroup(&env, "cpu", c).join("cpu.shares")),
            shares
        );
        assert_eq!(
            std::fs::read_to_string(v1_cgroup(&env, "cpuset", c).join("cpuset.cpus"))
                .unwrap()
                .trim(),
            cpu
        );
    }
    let usage =
        |c: &serde_json::Value| read_u64(&v1_cgroup(&env, "cpuacct", c).join("cpuacct.usage"));
    std::thread::sleep(Duration::from_millis(300));
    let (l0, h0) = (usage(&cl), usage(&ch));
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let (l1, h1) = (usage(&cl), usage(&ch));
    let wall = t0.elapsed().as_secs_f64();
    let (l, h) = ((l1 - l0) as f64 / 1e9, (h1 - h0) as f64 / 1e9);
    let share = l / (l + h);
    eprintln!(
        "cpu {cpu}: shares 20 used {l:.3} s, shares 80 used {h:.3} s in {wall:.2} s: \
         {:.1}% / {:.1}%",
        share * 100.0,
        (1.0 - share) * 100.0
    );
    assert!(
        (share - 0.2).abs() <= 0.08,
        "shares 20/80 split the CPU {:.1}/{:.1}",
        share * 100.0,
        (1.0 - share) * 100.0
    );
    // Pinned: together they never had more than the one CPU.
    assert!(
        l + h <= wall * 1.05,
        "{l} + {h} CPU seconds in {wall} s on one CPU"
    );
    ok(&env.ctl(&["kill", "low"]));
    ok(&env.ctl(&["kill", "high"]));
    for child in [low, high] {
        let out = child.output();
        assert_eq!(out.status.code(), Some(137));
        assert_eq!(text(&out.stdout), format!("Cpus_allowed_list:\t{cpu}\n"));
    }
    env.assert_clean();
}

/// What the memory, cpu and cpuset flags ask lands in the container's
/// own cgroup files (read from inside, where /sys/fs/cgroup is its own).
#[test]
fn memory_cpu_and_cpuset_values_land_in_the_cgroup_files() {
    require_root!();
    if !Path::new("/sys/fs/cgroup/cpuset").exists() {
        eprintln!("skipped: needs the v1 controllers of a hybrid host");
        return;
    }
    let env = Env::new("values");
    let cpus = online_cpus();
    let first = cpus[0].to_string();
    let memsw = Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists();
    let args = [
        "--net",
        "none",
        "--memory",
        "64m",
        "--memory-swap",
        "96m",
        "--memory-reservation",
        "32m",
        "--cpu-weight",
        "100",
        "--cpuset-cpus",
        &first,
        "--cpuset-mems",
        "0",
        "--",
        "sh",
        "-c",
        "cd /sys/fs/cgroup && cat memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes \
         memory/memory.soft_limit_in_bytes cpu/cpu.shares cpuset/cpuset.cpus cpuset/cpuset.mems; \
         grep Cpus_allowed_list /proc/self/status",
    ];
    let out = env.run(&args);
    if !memsw {
        // Swap accounting off: a bounded swap cannot be had.
        assert_fails(&out, 125, "does not account swap");
        env.assert_clean();
        return;
    }
    let s = ok(&out);
    let l: Vec<&str> = s.lines().collect();
    assert_eq!(
        l,
        [
            "67108864",
            "100663296",
            "33554432",
            // weight 100 as v1 shares: 2 + ceil(99 * 262142 / 9999).
            "2598",
            &first,
            "0",
            &format!("Cpus_allowed_list:\t{first}"),
        ],
        "{s}"
    );
    // -1: unlimited swap (v1's "unlimited" is a huge page-aligned number).
    let out = env.run(&[
        "--net",
        "none",
        "--memory",
        "64m",
        "--memory-swap",
        "-1",
        "--",
        "cat",
        "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes",
    ]);
    assert!(ok(&out).trim().parse::<u64>().unwrap() > 1 << 62);
    // --memory alone: no swap beyond it, as before.
    let out = env.run(&[
        "--net",
        "none",
        "--memory",
        "64m",
        "--",
        "cat",
        "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes",
    ]);
    assert_eq!(ok(&out), "67108864\n");
    env.assert_clean();
}

/// A file in /dev/shm as a loop device with an ext4 on it, mounted;
/// all of it undone on drop.
struct LoopDisk {
    dev: String,
    mnt: PathBuf,
    img: PathBuf,
}

impl LoopDisk {
    fn new(tag: &str) -> LoopDisk {
        let img = PathBuf::from(format!(
            "/dev/shm/uvm-test-{tag}-{}.img",
            std::process::id()
        ));
        let mnt = tmp().join(format!("loopmnt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&mnt).unwrap();
        sh(&format!("truncate -s 64M {}", img.display()));
        let dev = sh(&format!("losetup -f --show {}", img.display()))
            .trim()
            .to_string();
        let disk = LoopDisk { dev, mnt, img };
        sh(&format!(
            "mkfs.ext4 -q {d} && mount {d} {m}",
            d = disk.dev,
            m = disk.mnt.display()
        ));
        disk
    }

    /// major:minor.
    fn numbers(&self) -> String {
        let name = Path::new(&self.dev)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.img);
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

/// Block I/O limits on a loop device of the test's own: a write bps limit
/// shows as the rate of a `dd oflag=direct` inside (within 25%), and so
/// does a write iops limit; read limits land in their files; a weight
/// lands where the kernel has a weight file, else is one line saying it
/// has none.
#[test]
fn block_io_limits_on_a_loop_device() {
    require_root!();
    if !Path::new("/sys/fs/cgroup/blkio").exists() {
        eprintln!("skipped: needs the v1 blkio controller");
        return;
    }
    let env = Env::new("blkio");
    let disk = LoopDisk::new("blkio");
    let vol = format!("{}:/disk", disk.mnt.display());
    // Seconds a dd inside takes (from /proc/uptime, 10 ms steps), and
    // what it printed before.
    let timed = |limit: &[&str], dd: &str, show: &str| -> (f64, String) {
        let script = format!(
            "{show} a=$(cut -d' ' -f1 /proc/uptime); {dd} 2>/dev/null || echo dd-failed; \
             b=$(cut -d' ' -f1 /proc/uptime); echo \"$a $b\""
        );
        let mut args = vec!["--net", "none", "-v", &vol];
        args.extend_from_slice(limit);
        args.extend(["--", "sh", "-c", &script]);
        let s = ok(&env.run(&args));
        let last = s.lines().last().unwrap();
        let (a, b) = last.split_once(' ').unwrap();
        let secs = b.parse::<f64>().unwrap() - a.parse::<f64>().unwrap();
        (secs, s)
    };
    let bps = format!("{}:1m", disk.dev);
    let write_2m = "dd if=/dev/zero of=/disk/f bs=64k count=32 oflag=direct";
    let (free, _) = timed(&[], write_2m, "");
    let (limited, s) = timed(
        &["--device-write-bps", &bps],
        write_2m,
        "cat /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device;",
    );
    assert_eq!(
        s.lines().next().unwrap(),
        format!("{} 1048576", disk.numbers()),
        "{s}"
    );
    let rate = 2.0 / limited;
    eprintln!(
        "{}: 2 MiB written with O_DIRECT in {free:.2} s unlimited, {limited:.2} s at 1 MiB/s \
         ({rate:.2} MiB/s)",
        disk.dev
    );
    assert!(
        (0.75..=1.25).contains(&rate),
        "{rate:.2} MiB/s under a 1 MiB/s limit"
    );
    assert!(
        free * 4.0 < limited,
        "unlimited: {free:.2} s, limited: {limited:.2} s"
    );
    // 40 writes of 4 KiB at 20 a second.
    let iops = format!("{}:20", disk.dev);
    let (secs, _) = timed(
        &["--device-write-iops", &iops],
        "dd if=/dev/zero of=/disk/g bs=4k count=40 oflag=direct",
        "",
    );
    let rate = 40.0 / secs;
    eprintln!(
        "{}: 40 O_DIRECT writes in {secs:.2} s at 20 iops ({rate:.1} a second)",
        disk.dev
    );
    assert!(
        (15.0..=25.0).contains(&rate),
        "{rate:.1} writes/s under a 20 iops limit"
    );
    // Read limits land in their files.
    let out = env.run(&[
        "--net",
        "none",
        "--device-read-bps",
        &format!("{}:2m", disk.dev),
        "--device-read-iops",
        &format!("{}:300", disk.dev),
        "--",
        "cat",
        "/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device",
        "/sys/fs/cgroup/blkio/blkio.throttle.read_iops_device",
    ]);
    let n = disk.numbers();
    assert_eq!(ok(&out), format!("{n} 2097152\n{n} 300\n"));
    // A weight: where the kernel has a weight file it lands there, else
    // one line says why not.
    let weight_file = ["blkio.bfq.weight", "blkio.weight"]
        .into_iter()
        .find(|f| Path::new("/sys/fs/cgroup/blkio").join(f).exists());
    match weight_file {
        Some(f) => {
            let out = env.run(&[
                "--net",
                "none",
                "--blkio-weight",
                "300",
                "--",
                "cat",
                &format!("/sys/fs/cgroup/blkio/{f}"),
            ]);
            assert!(ok(&out).contains("300"), "{f}");
        }
        None => assert_fails(
            &env.run(&["--net", "none", "--blkio-weight", "300", "--", "true"]),
            125,
            "this kernel cannot weigh block I/O (no blkio.bfq.weight or blkio.weight",
        ),
    }
    env.assert_clean();
}

/// `pause` freezes every process (a counter stops), `ps` says paused,
/// exec is refused, `resume` lets it go on; `kill` of a paused container
/// kills it (thawed after the SIGKILL) and everything is removed.
#[test]
fn pause_and_resume() {
    require_root!();
    let env = Env::new("pause");
    let out_dir = env.root.join("counter");
    std::fs::create_dir_all(&out_dir).unwrap();
    let vol = format!("{}:/out", out_dir.display());
    let child = env.spawn_run(&[
        "--net",
        "none",
        "--name",
        "ticker",
        "-v",
        &vol,
        "--",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /out/n.tmp; mv /out/n.tmp /out/n; sleep 0.02; done",
    ]);
    env.wait_running("ticker");
    let count = || -> u64 {
        std::fs::read_to_string(out_dir.join("n"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let advances_past = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while count() <= n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    };
    assert!(advances_past(3), "the counter does not run");
    let status = || {
        env.ps()
            .into_iter()
            .find(|c| c["name"] == "ticker")
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    ok(&env.ctl(&["pause", "ticker"]));
    assert_eq!(status(), "paused");
    let table = ok(&env.ctl(&["ps"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("ticker ") && l.contains(" paused ")),
        "{table}"
    );
    let n0 = count();
    std::thread::sleep(Duration::from_secs(1));
    let n1 = count();
    assert_eq!(n0, n1, "the counter went on while paused");
    assert_fails(
        &env.ctl(&["exec", "ticker", "--", "true"]),
        125,
        "container \"ticker\" is paused: resume it first",
    );
    assert_fails(&env.ctl(&["pause", "ticker"]), 125, "already paused");
    ok(&env.ctl(&["resume", "ticker"]));
    assert_eq!(status(), "running");
    assert!(advances_past(n1), "the counter did not go on after resume");
    assert_fails(&env.ctl(&["resume", "ticker"]), 125, "is not paused");
    // Paused again, then killed: it dies, promptly.
    ok(&env.ctl(&["pause", "ticker"]));
    let t0 = Instant::now();
    ok(&env.ctl(&["kill", "ticker"]));
    let out = child.output_within(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    eprintln!(
        "kill of a paused container: gone in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    for cmd in ["pause", "resume"] {
        assert_fails(
            &env.ctl(&[cmd, "nosuch"]),
            125,
            "no such container \"nosuch\"",
        );
    }
    env.assert_clean();
}

/// An OCI bundle's linux.resources: cpu shares, CPUs, memory nodes,
/// memory+swap, reservation and a throttled device land in the files; a
/// CPU that is not online is refused before anything is made.
#[test]
fn oci_bundle_resources() {
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxThrottleDeviceBuilder, Spec,
    };
    require_root!();
    if !Path::new("/sys/fs/cgroup/cpuset").exists() {
        eprintln!("skipped: needs the v1 controllers of a hybrid host");
        return;
    }
    let env = Env::new("bres");
    // A whole disk of the host (I/O limits take no partition): the root
    // filesystem's, or the disk holding it.
    let numbers = {
        use std::os::unix::fs::MetadataExt;
        let disk = host_block_device().expect("a host block device");
        let rdev = std::fs::metadata(&disk).unwrap().rdev();
        let sys = format!(
            "/sys/dev/block/{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        );
        let dev = if Path::new(&sys).join("partition").exists() {
            std::fs::canonicalize(&sys)
                .unwrap()
                .parent()
                .unwrap()
                .join("dev")
        } else {
            Path::new(&sys).join("dev")
        };
        let mm = std::fs::read_to_string(dev).unwrap();
        let (major, minor) = mm.trim().split_once(':').unwrap();
        (major.parse::<u64>().unwrap(), minor.parse::<u64>().unwrap())
    };
    let write = |cpus: &str| -> PathBuf {
        let bundle = env.root.join(format!("bundle-{cpus}"));
        std::fs::create_dir_all(&bundle).unwrap();
        let mut spec = Spec::default();
        spec.root_mut()
            .as_mut()
            .unwrap()
            .set_path(rootfs().to_path_buf());
        spec.process_mut().as_mut().unwrap().set_args(Some(vec![
            "sh".into(),
            "-c".into(),
            "cd /sys/fs/cgroup && cat cpu/cpu.shares cpuset/cpuset.cpus cpuset/cpuset.mems \
             memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes \
             memory/memory.soft_limit_in_bytes blkio/blkio.throttle.read_bps_device"
                .into(),
        ]));
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut res = linux.resources().clone().unwrap_or_default();
        res.set_cpu(Some(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .cpus(cpus)
                .mems("0")
                .build()
                .unwrap(),
        ));
        res.set_memory(Some(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .swap(128i64 << 20)
                .reservation(16i64 << 20)
                .build()
                .unwrap(),
        ));
        res.set_block_io(Some(
            LinuxBlockIoBuilder::default()
                .throttle_read_bps_device(vec![LinuxThrottleDeviceBuilder::default()
                    .major(i64::try_from(numbers.0).unwrap())
                    .minor(i64::try_from(numbers.1).unwrap())
                    .rate(1u64 << 20)
                    .build()
                    .unwrap()])
                .build()
                .unwrap(),
        ));
        linux.set_resources(Some(res));
        spec.save(bundle.join("config.json")).unwrap();
        bundle
    };
    let cpu = online_cpus()[0].to_string();
    let bundle = write(&cpu);
    let run = |b: &Path| {
        env.cmd()
            .args(["run", "--bundle"])
            .arg(b)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&bundle);
    if !Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        assert_fails(&out, 125, "does not account swap");
    } else {
        let want = format!(
            "512\n{cpu}\n0\n67108864\n134217728\n16777216\n{}:{} 1048576\n",
            numbers.0, numbers.1
        );
        assert_eq!(ok(&out), want);
    }
    let bad = write("4000");
    assert_fails(
        &run(&bad),
        125,
        "linux.resources.cpu.cpus \"4000\": CPU 4000 is not online",
    );
    env.assert_clean();
}

/// Bad resource flags: one line each, exit 125, nothing made.
#[test]
fn bad_resource_flags_one_line_errors_nothing_left_behind() {
    require_root!();
    let env = Env::new("badres");
    let disk = host_block_device().expect("a host block device");
    let disk = disk.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--cpuset-cpus".into(), "4000".into()],
            "invalid --cpuset-cpus value \"4000\": CPU 4000 is not online (online: ",
        ),
        (vec!["--cpuset-cpus".into(), "1-0".into()], "range 1-0 goes backwards"),
        (vec!["--cpuset-cpus".into(), "one".into()], "expected a list such as 0-3,5"),
        (vec!["--cpuset-mems".into(), "7".into()], "memory node 7 is not online"),
        (
            vec!["--device-write-bps".into(), "/dev/nonexistent-uvm:1m".into()],
            "invalid --device-write-bps value \"/dev/nonexistent-uvm:1m\": no such device /dev/nonexistent-uvm",
        ),
        (
            vec!["--device-read-bps".into(), "/dev/null:1m".into()],
            "/dev/null is not a block device",
        ),
        (
            vec!["--device-write-bps".into(), format!("{disk}:fast")],
            "invalid --device-write-bps",
        ),
        (
            vec!["--device-read-iops".into(), format!("{disk}:0")],
            "the rate must be above 0",
        ),
        (vec!["--device-write-iops".into(), disk.clone()], "expected DEVICE:IOPS"),
        (vec!["--cpu-shares".into(), "1".into()], "invalid --cpu-shares value \"1\""),
        (vec!["--cpu-shares".into(), "lots".into()], "invalid --cpu-shares"),
        (vec!["--cpu-weight".into(), "0".into()], "invalid --cpu-weight value \"0\""),
        (vec!["--cpu-weight".into(), "10001".into()], "from 1 to 10000"),
        (
            vec!["--cpu-shares".into(), "80".into(), "--cpu-weight".into(), "5".into()],
            "give --cpu-shares or --cpu-weight, not both",
        ),
        (vec!["--blkio-weight".into(), "5".into()], "invalid --blkio-weight value \"5\""),
        (
            vec!["--memory".into(), "64m".into(), "--memory-swap".into(), "32m".into()],
            "below --memory 64 MiB",
        ),
        (vec!["--memory-swap".into(), "1g".into()], "needs --memory"),
        (vec!["--memory-swap".into(), "12XB".into()], "invalid --memory-swap"),
        (
            vec!["--memory".into(), "64m".into(), "--memory-reservation".into(), "128m".into()],
            "above --memory 64 MiB",
        ),
    ];
    for (args, needle) in &cases {
        let mut a: Vec<&str> = vec!["--net", "none"];
        a.extend(args.iter().map(String::as_str));
        a.extend(["--", "true"]);
        assert_fails(&env.run(&a), 125, needle);
        env.assert_clean();
    }
}

// ---------------------------------------------------------------- privileges

#[test]
fn privileged_operations_fail_inside() {
    require_root!();
    let env = Env::new("privs");
    let out = env.run(&[
        "--net", "none", "--", "sh", "-c",
        "mknod /tmp/null2 c 1 3 2>&1 | grep -q 'Operation not permitted' && echo mknod-denied; \
         mount -t tmpfs none /tmp 2>&1 | grep -qi 'Operation not permitted\\|Permission denied' && echo mount-denied; \
         insmod /bin/busybox 2>&1 | grep -q 'Operation not permitted\\|not permitted' && echo insmod-denied; \
         date -s 2001-01-01 2>&1 | grep -q 'Operation not permitted' && echo clock-denied; \
         hostname other 2>&1 | grep -q 'Operation not permitted' && echo hostname-denied; \
         unshare -U true 2>&1 | grep -q 'Operation not permitted' && echo unshare-denied; \
         grep -E '^(NoNewPrivs|Seccomp|CapBnd):' /proc/self/status",
    ]);
    let s = ok(&out);
    for line in [
        "mknod-denied",
        "mount-denied",
        "insmod-denied",
        "clock-denied",
        "hostname-denied",
        "unshare-denied",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        // Docker's default set without CAP_MKNOD.
        "CapBnd:\t00000000a00425fb",
    ] {
        assert!(s.lines().any(|l| l == line), "{line:?} missing from:\n{s}");
    }
    env.assert_clean();
}

#[test]
fn seccomp_blocks_with_eperm_and_can_be_turned_off() {
    require_root!();
    let env = Env::new("seccomp");
    // Creating a user namespace needs no capability: only the filter stops it.
    let cmd = "unshare -U true && echo allowed || echo refused";
    let out = env.run(&["--net", "none", "--", "sh", "-c", cmd]);
    assert_eq!(ok(&out), "refused\n");
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "{}",
        text(&out.stderr)
    );
    let out = env.run(&[
        "--net",
        "none",
        "--seccomp",
        "unconfined",
        "--",
        "sh",
        "-c",
        cmd,
    ]);
    assert_eq!(ok(&out), "allowed\n");
    env.assert_clean();
}

/// The default device rules on the host's cgroup version, and on cgroup v2
/// (an eBPF device program; the host's unified hierarchy on a hybrid host).
#[test]
fn device_access_is_restricted_by_the_device_cgroup() {
    require_root!();
    let v1 = !Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut envs = vec![Env::new("devices")];
    if v1 {
        let mut v2 = Env::new("devv2");
        v2.global.push("--cgroup2-root".into());
        v2.global.push(unified_hierarchy().display().to_string());
        envs.push(v2);
    }
    for env in &envs {
        // Even with CAP_MKNOD, no node for a disk; an allowed device can be
        // made and used. A device outside the rules cannot be opened even
        // when the host's node is bound in (tun opens for anyone otherwise).
        let out = env.run(&[
            "--net", "none", "--cap-add", "CAP_MKNOD", "-v", "/dev/net/tun:/dev/tun", "--", "sh", "-c",
            "mknod /tmp/disk b 254 0 2>&1; mknod /tmp/null2 c 1 3 && echo hi > /tmp/null2 && echo null-ok; \
             exec 3</dev/tun && echo tun-opened",
        ]);
        let s = text(&out.stdout) + &text(&out.stderr);
        assert!(
            s.contains("mknod: /tmp/disk: Operation not permitted"),
            "{:?}: {s}",
            env.global
        );
        assert!(s.contains("null-ok"), "allowed devices still work: {s}");
        assert!(s.contains("/dev/tun: Operation not permitted"), "{s}");
        assert!(!s.contains("tun-opened"), "{s}");
        env.assert_clean();
    }
    // Without the device cgroup (the control): tun opens for root.
    let out = Command::new("sh")
        .args(["-c", "exec 3</dev/net/tun && echo tun-opened"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "tun-opened\n");
    for env in &envs {
        let _ = std::fs::remove_dir(unified_hierarchy().join(&env.cgroup_parent));
    }
}

// ---------------------------------------------------------------- exec, ps, kill, stats, gc

#[test]
fn exec_ps_stats_kill() {
    require_root!();
    let env = Env::new("exec");
    let child = env.spawn_run(&[
        "--net",
        "none",
        "--name",
        "svc",
        "--hostname",
        "svchost",
        "--memory",
        "64m",
        "--",
        "sleep",
        "60",
    ]);
    let c = env.wait_running("svc");
    assert!(c["pid"].as_i64().unwrap() > 1);
    let table = ok(&env.ctl(&["ps"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("svc ") && l.contains("running") && l.contains("sleep 60")),
        "{table}"
    );
    let out = env.ctl(&[
        "exec",
        "svc",
        "--",
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; grep Seccomp: /proc/self/status",
    ]);
    let s = ok(&out);
    let l: Vec<&str> = s.lines().collect();
    assert_eq!(l[0], "svchost");
    assert_eq!(l[1], "sleep 60 ");
    assert_eq!(l[2], "Seccomp:\t2");
    assert_eq!(
        env.ctl(&["exec", "svc", "--", "sh", "-c", "exit 5"])
            .status
            .code(),
        Some(5)
    );
    assert_fails(
        &env.ctl(&["exec", "svc", "--", "nope"]),
        127,
        "nope: command not found",
    );
    let s = stats(&env, "svc");
    assert_eq!(s["memory_limit"], 64 << 20);
    assert!(s["memory_usage"].as_u64().unwrap() > 0);
    assert_fails(
        &env.ctl(&["stats", "nosuch"]),
        125,
        "no such container \"nosuch\"",
    );
    assert_fails(
        &env.ctl(&["exec", "nosuch", "--", "true"]),
        125,
        "no such container",
    );
    ok(&env.ctl(&["kill", "svc", "-s", "KILL"]));
    assert_eq!(child.output().status.code(), Some(137));
    env.assert_clean();
}

#[test]
fn sigkill_of_the_runtime_then_gc_and_name_reuse() {
    require_root!();
    let env = Env::new("gc");
    let child = env.spawn_run(&[
        "--net",
        "none",
        "--name",
        "orphan",
        "--pids-limit",
        "50",
        "--",
        "sleep",
        "60",
    ]);
    let c = env.wait_running("orphan");
    let pid = c["pid"].as_i64().unwrap();
    child.kill_runtime();
    // The container dies with its runtime.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "container outlived its runtime");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ps = env.ps();
    assert_eq!(ps[0]["status"], "stale");
    let out = ok(&env.ctl(&["gc"]));
    assert!(out.contains("removed container orphan"), "{out}");
    env.assert_clean();
    // A stale container's name is taken over by the next run (start-up sweep).
    let child = env.spawn_run(&["--net", "none", "--name", "again", "--", "sleep", "60"]);
    env.wait_running("again");
    child.kill_runtime();
    let out = env.run(&["--net", "none", "--name", "again", "--", "true"]);
    ok(&out);
    env.assert_clean();
}

// ---------------------------------------------------------------- networking

/// A network namespace made by the test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs `f` on a thread inside network namespace `path` (sockets it makes stay there).
fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A scratch "host" namespace (where the runtime runs) linked to an
/// "outside" one: host 198.51.100.1/24 <-> outside 198.51.100.2/24.
fn net_env(tag: &str, subnet_octet: u8) -> (Env, Netns, Netns) {
    let id = std::process::id() % 10000;
    let host = Netns::new(format!("uvmt-{tag}-h{id}"));
    let outside = Netns::new(format!("uvmt-{tag}-o{id}"));
    let (a, b) = (format!("uvh{tag}{id}"), format!("uvo{tag}{id}"));
    sh(&format!(
        "ip link add {a} netns {h} type veth peer name {b} netns {o} && \
         ip -n {h} addr add 198.51.100.1/24 dev {a} && ip -n {o} addr add 198.51.100.2/24 dev {b} && \
         ip -n {h} link set {a} up && ip -n {o} link set {b} up",
        h = host.0,
        o = outside.0
    ));
    let mut env = Env::new(tag);
    env.netns = Some(host.0.clone());
    env.global.push("--subnet".into());
    env.global.push(format!("10.231.{subnet_octet}.0/24"));
    (env, host, outside)
}

fn read_all(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

#[test]
fn bridge_networking_nat_and_published_ports() {
    require_root!();
    let (env, host, outside) = net_env("br", 7);
    // The scratch host starts without forwarding (whatever the real host
    // does), so that gc's restoring it shows.
    let fwd = || {
        sh(&format!(
            "ip netns exec {} cat /proc/sys/net/ipv4/ip_forward",
            host.0
        ))
    };
    sh(&format!(
        "ip netns exec {} sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'",
        host.0
    ));
    // A server container, published on host port 18080.
    let server = env.spawn_run(&[
        "--name",
        "web",
        "-p",
        "18080:8080",
        "--",
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "echo",
        "hello-from-web",
    ]);
    let web = env.wait_running("web");
    let web_ip = web["net"]["ip"].as_str().unwrap().to_string();
    assert!(web_ip.starts_with("10.231.7."), "{web}");
    assert_eq!(fwd(), "1\n", "the bridge turns IPv4 forwarding on");

    // Container to container over the bridge; the second gets another address.
    let out = env.run(&[
        "--",
        "sh",
        "-c",
        &format!("ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; nc {web_ip} 8080"),
    ]);
    let s = ok(&out);
    assert!(s.contains("hello-from-web"), "{s}");
    let other_ip = s
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("inet ")
        .to_string();
    assert_ne!(other_ip, web_ip);
    assert!(other_ip.starts_with("10.231.7."));

    // Egress through NAT to the "outside" namespace: it sees the host's address.
    let listener = in_netns(&outside.path(), || {
        TcpListener::bind("198.51.100.2:9000").unwrap()
    });
    let accept = std::thread::spawn(move || {
        let (s, peer) = listener.accept().unwrap();
        (peer.ip(), read_all(s))
    });
    ok(&env.run(&["--", "sh", "-c", "echo via-nat | nc -w 3 198.51.100.2 9000"]));
    let (peer, data) = accept.join().unwrap();
    assert_eq!(
        peer,
        Ipv4Addr::new(198, 51, 100, 1),
        "masqueraded to the host's address"
    );
    assert_eq!(data, "via-nat\n");

    // The published port answers from outside and from the host itself.
    let from_outside = in_netns(&outside.path(), || {
        read_all(TcpStream::connect("198.51.100.1:18080").unwrap())
    });
    assert_eq!(from_outside, "hello-from-web\n");
    let from_host = in_netns(&host.path(), || {
        read_all(TcpStream::connect("198.51.100.1:18080").unwrap())
    });
    assert_eq!(from_host, "hello-from-web\n");
    // A second container cannot take the same host port.
    assert_fails(
        &env.run(&["-p", "18080:80", "--", "true"]),
        125,
        "already published",
    );

    let rules = sh(&format!(
        "ip netns exec {} nft list map ip uvm ports",
        host.0
    ));
    assert!(
        rules.contains(&format!("tcp . 18080 : {web_ip} . 8080")),
        "{rules}"
    );
    ok(&env.ctl(&["kill", "web"]));
    assert_eq!(server.output().status.code(), Some(137));

    // Rules and links are gone.
    let rules = sh(&format!(
        "ip netns exec {} nft list map ip uvm ports",
        host.0
    ));
    assert!(!rules.contains("elements"), "{rules}");
    let links = sh(&format!("ip -n {} -o link", host.0));
    assert!(!links.contains("uvmv"), "{links}");
    env.assert_clean();
    // gc takes down the bridge and the nftables table once unused.
    let out = ok(&env.ctl(&["gc"]));
    assert!(out.contains("removed bridge uvtbr"), "{out}");
    assert!(out.contains("removed nftables table ip uvm"), "{out}");
    assert!(out.contains("net.ipv4.ip_forward restored to 0"), "{out}");
    assert_eq!(fwd(), "0\n", "gc puts back the forwarding it found");
    assert_eq!(
        sh(&format!("ip netns exec {} nft list ruleset", host.0)),
        ""
    );
    assert!(!sh(&format!("ip -n {} -o link", host.0)).contains("uvtbr"));
}

#[test]
fn net_none_and_host() {
    require_root!();
    let (env, host, _outside) = net_env("nh", 8);
    let out = env.run(&[
        "--net",
        "none",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net | tr '\\n' ' '",
    ]);
    assert_eq!(ok(&out), "lo ");
    // A namespaced sysctl is set inside only: the container gets the
    // opposite of what the scratch host namespace has, which keeps its own
    // value. A fresh namespace inherits the host's IPv4 settings, so the
    // value is read first, never assumed (a Docker host forwards).
    let fwd_of_host = || {
        sh(&format!(
            "ip netns exec {} cat /proc/sys/net/ipv4/ip_forward",
            host.0
        ))
    };
    let before = fwd_of_host();
    let want = if before.trim() == "1" { "0" } else { "1" };
    let out = env.run(&[
        "--net",
        "none",
        "--sysctl",
        &format!("net.ipv4.ip_forward={want}"),
        "--",
        "cat",
        "/proc/sys/net/ipv4/ip_forward",
    ]);
    assert_eq!(ok(&out), format!("{want}\n"));
    assert_eq!(fwd_of_host(), before);
    let out = env.run(&[
        "--net",
        "host",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net | tr '\\n' ' '",
    ]);
    let s = ok(&out);
    assert!(
        s.contains("uvhnh"),
        "the host namespace's interfaces are visible: {s}"
    );
    drop(host);
    env.assert_clean();
}

// ---------------------------------------------------------------- user namespaces, rootless

/// The unprivileged user rootless tests run the runtime as.
const NOBODY: u32 = 65534;

/// A block device of the host (the root filesystem's, else loop0).
fn host_block_device() -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let is_block = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device());
    let root = PathBuf::from(sh("findmnt -no SOURCE /").trim());
    [root, PathBuf::from("/dev/loop0")]
        .into_iter()
        .find(|p| is_block(p))
}

fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// The upper directory `--keep` reports on stderr.
fn kept_upper(out: &Output) -> PathBuf {
    let err = text(&out.stderr);
    let upper = PathBuf::from(err.trim().rsplit(' ').next().unwrap());
    assert!(upper.ends_with("upper"), "{err}");
    upper
}

#[test]
fn rootless_run_maps_the_caller_to_root() {
    require_root!();
    let rl = Env::rootless("run");
    let disk = host_block_device().expect("a host block device");
    let vol = format!("{}:/dev/hostdisk", disk.display());
    let out = rl.run(&[
        "--hostname",
        "rl1",
        "--name",
        "rl",
        "--keep",
        "-v",
        &vol,
        "--",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; echo pid=$$; hostname; echo data > /newfile; \
         mknod /tmp/disk b 8 0 2>/dev/null || echo mknod-denied; \
         mount -t ext4 /dev/hostdisk /mnt 2>/dev/null || echo mount-denied; \
         head -c1 /dev/hostdisk >/dev/null 2>&1 || echo read-denied; \
         ip -o link | cut -d' ' -f2; grep ' /sys/' /proc/mounts | grep -vc ' /sys/firmware ' || true",
    ]);
    let s = ok(&out);
    let l: Vec<&str> = s.lines().collect();
    assert_eq!(l[0], "0", "{s}");
    assert_eq!(
        l[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "65534", "1"],
        "{s}"
    );
    assert_eq!(l[2], "pid=1");
    assert_eq!(l[3], "rl1");
    for denied in ["mknod-denied", "mount-denied", "read-denied"] {
        assert!(l.contains(&denied), "{denied} missing:\n{s}");
    }
    // --net none by default without root: loopback only, and /sys is a
    // sysfs of its own (the network namespace is the container's), not the
    // host's bound with its submounts.
    assert_eq!(l[l.len() - 2], "lo:", "{s}");
    assert_eq!(l[l.len() - 1], "0", "{s}");
    let upper = kept_upper(&out);
    assert!(upper.starts_with(&rl.root), "{}", upper.display());
    assert_eq!(
        std::fs::read_to_string(upper.join("newfile")).unwrap(),
        "data\n"
    );
    assert_eq!(owner(&upper.join("newfile")), (NOBODY, NOBODY));
    sh(&format!("rm -rf {}", upper.parent().unwrap().display()));
    rl.assert_clean();
    // --net host works too: /sys is then the host's, bound read-only with
    // every mount below it.
    let out = rl.run(&[
        "--net",
        "host",
        "--",
        "sh",
        "-c",
        "id -u; grep ' /sys' /proc/mounts | grep -c ' rw[, ]' || true",
    ]);
    assert_eq!(ok(&out), "0\n0\n");
    rl.assert_clean();
}

#[test]
fn rootless_refusals_leave_nothing_behind() {
    require_root!();
    let rl = Env::rootless("refuse");
    for (args, needle) in [
        (&["--memory", "64m"][..], "rootless: --memory"),
        (&["--pids-limit", "10"][..], "rootless: --memory"),
        (
            &["--net", "bridge"][..],
            "rootless: --net bridge needs root",
        ),
        (
            &["-p", "8080:80"][..],
            "rootless: publishing ports (-p) needs root",
        ),
        (
            &["--uidmap", "0:100000:65536"][..],
            "only your own ID can be mapped",
        ),
        (&["--user", "1000"][..], "uid 1000 is not mapped"),
    ] {
        let mut a = args.to_vec();
        a.extend(["--", "true"]);
        let out = rl.run(&a);
        assert_fails(&out, 125, needle);
        rl.assert_clean();
    }
}

#[test]
fn rootless_ps_exec_kill_and_gc() {
    require_root!();
    let rl = Env::rootless("ctl");
    let child = rl.spawn_run(&["--name", "svc", "--hostname", "svch", "--", "sleep", "60"]);
    let c = rl.wait_running("svc");
    assert!(c["pid"].as_i64().unwrap() > 1);
    let table = ok(&rl.ctl(&["ps"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("svc ") && l.contains("running")),
        "{table}"
    );
    let out = rl.ctl(&[
        "exec",
        "svc",
        "--",
        "sh",
        "-c",
        "id -u; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/self/uid_map",
    ]);
    let s = ok(&out);
    let l: Vec<&str> = s.lines().collect();
    assert_eq!(l[..3], ["0", "svch", "sleep 60 "], "{s}");
    assert_eq!(
        l[3].split_whitespace().collect::<Vec<_>>(),
        ["0", "65534", "1"]
    );
    assert_eq!(
        rl.ctl(&["exec", "svc", "--", "sh", "-c", "exit 4"])
            .status
            .code(),
        Some(4)
    );
    ok(&rl.ctl(&["kill", "svc", "-s", "KILL"]));
    assert_eq!(child.output().status.code(), Some(137));
    rl.assert_clean();
    // A runtime killed outright: its container dies, `gc` removes the rest.
    let child = rl.spawn_run(&[
        "--name",
        "orphan",
        "--",
        "sh",
        "-c",
        "mkdir -p /d/e && chmod 500 /d/e /d && sleep 60",
    ]);
    rl.wait_running("orphan");
    child.kill_runtime();
    let out = ok(&rl.ctl(&["gc"]));
    assert!(out.contains("removed container orphan"), "{out}");
    rl.assert_clean();
}

#[test]
fn userns_as_root_maps_root_to_an_unprivileged_range() {
    require_root!();
    let env = Env::new("userns");
    let vol = tmp().join(format!("userns-vol-{}", std::process::id()));
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("hostfile"), "host\n").unwrap();
    let v = format!("{}:/vol", vol.display());
    let script = "cat /proc/self/uid_map /proc/self/gid_map; id -u; echo data > /newfile; \
                  stat -c '%u %g' /vol/hostfile; echo x >> /vol/hostfile 2>/dev/null || echo write-denied";
    let out = env.run(&[
        "--net", "none", "--userns", "--keep", "-v", &v, "--", "sh", "-c", script,
    ]);
    let s = ok(&out);
    let l: Vec<Vec<&str>> = s.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(l[0], ["0", "100000", "65536"], "{s}");
    assert_eq!(l[1], ["0", "100000", "65536"], "{s}");
    assert_eq!(l[2], ["0"]);
    // Host root is not mapped: its files show as the overflow IDs and the
    // container's root has no power over them.
    assert_eq!(l[3], ["65534", "65534"], "{s}");
    assert_eq!(l[4], ["write-denied"], "{s}");
    assert_eq!(
        std::fs::read_to_string(vol.join("hostfile")).unwrap(),
        "host\n"
    );
    let upper = kept_upper(&out);
    assert_eq!(owner(&upper.join("newfile")), (100_000, 100_000));
    std::fs::remove_dir_all(upper.parent().unwrap()).unwrap();

    // Explicit ranges, groups apart; exec joins the user namespace.
    let child = env.spawn_run(&[
        "--net",
        "none",
        "--name",
        "mapped",
        "--uidmap",
        "0:200000:1000",
        "--gidmap",
        "0:300000:1000",
        "--memory",
        "64m",
        "--",
        "sleep",
        "60",
    ]);
    env.wait_running("mapped");
    let out = env.ctl(&[
        "exec",
        "mapped",
        "--",
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; touch /made; stat -c '%u %g' /made",
    ]);
    let s = ok(&out);
    let l: Vec<Vec<&str>> = s.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(l[0], ["0", "200000", "1000"], "{s}");
    assert_eq!(l[1], ["0", "300000", "1000"], "{s}");
    assert_eq!(l[2], ["0", "0"], "{s}");
    // As root, limits work with a user namespace too.
    assert_eq!(stats(&env, "mapped")["memory_limit"], 64 << 20);
    ok(&env.ctl(&["kill", "mapped"]));
    assert_eq!(child.output().status.code(), Some(137));
    std::fs::remove_dir_all(&vol).unwrap();
    env.assert_clean();
}

#[test]
fn bad_id_mappings_one_line_errors() {
    require_root!();
    let env = Env::new("badmap");
    for (args, needle) in [
        (
            &["--uidmap", "garbage"][..],
            "invalid --uidmap value \"garbage\"",
        ),
        (
            &["--uidmap", "0:100000:0"][..],
            "the size must be at least 1",
        ),
        (&["--uidmap", "0:4294967295:1"][..], "past the largest ID"),
        (&["--gidmap", "0:4294967000:1000"][..], "invalid --gidmap"),
        (
            &["--uidmap", "0:100000:10", "--uidmap", "5:200000:10"][..],
            "overlap on the container side",
        ),
        (
            &["--uidmap", "0:100000:10", "--uidmap", "10:100005:10"][..],
            "overlap on the host side",
        ),
        (&["--uidmap", "0:1:x"][..], "numbers from 0"),
        (
            &["--userns", "--user", "70000"][..],
            "uid 70000 is not mapped",
        ),
    ] {
        let mut a = vec!["--net", "none"];
        a.extend_from_slice(args);
        a.extend(["--", "true"]);
        assert_fails(&env.run(&a), 125, needle);
    }
    env.assert_clean();
}

// ---------------------------------------------------------------- network patterns

/// A container name no other test run uses: registrations in /run/netns
/// are host-wide.
fn unique(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

fn netns_entry(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Connects from namespace `ns` to `ip:port` and reads the answer; the
/// error kind if it fails within 2 s.
fn answer_from(ns: &Netns, ip: &str, port: u16) -> Result<String, std::io::ErrorKind> {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    in_netns(&ns.path(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map(read_all)
            .map_err(|e| e.kind())
    })
}

/// Waits until `ip:port` answers from `ns` (its server starting).
fn wait_answer(ns: &Netns, ip: &str, port: u16) {
    for _ in 0..50 {
        if answer_from(ns, ip, port).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a container with the flags `net` that shows its `eth0` and pings
/// `target`: it must have `addr` and be answered.
fn assert_pings(env: &Env, net: &[&str], addr: &str, target: &str) {
    let script = format!("ip -4 -o addr show eth0; ping -c 1 -W 3 {target} && echo pinged");
    let mut args = net.to_vec();
    args.extend(["--", "sh", "-c", &script]);
    let s = ok(&env.run(&args));
    assert!(s.contains(&format!("inet {addr}")), "{s}");
    assert!(s.contains("pinged"), "{s}");
}

/// The interfaces of a container's registered namespace.
fn links_of(name: &str) -> String {
    sh(&format!(
        "ip netns exec {name} ls /sys/class/net | tr '\\n' ' '"
    ))
}

#[test]
fn netns_registered_while_running_and_allow_in_firewall() {
    require_root!();
    let (env, host, _outside) = net_env("fw", 9);
    let (fw, open) = (unique("fw"), unique("open"));
    let servers = "nc -ll -p 80 -e echo eighty & nc -ll -p 81 -e echo eightyone & wait";
    let fw_run = env.spawn_run(&[
        "--name",
        &fw,
        "--allow-in",
        "80",
        "--allow-in",
        "53/udp",
        "--",
        "sh",
        "-c",
        servers,
    ]);
    let open_run = env.spawn_run(&["--name", &open, "--", "sh", "-c", servers]);
    let c = env.wait_running(&fw);
    let fw_ip = c["net"]["ip"].as_str().unwrap().to_string();
    let open_ip = env.wait_running(&open)["net"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(c["netns"]["registered"], format!("/run/netns/{fw}"));

    // `ip netns exec NAME` enters the container's namespace.
    let addr = sh(&format!("ip netns exec {fw} ip -4 -o addr show"));
    assert!(
        addr.contains("eth0") && addr.contains(&format!("inet {fw_ip}/24")),
        "{addr}"
    );
    let rules = sh(&format!(
        "ip netns exec {fw} nft list table inet uvm_firewall"
    ));
    assert!(rules.contains("policy drop"), "{rules}");
    assert!(rules.contains("tcp dport 80 accept"), "{rules}");
    assert!(rules.contains("udp dport 53 accept"), "{rules}");
    // Not on the host: the table lives in the container's namespace only.
    let host_tables = sh(&format!("ip netns exec {} nft list tables", host.0));
    assert!(!host_tables.contains("uvm_firewall"), "{host_tables}");

    // The allowed port answers; 81 is dropped (a timeout, not a refusal).
    wait_answer(&host, &fw_ip, 80);
    assert_eq!(answer_from(&host, &fw_ip, 80), Ok("eighty\n".into()));
    assert_eq!(
        answer_from(&host, &fw_ip, 81),
        Err(std::io::ErrorKind::TimedOut)
    );
    // Without --allow-in everything is accepted.
    wait_answer(&host, &open_ip, 81);
    assert_eq!(answer_from(&host, &open_ip, 81), Ok("eightyone\n".into()));
    assert!(
        sh(&format!("ip netns exec {open} nft list ruleset")).is_empty(),
        "no firewall without --allow-in"
    );
    // Replies to the container's own connections come back in.
    let out = ok(&env.ctl(&[
        "exec",
        &fw,
        "--",
        "sh",
        "-c",
        &format!("nc -w 3 {open_ip} 81"),
    ]));
    assert_eq!(out, "eightyone\n");

    ok(&env.ctl(&["kill", &fw]));
    ok(&env.ctl(&["kill", &open]));
    fw_run.output_within(Duration::from_secs(10));
    open_run.output_within(Duration::from_secs(10));
    assert!(!netns_entry(&fw).exists() && !netns_entry(&open).exists());
    env.assert_clean();

    // A /run/netns entry of the same name is refused, and left as it was.
    let taken = Netns::new(unique("taken"));
    sh(&format!(
        "ip -n {} link add probe0 type veth peer name probe1",
        taken.0
    ));
    let out = env.run(&["--name", &taken.0, "--", "true"]);
    assert_fails(&out, 125, "already exists");
    assert!(text(&out.stderr).contains(&format!("/run/netns/{}", taken.0)));
    assert!(
        links_of(&taken.0).contains("probe0"),
        "the entry was touched"
    );
    env.assert_clean();
}

#[test]
fn pod_containers_share_one_network_namespace() {
    require_root!();
    let (env, _host, _outside) = net_env("pod", 11);
    let owner = unique("pod");
    let run = env.spawn_run(&[
        "--name",
        &owner,
        "--",
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "echo",
        "from-owner",
    ]);
    let c = env.wait_running(&owner);
    let ip = c["net"]["ip"].as_str().unwrap().to_string();
    let owner_ns = std::fs::read_link(format!("/proc/{}/ns/net", c["pid"])).unwrap();
    // One namespace: the same interfaces and loopback, the owner's port
    // reached on 127.0.0.1, and that port already taken.
    let out = env.run(&[
        "--net",
        &format!("container:{owner}"),
        "--",
        "sh",
        "-c",
        "readlink /proc/self/ns/net; ls /sys/class/net | tr '\\n' ' '; echo; \
         ip -4 -o addr show eth0; nc 127.0.0.1 8080; nc -l -p 8080",
    ]);
    let s = text(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{s}");
    let mut lines = s.lines();
    assert_eq!(lines.next().unwrap(), owner_ns.to_str().unwrap(), "{s}");
    assert_eq!(lines.next().unwrap(), "eth0 lo ", "{s}");
    assert!(
        lines.next().unwrap().contains(&format!("inet {ip}/24")),
        "{s}"
    );
    assert_eq!(lines.next(), Some("from-owner"), "{s}");
    assert!(
        text(&out.stderr).contains("Address already in use"),
        "{}",
        text(&out.stderr)
    );
    // The joiner left the owner's network as it was: registered, with its
    // address, still serving.
    assert!(netns_entry(&owner).exists());
    let addr = sh(&format!("ip netns exec {owner} ip -4 -o addr show eth0"));
    assert!(addr.contains(&format!("inet {ip}/24")), "{addr}");
    let again = ok(&env.ctl(&["exec", &owner, "--", "nc", "127.0.0.1", "8080"]));
    assert_eq!(again, "from-owner\n");
    // A firewall belongs to the owner's namespace: refused.
    assert_fails(
        &env.run(&[
            "--net",
            &format!("container:{owner}"),
            "--allow-in",
            "80",
            "--",
            "true",
        ]),
        125,
        "--allow-in",
    );
    ok(&env.ctl(&["kill", &owner]));
    run.output_within(Duration::from_secs(10));
    assert!(!netns_entry(&owner).exists(), "registration left");
    env.assert_clean();
}

#[test]
fn direct_veth_pair_without_a_bridge() {
    require_root!();
    let (env, host, _outside) = net_env("ve", 12);
    let a = unique("vea");
    let run = env.spawn_run(&["--net", "none", "--name", &a, "--", "sleep", "60"]);
    env.wait_running(&a);
    // Allocated: the other container gets the /30's first address, this
    // one its second.
    assert_pings(
        &env,
        &["--net", &format!("veth:{a}")],
        "10.90.0.2/30",
        "10.90.0.1",
    );
    // No bridge anywhere: not in the runtime's namespace.
    let bridges = sh(&format!("ip -n {} -o link show type bridge", host.0));
    assert_eq!(bridges, "", "a bridge was made");
    // The other end was removed with the container that made it.
    assert_eq!(links_of(&a), "lo ");

    // Given: --ip for this end, the other end the subnet's first other host.
    let b = unique("veb");
    let b_run = env.spawn_run(&[
        "--net",
        &format!("veth:{a}"),
        "--ip",
        "10.233.4.6/29",
        "--name",
        &b,
        "--",
        "sleep",
        "60",
    ]);
    let c = env.wait_running(&b);
    assert_eq!(c["netns"]["link"]["kind"], "veth", "{c}");
    assert_eq!(c["netns"]["link"]["peer_if"], "eth0", "{c}");
    let in_a = sh(&format!("ip netns exec {a} ip -4 -o addr show eth0"));
    assert!(in_a.contains("inet 10.233.4.1/29"), "{in_a}");
    let ping = ok(&env.ctl(&["exec", &a, "--", "ping", "-c", "1", "-W", "3", "10.233.4.6"]));
    assert!(ping.contains("1 packets received"), "{ping}");
    ok(&env.ctl(&["kill", &b]));
    b_run.output_within(Duration::from_secs(10));
    assert_eq!(links_of(&a), "lo ", "the other end stayed");
    ok(&env.ctl(&["kill", &a]));
    run.output_within(Duration::from_secs(10));
    env.assert_clean();
}

/// A parent interface for macvlans in namespace `ns`: a dummy where the
/// kernel has the driver, else one end of a veth pair (this host's kernel
/// has no dummy driver; the other end stays unused).
fn macvlan_parent(ns: &str, name: &str) {
    let dummy = Command::new("ip")
        .args(["-n", ns, "link", "add", name, "type", "dummy"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    if !dummy.success() {
        sh(&format!(
            "ip -n {ns} link add {name} type veth peer name {name}p && ip -n {ns} link set {name}p up"
        ));
    }
    sh(&format!("ip -n {ns} link set {name} up"));
}

#[test]
fn macvlan_reaches_a_namespace_on_the_same_parent() {
    require_root!();
    let (env, host, _outside) = net_env("mv", 13);
    let parent = format!("uvmvp{}", std::process::id() % 100000);
    macvlan_parent(&host.0, &parent);
    // A namespace of the test's on the same parent.
    let peer = Netns::new(format!("uvmt-mv-p{}", std::process::id() % 10000));
    sh(&format!(
        "ip -n {h} link add mvpeer link {parent} type macvlan mode bridge && \
         ip -n {h} link set mvpeer netns {p} && \
         ip -n {p} addr add 10.232.13.1/24 dev mvpeer && ip -n {p} link set mvpeer up",
        h = host.0,
        p = peer.0
    ));
    let net = format!("macvlan:{parent}");
    let args = ["--net", &net, "--ip", "10.232.13.2/24"];
    assert_pings(&env, &args, "10.232.13.2/24", "10.232.13.1");
    // Nothing of it stays on the host.
    let links = sh(&format!("ip -n {} -o link show type macvlan", host.0));
    assert_eq!(links, "", "{links}");
    env.assert_clean();
}

#[test]
fn ns_path_joins_an_existing_namespace() {
    require_root!();
    let (env, _host, _outside) = net_env("ns", 14);
    let named = Netns::new(format!("uvmt-ns-n{}", std::process::id() % 10000));
    sh(&format!(
        "ip -n {} link add probe0 type veth peer name probe1",
        named.0
    ));
    for how in [
        format!("ns:{}", named.0),
        format!("ns:/run/netns/{}", named.0),
    ] {
        let out = env.run(&[
            "--net",
            &how,
            "--",
            "sh",
            "-c",
            "ls /sys/class/net | tr '\\n' ' '",
        ]);
        assert_eq!(ok(&out), "lo probe0 probe1 ", "{how}");
    }
    // Joined, never torn down.
    assert!(links_of(&named.0).contains("probe0"));
    env.assert_clean();
}

#[test]
fn bad_network_patterns_one_line_errors_nothing_left_behind() {
    require_root!();
    let (env, host, _outside) = net_env("nb", 15);
    let name = unique("nb");
    // A container that ran and ended is as unknown as one that never was.
    ok(&env.run(&["--net", "none", "--name", &name, "--", "true"]));
    let links_before = sh(&format!("ip -n {} -o link", host.0));
    let fresh = format!("{name}-new");
    let cases = [
        (format!("--net container:{name}"), "no such container"),
        ("--net container:nosuch".to_string(), "no such container"),
        ("--net veth:nosuch".to_string(), "no such container"),
        (
            "--net macvlan:nosuch0 --ip 10.232.15.2/24".to_string(),
            "no interface \"nosuch0\"",
        ),
        ("--net macvlan:lo".to_string(), "needs its address"),
        ("--allow-in 80/sctp".to_string(), "invalid --allow-in"),
        ("--allow-in 0".to_string(), "invalid --allow-in"),
        ("--allow-in http".to_string(), "invalid --allow-in"),
        ("--net host --allow-in 80".to_string(), "--allow-in"),
        ("--net ns:/run/netns/nosuch-uvm".to_string(), "no such file"),
        (
            "--net ns:/etc/hostname".to_string(),
            "not a network namespace",
        ),
        ("--net bogus:x".to_string(), "invalid --net"),
        ("--ip 10.1.1.1/24".to_string(), "--ip is for"),
        (
            format!("--net veth:{name}x --ip 10.1.1.0/24"),
            "invalid --ip",
        ),
    ];
    for (args, want) in &cases {
        let mut argv: Vec<&str> = vec!["--name", &fresh];
        argv.extend(args.split(' '));
        argv.extend(["--", "true"]);
        let out = env.run(&argv);
        assert_fails(&out, 125, want);
        assert!(!netns_entry(&fresh).exists(), "{args}: registration left");
        env.assert_clean();
    }
    assert_eq!(sh(&format!("ip -n {} -o link", host.0)), links_before);
}
