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

/// Set in the children [`run_child`] starts: the role to apply, what to
/// do under it, and the thread's name.
const CHILD_ENV: &str = "UVM_SECCOMP_TEST_CHILD";

/// Runs this test binary again, only [`child_under_a_filter`], which does
/// `action` in a thread named `thread` under `role`'s filter. Returns its
/// exit status and stderr.
fn run_child(role: &str, action: &str, thread: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "vmm::seccomp::tests::child_under_a_filter",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{role}:{action}:{thread}"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A call the filter forbids ends the process with [`EXIT_SECCOMP`] and a
/// line that names the thread and the call.
fn assert_stopped(role: &str, call: &str, thread: &str, line: &str) {
    let (status, err) = run_child(role, call, thread);
    assert_eq!(status, Some(EXIT_SECCOMP), "{role}/{call}: {err}");
    assert!(err.contains(line), "{err}");
}

/// What the filter must allow goes through: the child ends with 0.
fn assert_allowed(role: &str, action: &str, thread: &str) {
    let (status, err) = run_child(role, action, thread);
    assert!(!err.contains("uvm: seccomp"), "{role}/{action}: {err}");
    assert_eq!(status, Some(0), "{role}/{action}: {err}");
}

#[test]
fn forbidden_call_stops_the_process() {
    assert_stopped(
        "vcpu",
        "socket",
        "vcpu0",
        "uvm: seccomp: thread vcpu0 made system call socket (41), which its filter forbids",
    );
    assert_stopped(
        "event_loop",
        "execve",
        "event-loop",
        "thread event-loop made system call execve (59)",
    );
    assert_stopped(
        "control",
        "execve",
        "workload",
        "thread workload made system call execve (59)",
    );
    assert_stopped(
        "vcpu",
        "openat",
        "vcpu1",
        "thread vcpu1 made system call openat (257)",
    );
    assert_stopped(
        "control",
        "fork",
        "signals",
        "thread signals made system call clone (56)",
    );
}

/// What the thread that ends the VM does after it (see Vm::run, main.rs's
/// boot and the Drops it runs), under the control filter: stop and reap
/// a backend process, remove the VM's folder and vsock socket, read the
/// console log's tail, the deadline's report from /proc, the terminal's
/// mode, a thread's start and end, and the process's exit.
#[test]
fn the_control_filter_lets_the_vm_end_and_clean_up() {
    assert_allowed("control", "cleanup", "uvm");
}

/// The event loop serving virtio-vsock's host side: a program connects,
/// sends CONNECT and hangs up, and the device accepts, reads, arms its
/// timer and closes.
#[test]
fn the_event_loop_filter_lets_vsock_serve_the_host() {
    assert_allowed("event_loop", "vsock", "event-loop");
}

/// The event loop serving a rate-limited virtio-blk queue: a request the
/// bucket cannot pass arms the limiter's timer, whose firing serves it.
#[test]
fn the_event_loop_filter_lets_a_throttled_disk_wait_and_resume() {
    assert_allowed("event_loop", "throttled-disk", "event-loop");
}

/// A driver resets a throttled disk from a vCPU thread (its MMIO write of
/// 0 to Status): the limiter forgets its wait without a timerfd call,
/// which that filter would stop.
#[test]
fn the_vcpu_filter_lets_a_throttled_disk_be_reset() {
    assert_allowed("vcpu", "reset-throttled-disk", "vcpu0");
}

/// A virtio-blk device limited to 1 MiB/s in an event loop, its queue
/// holding a 1 MiB write (passes on the full bucket) and a 64 KiB one
/// (waits 62.5 ms). Returns the loop, the device and the memory.
type ThrottledDisk = (
    event_manager::EventManager<Subscriber>,
    std::sync::Arc<std::sync::Mutex<uvm_devices::virtio::block::Block>>,
    uvm_devices::virtio::Memory,
);

const DESC: u32 = 0x1000;
const AVAIL: u32 = 0x2000;
const USED: u32 = 0x3000;

fn throttled_disk() -> ThrottledDisk {
    use event_manager::SubscriberOps;
    use uvm_devices::rate_limiter::{BucketConfig, RateLimiterConfig};
    use uvm_devices::virtio::block::{Block, BlockConfig};
    use uvm_devices::virtio::{IrqTrigger, VirtioDevice};
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    let img = std::env::temp_dir().join(format!("uvm-seccomp-disk-{}", std::process::id()));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let mut blk = Block::new(BlockConfig {
        path: img.clone(),
        read_only: false,
        id: None,
        rate_limit: RateLimiterConfig {
            bandwidth: Some(BucketConfig::per_second(1 << 20, 0)),
            ops: None,
        },
    })
    .unwrap();
    // The device holds the file open; nothing is left to remove later,
    // under a filter that may not allow it.
    std::fs::remove_file(&img).unwrap();
    let mem = uvm_devices::virtio::Memory::from_ranges(&[(GuestAddress(0), 3 << 20)]).unwrap();
    let (desc, avail) = (u64::from(DESC), u64::from(AVAIL));
    let put = |at: u64, v: &[u8]| mem.write_slice(v, GuestAddress(at)).unwrap();
    // Two OUT requests: header, data, status, as descriptors 0-2 and 3-5.
    for ((hdr, data, len, sector), i) in [
        (0x4000u64, 0x10_0000u64, 1u32 << 20, 0u64),
        (0x4100, 0x2_0000, 64 << 10, 2048),
    ]
    .into_iter()
    .zip(0u16..)
    {
        put(hdr, &1u32.to_le_bytes());
        put(hdr + 8, &sector.to_le_bytes());
        let first = 3 * i;
        for ((addr, l, flags), k) in [(hdr, 16u32, 1u16), (data, len, 1), (hdr + 16, 1, 2)]
            .into_iter()
            .zip(0u16..)
        {
            let at = desc + 16 * u64::from(first + k);
            put(at, &addr.to_le_bytes());
            put(at + 8, &l.to_le_bytes());
            put(at + 12, &flags.to_le_bytes());
            put(at + 14, &(first + k + 1).to_le_bytes());
        }
        put(avail + 4 + 2 * u64::from(i), &first.to_le_bytes());
    }
    put(avail + 2, &2u16.to_le_bytes());
    let mut q = virtio_queue::Queue::new(16).unwrap();
    q.set_desc_table_address(Some(DESC), Some(0));
    q.set_avail_ring_address(Some(AVAIL), Some(0));
    q.set_used_ring_address(Some(USED), Some(0));
    q.set_ready(true);
    blk.activate(mem.clone(), 1 << 32, vec![q], IrqTrigger::new().unwrap())
        .unwrap();
    let blk = std::sync::Arc::new(std::sync::Mutex::new(blk));
    let mut events = event_manager::EventManager::<Subscriber>::new().unwrap();
    events.add_subscriber(blk.clone());
    (events, blk, mem)
}

fn used_idx(mem: &uvm_devices::virtio::Memory) -> u16 {
    use vm_memory::Bytes;
    mem.read_obj(vm_memory::GuestAddress(u64::from(USED) + 2))
        .unwrap()
}

/// Everything the cleanup action needs set up beforehand, as Vm::run's
/// caller has it: a folder with a log and a socket, a child process.
struct Leftovers {
    dir: std::path::PathBuf,
    child: std::process::Child,
}

fn leftovers() -> Leftovers {
    let dir = std::env::temp_dir().join(format!("uvm-seccomp-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("console.log"), "one\r\ntwo\r\n").unwrap();
    std::fs::write(dir.join("sub/file"), "x").unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.join("vsock.sock")).unwrap());
    let child = Command::new("sleep").arg("30").spawn().unwrap();
    Leftovers { dir, child }
}

fn clean_up(mut l: Leftovers) {
    use std::io::IsTerminal;
    eprintln!("cleaning up");
    assert_eq!(crate::run::vm::tail(&l.dir.join("console.log"), 1), "two");
    let sock = l.dir.join("vsock.sock");
    assert!(sock.symlink_metadata().is_ok());
    std::fs::remove_file(&sock).unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(l.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    while l.child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = l.child.kill();
    let _ = l.child.wait();
    std::fs::remove_dir_all(&l.dir).unwrap();
    assert!(crate::vmm::shutdown::thread_states().contains("uvm"));
    let _ = std::io::stdin().is_terminal();
    std::thread::spawn(|| eprintln!("a thread")).join().unwrap();
    std::process::exit(0);
}

type Subscriber = std::sync::Arc<std::sync::Mutex<dyn event_manager::MutEventSubscriber + Send>>;

/// A virtio-vsock device in an event loop, and a host program that
/// connects to it, as Vm::run's caller sets them up.
fn vsock_loop() -> (event_manager::EventManager<Subscriber>, std::path::PathBuf) {
    use event_manager::SubscriberOps;
    use std::io::Write;
    use uvm_devices::virtio::vsock::{Vsock, VsockConfig};
    let uds = std::env::temp_dir().join(format!("uvm-seccomp-test-{}.sock", std::process::id()));
    let vsock = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    })
    .unwrap();
    let mut events = event_manager::EventManager::<Subscriber>::new().unwrap();
    events.add_subscriber(std::sync::Arc::new(std::sync::Mutex::new(vsock)));
    let path = uds.clone();
    std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.write_all(b"CONNECT 52\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    (events, uds)
}

/// Only does something in the children [`run_child`] starts.
#[test]
fn child_under_a_filter() {
    let Ok(what) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = what.split(':').map(str::to_string);
    let (role, action, thread) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let role = Role::ALL.into_iter().find(|r| r.name() == role).unwrap();
    // Set up unfiltered, as the threads' creator does.
    let mut cleanup = (action == "cleanup").then(leftovers);
    let mut vsock = (action == "vsock").then(vsock_loop);
    let mut disk = action.ends_with("throttled-disk").then(throttled_disk);
    if let (Some((_, blk, mem)), true) = (&disk, action == "reset-throttled-disk") {
        // Throttled on the event loop before the vCPU resets it.
        blk.lock().unwrap().process_queue();
        assert_eq!(used_idx(mem), 1);
        assert_eq!(
            blk.lock().unwrap().rate_limit_counters().unwrap().throttled,
            1
        );
    }
    let t = std::thread::Builder::new()
        .name(thread)
        .spawn(move || {
            apply(role, true).unwrap();
            match action.as_str() {
                "socket" => {
                    let _ = std::os::unix::net::UnixDatagram::unbound();
                }
                "execve" => {
                    let _ = nix::unistd::execv(c"/bin/true", &[c"true"]);
                }
                "openat" => {
                    let _ = std::fs::File::open("/etc/hostname");
                }
                "fork" => {
                    // SAFETY: the child would only _exit; the filter stops
                    // the call before there is a child.
                    if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                        // SAFETY: ends the child at once.
                        unsafe { libc::_exit(0) }
                    }
                }
                "cleanup" => clean_up(cleanup.take().unwrap()),
                "throttled-disk" => {
                    let (mut events, blk, mem) = disk.take().unwrap();
                    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
                    while used_idx(&mem) < 2 && std::time::Instant::now() < until {
                        events.run_with_timeout(50).unwrap();
                    }
                    let served = used_idx(&mem) == 2;
                    let throttled = blk.lock().unwrap().rate_limit_counters().unwrap().throttled;
                    std::process::exit(if served && throttled == 1 { 0 } else { 1 });
                }
                "reset-throttled-disk" => {
                    let (_events, blk, _mem) = disk.take().unwrap();
                    uvm_devices::virtio::VirtioDevice::reset(&mut *blk.lock().unwrap());
                    std::process::exit(0);
                }
                "vsock" => {
                    let (events, _) = vsock.as_mut().unwrap();
                    let until = std::time::Instant::now() + std::time::Duration::from_millis(600);
                    while std::time::Instant::now() < until {
                        events.run_with_timeout(50).unwrap();
                    }
                    // The device is dropped (and its socket removed) by
                    // the control thread, as in Vm::run.
                    return vsock;
                }
                other => panic!("no such action in this test: {other}"),
            }
            None
        })
        .unwrap();
    if let Ok(Some((events, uds))) = t.join() {
        drop(events);
        assert!(!uds.exists(), "the device removes its socket");
        std::process::exit(0);
    }
    // The filter let a forbidden call through.
    std::process::exit(1);
}
