//! Detached containers and the rest of the lifecycle, end to end through
//! `uvm-container` as root: `run -d` under a monitor, `logs [-f]`, `stop`
//! (TERM, grace period, KILL), `start` again with the upper directory
//! kept, `inspect`, `rm`, `--restart on-failure:N`, the workload flags
//! seen from inside, a `-it` terminal under tmux, and bad input. Each test
//! runs its runtime in a scratch network namespace of its own (the bridge
//! and its NAT live there) and checks that nothing is left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{assert_fails, ok, rootfs, text};

const BIN: &str = env!("CARGO_BIN_EXE_uvm-container");

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lifecycle tests need root"
    );
}

/// One test's runtime: a state root, a cgroup parent and a network
/// namespace (standing in for the host) of its own.
struct Life {
    root: PathBuf,
    cgroup_parent: String,
    netns: String,
}

impl Life {
    fn new(tag: &str) -> Life {
        require_root();
        let pid = std::process::id();
        let netns = format!("ltns{tag}{pid}");
        let out = Command::new("ip")
            .args(["netns", "add", &netns])
            .output()
            .unwrap();
        ok(&out);
        Life {
            root: tmp().join(format!("life-{tag}-{pid}")),
            cgroup_parent: format!("uvm-test-life-{tag}-{pid}"),
            netns,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(BIN)
            .arg("--root")
            .arg(&self.root)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(["--bridge", "uvlt0", "--subnet", "10.213.0.0/24"]);
        c
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `run --rootfs ROOTFS ARGS` (ARGS end with `-- CMD`).
    fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .arg("run")
            .arg("--rootfs")
            .arg(rootfs())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `run -d --name NAME --net none FLAGS -- sh -c SCRIPT`, which must start.
    fn detach(&self, name: &str, flags: &[&str], script: &str) {
        let mut a = vec!["-d", "--name", name, "--net", "none"];
        a.extend_from_slice(flags);
        a.extend(["--", "sh", "-c", script]);
        assert_eq!(ok(&self.run(&a)).trim(), name);
    }

    fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&ok(&self.ctl(&["inspect", name]))).unwrap()
    }

    fn logs(&self, name: &str) -> String {
        ok(&self.ctl(&["logs", name]))
    }

    /// Waits until `cond` holds for the container's logs.
    fn wait_logs(&self, name: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = self.logs(name);
            if cond(&l) {
                return l;
            }
            assert!(Instant::now() < deadline, "logs of {name} so far: {l:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until its monitor has ended (status exited).
    fn wait_exited(&self, name: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.inspect(name);
            if v["status"] == "exited" {
                return v;
            }
            assert!(Instant::now() < deadline, "{name} did not end: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// No record, running state, overlay, cgroup, netns entry or mount left.
    fn assert_clean(&self, names: &[&str]) {
        for sub in ["containers", "lifecycle", "overlay"] {
            let left: Vec<_> = std::fs::read_dir(self.root.join(sub))
                .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{sub} left: {left:?}");
        }
        common::assert_no_cgroups(&self.cgroup_parent);
        for n in names {
            assert!(
                !Path::new("/run/netns").join(n).exists(),
                "netns entry {n} left"
            );
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root.to_str().unwrap();
        assert!(!mounts.contains(root), "mounts left under {root}");
    }
}

impl Drop for Life {
    fn drop(&mut self) {
        // After a failed test: monitors killed, then the runtime's gc.
        for e in std::fs::read_dir(self.root.join("lifecycle"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = self.ctl(&["rm", "-f", &e.file_name().to_string_lossy()]);
        }
        let _ = self.ctl(&["gc"]);
        common::remove_cgroup_parent(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn detached_run_logs_stop_start_inspect_rm() {
    let life = Life::new("d");
    let name = format!("ltd{}", std::process::id());
    // Traps TERM (and says so); counts its starts in a file of its rootfs.
    let script = "echo start $FOO $(pwd) >> /starts; cat /starts; \
                  trap 'echo got TERM; exit 0' TERM; while :; do sleep 0.1; done";
    let t = Instant::now();
    let out = life.run(&[
        "-d",
        "--name",
        &name,
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "-e",
        "FOO=bar",
        "-w",
        "/work",
        "--",
        "sh",
        "-c",
        script,
    ]);
    // The command returns at once, the container running on without it.
    assert_eq!(ok(&out).trim(), name);
    assert!(t.elapsed() < Duration::from_secs(10));
    let l = life.wait_logs(&name, |l| l.contains("start bar /work"));
    assert_eq!(l, "start bar /work\n");

    let v = life.inspect(&name);
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["detached"], true);
    let pid = v["pid"].as_i64().unwrap();
    assert!(alive(pid));
    assert!(alive(v["monitor_pid"].as_i64().unwrap()));
    assert_eq!(v["restart_policy"], "no");
    assert_eq!(v["restart_count"], 0);
    assert_eq!(v["limits"]["memory"], 64 << 20);
    assert_eq!(v["limits"]["pids_limit"], 50);
    assert_eq!(v["command"], serde_json::json!(["sh", "-c", script]));
    assert_eq!(
        v["config"]["workload"]["env"],
        serde_json::json!(["FOO=bar"])
    );
    assert_eq!(v["network"]["mode"], "bridge");
    let addr = v["network"]["addresses"][0].as_str().unwrap();
    assert!(
        addr.starts_with("10.213.0.") && addr.ends_with("/24"),
        "{v}"
    );
    assert_eq!(v["network"]["netns"], format!("/run/netns/{name}"));
    assert_eq!(v["cgroup"]["version"], 1);
    let memcg = v["cgroup"]["dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
        .unwrap();
    let procs = std::fs::read_to_string(memcg.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");
    assert_eq!(
        std::fs::read_to_string(memcg.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        v["log_path"],
        life.root
            .join("lifecycle")
            .join(&name)
            .join("log")
            .to_str()
            .unwrap()
    );
    let ps: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&life.ctl(&["ps", "--json"]))).unwrap();
    assert!(ps
        .iter()
        .any(|c| c["name"] == *name && c["status"] == "running"));

    // Bad input against it: already running.
    assert_fails(&life.ctl(&["start", &name]), 125, "already running");
    assert_fails(&life.ctl(&["rm", &name]), 125, "is running");

    // It traps TERM: stopped well within the grace period.
    let t = Instant::now();
    ok(&life.ctl(&["stop", "-t", "8", &name]));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "stop took {took:?}");
    assert!(!alive(pid));
    assert!(life.logs(&name).ends_with("got TERM\n"));
    let v = life.inspect(&name);
    assert_eq!(v["status"], "exited");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["pid"], serde_json::Value::Null);
    assert!(!memcg.exists(), "cgroup left while stopped");
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert_fails(&life.ctl(&["stop", &name]), 125, "is not running");
    let ps: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&life.ctl(&["ps", "--json"]))).unwrap();
    assert!(ps
        .iter()
        .any(|c| c["name"] == *name && c["status"] == "exited" && c["exit_code"] == 0));

    // Started again: same flags, and its upper directory as it was left.
    ok(&life.ctl(&["start", &name]));
    life.wait_logs(&name, |l| l.contains("start bar /work\nstart bar /work\n"));
    let v = life.inspect(&name);
    assert_eq!(v["status"], "running");
    let pid2 = v["pid"].as_i64().unwrap();
    assert_ne!(pid2, pid);

    // One that ignores TERM is killed at the end of the grace period.
    let stubborn = format!("lts{}", std::process::id());
    life.detach(
        &stubborn,
        &[],
        "trap '' TERM; echo up; while :; do sleep 0.1; done",
    );
    life.wait_logs(&stubborn, |l| l == "up\n");
    let t = Instant::now();
    ok(&life.ctl(&["stop", "-t", "2", &stubborn]));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "stop took {took:?}"
    );
    let v = life.inspect(&stubborn);
    assert_eq!(v["exit_code"], 128 + 9, "{v}");

    // rm: refused while running, -f kills; everything goes.
    ok(&life.ctl(&["rm", &stubborn]));
    ok(&life.ctl(&["rm", "-f", &name]));
    assert!(!alive(pid2));
    assert_fails(&life.ctl(&["inspect", &name]), 125, "no such container");
    life.assert_clean(&[&name, &stubborn]);
}

#[test]
fn logs_follow_until_the_container_ends() {
    let life = Life::new("f");
    let name = format!("ltf{}", std::process::id());
    life.detach(
        &name,
        &[],
        "for i in 1 2 3; do echo line $i; echo err $i >&2; sleep 0.3; done",
    );
    let t = Instant::now();
    let out = life.ctl(&["logs", "-f", &name]);
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(
        ok(&out),
        "line 1\nerr 1\nline 2\nerr 2\nline 3\nerr 3\n",
        "stdout and stderr, in order, to the end"
    );
    assert_eq!(life.inspect(&name)["status"], "exited");
    ok(&life.ctl(&["rm", &name]));
    life.assert_clean(&[&name]);
}

#[test]
fn restart_on_failure_restarts_exactly_n_times() {
    let life = Life::new("r");
    let name = format!("ltr{}", std::process::id());
    life.detach(
        &name,
        &["--restart", "on-failure:2"],
        "echo attempt; exit 3",
    );
    let v = life.wait_exited(&name);
    assert_eq!(v["restart_count"], 2, "{v}");
    assert_eq!(v["restart_policy"], "on-failure:2");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(life.logs(&name), "attempt\n".repeat(3));
    ok(&life.ctl(&["rm", &name]));

    // A success is not restarted.
    let fine = format!("ltg{}", std::process::id());
    life.detach(&fine, &["--restart", "on-failure"], "echo once");
    let v = life.wait_exited(&fine);
    assert_eq!(v["restart_count"], 0, "{v}");
    assert_eq!(v["exit_code"], 0, "{v} {}", life.logs(&fine));
    assert_eq!(life.logs(&fine), "once\n");
    ok(&life.ctl(&["rm", &fine]));
    life.assert_clean(&[&name, &fine]);
}

#[test]
fn env_workdir_user_read_only_and_tmpfs_seen_from_inside() {
    let life = Life::new("w");
    let out = life.run(&[
        "--net",
        "none",
        "-e",
        "A=1",
        "-e",
        "B=two words",
        "--workdir",
        "/scratch",
        "--user",
        "65534:65533",
        "--read-only",
        "--tmpfs",
        "/scratch:size=1m,mode=0700,uid=65534,gid=65533",
        "--",
        "sh",
        "-c",
        "echo $A $B; pwd; id -u; id -g; touch /x 2>/dev/null || echo root-ro; \
         echo hi > /scratch/f && cat /scratch/f; grep ' /scratch ' /proc/mounts; \
         grep ' / ' /proc/mounts | tail -1",
    ]);
    let s = ok(&out);
    let l: Vec<&str> = s.lines().collect();
    assert_eq!(
        &l[..6],
        &["1 two words", "/scratch", "65534", "65533", "root-ro", "hi"],
        "{s}"
    );
    let tmpfs: Vec<&str> = l[6].split_whitespace().collect();
    assert_eq!(&tmpfs[..3], &["tmpfs", "/scratch", "tmpfs"], "{s}");
    for o in [
        "rw",
        "nosuid",
        "nodev",
        "noexec",
        "size=1024k",
        "mode=700",
        "uid=65534",
        "gid=65533",
    ] {
        assert!(tmpfs[3].split(',').any(|x| x == o), "{o} not in {s}");
    }
    let root: Vec<&str> = l[7].split_whitespace().collect();
    assert!(root[3].split(',').any(|x| x == "ro"), "{s}");
    life.assert_clean(&[]);
}

#[test]
fn bad_input_one_line_errors_nothing_left_behind() {
    let life = Life::new("b");
    for cmd in [
        &["stop", "nosuch"][..],
        &["start", "nosuch"],
        &["logs", "nosuch"],
        &["logs", "-f", "nosuch"],
        &["rm", "nosuch"],
        &["inspect", "nosuch"],
    ] {
        assert_fails(&life.ctl(cmd), 125, "no such container \"nosuch\"");
    }
    let name = format!("ltb{}", std::process::id());
    for (args, needle) in [
        (&["-d", "-u", "nosuchuser"][..], "no user \"nosuchuser\""),
        (&["-d", "-u", "1:nosuchgroup"], "no group \"nosuchgroup\""),
        (&["-d", "--restart", "always"], "invalid --restart"),
        (&["-d", "--restart", "on-failure:0"], "invalid --restart"),
        (&["--restart", "on-failure:2"], "needs -d"),
        (&["-d", "--tmpfs", "relative"], "invalid --tmpfs"),
        (&["-d", "--tmpfs", "/t:size=lots"], "invalid --tmpfs"),
        (&["-d", "--tmpfs", "/t:bogus"], "invalid --tmpfs"),
        (&["-d", "-t"], "leave out -d or -t"),
        (&["-t"], "stdin is not a terminal"),
    ] {
        let mut a = vec!["--name", &name, "--net", "none"];
        a.extend_from_slice(args);
        a.extend(["--", "true"]);
        assert_fails(&life.run(&a), 125, needle);
    }
    // A command that is not there: run -d says so, as run does.
    let mut a = vec!["-d", "--name", &name, "--net", "none", "--", "/nonexistent"];
    assert_fails(&life.run(&a), 127, "command not found");
    // The name stays usable after each refusal.
    a.truncate(5);
    a.extend(["--", "true"]);
    assert_eq!(ok(&life.run(&a)).trim(), name);
    life.wait_exited(&name);
    assert_fails(
        &life.run(&["-d", "--name", &name, "--net", "none", "--", "true"]),
        125,
        "already in use",
    );
    ok(&life.ctl(&["rm", &name]));
    life.assert_clean(&[&name]);
}

/// A command line for a shell (each argument in single quotes).
fn quoted(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| format!("'{}'", a.to_str().unwrap()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `-it` shell under tmux: it sees tmux's window size and a resize, has
/// job control (a Ctrl-Z'd job is Stopped), and the caller's terminal is
/// back in canonical mode afterwards; closing the window ends it.
#[test]
fn tty_under_tmux_window_size_job_control() {
    let life = Life::new("t");
    let sock = format!("uvm-lt-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-L")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap()
    };
    let mut inner = life.cmd();
    inner
        .args(["run", "-it", "--rootfs"])
        .arg(rootfs())
        .args(["--net", "none", "--", "sh"]);
    let shell_line = format!(
        "{} ; echo EXITED $?; stty -a | grep -o -- ' -*icanon '; sleep 60",
        quoted(&inner)
    );
    ok(&tmux(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "91",
        "-y",
        "27",
        &shell_line,
    ]));
    struct Kill<F: Fn(&[&str]) -> Output>(F);
    impl<F: Fn(&[&str]) -> Output> Drop for Kill<F> {
        fn drop(&mut self) {
            (self.0)(&["kill-server"]);
        }
    }
    let tmux = Kill(tmux);
    let pane = || text(&(tmux.0)(&["capture-pane", "-p", "-t", "t"]).stdout);
    let wait_pane = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let p = pane();
            if p.contains(what) {
                return p;
            }
            assert!(Instant::now() < deadline, "{what:?} not on the pane:\n{p}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let keys = |k: &[&str]| {
        let mut a = vec!["send-keys", "-t", "t"];
        a.extend_from_slice(k);
        ok(&(tmux.0)(&a));
    };
    wait_pane("/ #");
    keys(&["echo pid $$; stty size", "Enter"]);
    wait_pane("27 91");
    assert!(pane().contains("pid 1"), "{}", pane());
    keys(&["sleep 50", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    keys(&["C-z"]);
    wait_pane("Stopped");
    keys(&["jobs; echo jobs-done", "Enter"]);
    let p = wait_pane("jobs-done\n");
    assert!(p.contains("[1]+  Stopped"), "{p}");
    ok(&(tmux.0)(&[
        "resize-window",
        "-t",
        "t",
        "-x",
        "100",
        "-y",
        "30",
    ]));
    std::thread::sleep(Duration::from_millis(300));
    keys(&["stty size", "Enter"]);
    wait_pane("30 100");
    // Back to the foreground, then interrupted from the keyboard.
    keys(&["fg", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    keys(&["C-c"]);
    keys(&["echo back-$((1+1)); jobs", "Enter"]);
    let p = wait_pane("back-2\n");
    assert!(
        !p.split("back-2").nth(1).unwrap().contains("Stopped"),
        "{p}"
    );
    keys(&["exit 4", "Enter"]);
    wait_pane("EXITED 4");
    // The caller's `stty -a` after it: icanon, or -icanon if still raw.
    let p = wait_pane("icanon");
    let after = p.split("EXITED 4").nth(1).unwrap();
    assert!(
        after.lines().any(|l| l.trim() == "icanon"),
        "the caller's terminal was not restored: {p}"
    );
    life.assert_clean(&[]);

    // The caller's window closes: the container's terminal hangs up and
    // its shell ends, the runtime with it.
    let mut inner = life.cmd();
    inner
        .args(["run", "-it", "--rootfs"])
        .arg(rootfs())
        .args(["--net", "none", "--", "sh"]);
    ok(&(tmux.0)(&[
        "new-session",
        "-d",
        "-s",
        "h",
        &quoted(&inner),
    ]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text(&(tmux.0)(&["capture-pane", "-p", "-t", "h"]).stdout).contains("/ #") {
        assert!(Instant::now() < deadline, "no prompt in the second window");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&(tmux.0)(&["kill-session", "-t", "h"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while life
        .root
        .join("containers")
        .read_dir()
        .unwrap()
        .next()
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the container outlived its closed window"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    life.assert_clean(&[]);
}
