use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use super::*;

/// The JSON of `role`'s filter, as checked in.
fn source(role: Role) -> &'static str {
    match role {
        Role::Vcpu => include_str!("../../../resources/seccomp/vcpu.json"),
        Role::EventLoop => include_str!("../../../resources/seccomp/event_loop.json"),
        Role::Control => include_str!("../../../resources/seccomp/control.json"),
    }
}

/// `role`'s rules, as JSON objects.
fn rules(role: Role) -> Vec<Value> {
    let doc: Value = serde_json::from_str(source(role)).unwrap();
    let top = doc.as_object().unwrap();
    assert_eq!(
        top.keys().collect::<Vec<_>>(),
        [role.name()],
        "{}.json holds exactly its own filter",
        role.name()
    );
    let filter = &top[role.name()];
    assert_eq!(filter["mismatch_action"], "trap", "{}", role.name());
    assert_eq!(filter["match_action"], "allow", "{}", role.name());
    filter["filter"].as_array().unwrap().clone()
}

fn comment_of(v: &Value) -> &str {
    v.get("comment").and_then(Value::as_str).unwrap_or_default()
}

/// The values an argument condition of `syscall` compares argument
/// `index` with, in `role`'s filter.
fn arg_values(role: Role, syscall: &str, index: u64) -> Vec<u64> {
    rules(role)
        .iter()
        .filter(|r| r["syscall"] == syscall)
        .flat_map(|r| r["args"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"] == index)
        .map(|c| c["val"].as_u64().unwrap())
        .collect()
}

#[test]
fn every_filter_compiles_to_what_the_build_embedded() {
    for role in Role::ALL {
        let map = seccompiler::compile_from_json(
            source(role).as_bytes(),
            seccompiler::TargetArch::x86_64,
        )
        .unwrap_or_else(|e| panic!("{}.json: {e}", role.name()));
        assert_eq!(map[role.name()], role.program(), "{}", role.name());
        assert!(role.program().len() < 4096, "BPF_MAXINSNS");
    }
}

#[test]
fn every_rule_and_every_condition_says_why() {
    for role in Role::ALL {
        for rule in rules(role) {
            let what = format!("{}: {}", role.name(), rule["syscall"]);
            assert!(comment_of(&rule).len() > 3, "{what} has no comment");
            for c in rule["args"].as_array().into_iter().flatten() {
                assert!(
                    !comment_of(c).is_empty(),
                    "{what}: a condition has no comment"
                );
            }
        }
    }
}

/// seccompiler merges a filter's rules by system call, and a rule without
/// conditions adds nothing to one with conditions: the call would then be
/// allowed only under the conditions, silently. So a call is either
/// allowed outright, once, or only under conditions.
#[test]
fn no_call_is_allowed_both_outright_and_under_conditions() {
    for role in Role::ALL {
        let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for rule in rules(role) {
            let e = seen
                .entry(rule["syscall"].as_str().unwrap().to_string())
                .or_default();
            match rule.get("args") {
                Some(_) => e.1 += 1,
                None => e.0 += 1,
            }
        }
        for (call, (plain, conditional)) in seen {
            assert!(
                (plain == 1 && conditional == 0) || (plain == 0 && conditional > 0),
                "{}: {call} is allowed outright {plain} times and under conditions {conditional} times",
                role.name()
            );
        }
    }
}

#[test]
fn the_sigsys_handler_can_name_every_allowed_call() {
    let known: Vec<&str> = names::all().collect();
    for role in Role::ALL {
        for rule in rules(role) {
            let call = rule["syscall"].as_str().unwrap();
            assert!(known.contains(&call), "{}: {call}", role.name());
        }
    }
    assert_eq!(names::name(libc::SYS_socket), Some("socket"));
    assert_eq!(names::name(libc::SYS_execve), Some("execve"));
    assert_eq!(names::name(libc::SYS_ioctl), Some("ioctl"));
    assert_eq!(names::name(100_000), None);
}

/// What the handler and a thread's own start and end need is in every
/// filter: the handler writes, reads its thread's name and exits; a
/// thread ends with sigaltstack, munmap and exit.
#[test]
fn every_filter_lets_the_handler_and_thread_exit_run() {
    for role in Role::ALL {
        let calls: Vec<String> = rules(role)
            .iter()
            .map(|r| r["syscall"].as_str().unwrap().to_string())
            .collect();
        for need in [
            "write",
            "prctl",
            "getpid",
            "gettid",
            "exit_group",
            "exit",
            "sigaltstack",
            "munmap",
            "futex",
            "rt_sigreturn",
        ] {
            assert!(calls.iter().any(|c| c == need), "{}: {need}", role.name());
        }
        assert!(
            arg_values(role, "prctl", 0).contains(&u64::try_from(libc::PR_GET_NAME).unwrap()),
            "{}: prctl(PR_GET_NAME)",
            role.name()
        );
    }
}

/// The ioctls the vCPU filter allows are the ones kvm-ioctls and the tap
/// issue on a vCPU thread, by their numbers as those crates compute them.
#[test]
fn the_vcpu_ioctls_are_the_ones_vcpu_threads_issue() {
    use kvm_bindings::{kvm_regs, kvm_sregs, KVMIO};
    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    let mut want = vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        libc::TUNSETOFFLOAD,
    ];
    want.sort_unstable();
    let mut got = arg_values(Role::Vcpu, "ioctl", 1);
    got.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(arg_values(Role::EventLoop, "ioctl", 1), [libc::FIONBIO]);
    let mut terminal = arg_values(Role::Control, "ioctl", 1);
    terminal.sort_unstable();
    assert_eq!(terminal, [libc::TCGETS, libc::TCSETS]);
}

/// The control thread kicks vCPUs with the signal vcpu.rs uses.
#[test]
fn the_control_filter_lets_the_vcpu_kick_through() {
    let sigs = arg_values(Role::Control, "tgkill", 2);
    let kick = u64::try_from(crate::vmm::vcpu::kick_signal()).unwrap();
    assert!(sigs.contains(&kick), "{sigs:?} lacks {kick}");
}

#[test]
fn the_sigsys_line_names_thread_and_call() {
    let mut name = [0u8; 16];
    name[..5].copy_from_slice(b"vcpu0");
    let line = sigsys_line(&name, false, SYS_SECCOMP, libc::SYS_socket);
    let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
    assert_eq!(
        text,
        "uvm: seccomp: thread vcpu0 made system call socket (41), which its filter \
         forbids; uvm stops (--no-seccomp runs without filters)\n"
    );
    let line = sigsys_line(b"uvm\0", true, SYS_SECCOMP, 9999);
    let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
    assert!(
        text.contains("thread uvm (the main thread) made system call unknown (9999)"),
        "{text}"
    );
    let line = sigsys_line(b"uvm\0", true, 0, 0);
    assert!(line.buf[..line.len].starts_with(b"uvm: stopped by a SIGSYS that no seccomp"));
}

/// Set in the child that [`forbidden_call_stops_the_process`] starts: the
/// role to apply and the call to make.
const CHILD_ENV: &str = "UVM_SECCOMP_TEST_CHILD";

/// In a child process (this test binary again, running only
/// [`child_breaks_its_filter`]), a thread under `role`'s filter makes a
/// call the filter forbids: the child must end with [`EXIT_SECCOMP`] and
/// say which thread and which call. Returns its stderr.
fn run_child(role: &str, call: &str, thread: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "vmm::seccomp::tests::child_breaks_its_filter",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{role}:{call}:{thread}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(EXIT_SECCOMP),
        "{role}/{call}: {:?}, stderr: {stderr}",
        out.status
    );
    stderr
}

#[test]
fn forbidden_call_stops_the_process() {
    let err = run_child("vcpu", "socket", "vcpu0");
    assert!(
        err.contains(
            "uvm: seccomp: thread vcpu0 made system call socket (41), which its filter forbids"
        ),
        "{err}"
    );
    let err = run_child("event_loop", "execve", "event-loop");
    assert!(
        err.contains("thread event-loop made system call execve (59)"),
        "{err}"
    );
    let err = run_child("control", "execve", "workload");
    assert!(
        err.contains("thread workload made system call execve (59)"),
        "{err}"
    );
    let err = run_child("vcpu", "openat", "vcpu1");
    assert!(
        err.contains("thread vcpu1 made system call openat (257)"),
        "{err}"
    );
}

/// Only does something in the child [`run_child`] starts.
#[test]
fn child_breaks_its_filter() {
    let Ok(what) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = what.split(':').map(str::to_string);
    let (role, call, thread) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let role = Role::ALL.into_iter().find(|r| r.name() == role).unwrap();
    let t = std::thread::Builder::new()
        .name(thread)
        .spawn(move || {
            apply(role, true).unwrap();
            match call.as_str() {
                "socket" => {
                    let _ = std::os::unix::net::UnixDatagram::unbound();
                }
                "execve" => {
                    let _ = nix::unistd::execv(c"/bin/true", &[c"true"]);
                }
                "openat" => {
                    let _ = std::fs::File::open("/etc/hostname");
                }
                other => panic!("no such call in this test: {other}"),
            }
        })
        .unwrap();
    let _ = t.join();
    // The filter let the call through: not what the parent expects.
    std::process::exit(0);
}
