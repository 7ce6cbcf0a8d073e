//! Starting the container's processes.
//!
//! The runtime forks a first child which joins the container's cgroup and
//! unshares the namespaces; because a new pid namespace applies to children
//! only, that child forks the container's PID 1 and exits. The runtime is a
//! child subreaper, so PID 1 becomes its child and its exit status is
//! reported exactly. PID 1 waits for the runtime's go-ahead (its veth is in
//! place by then), builds its filesystem, drops privileges and execs the
//! workload. A SOCK_SEQPACKET pair carries the handshake; errors before
//! exec travel back on it, and its close-on-exec end reads EOF on success.
//!
//! The runtime may be multi-threaded (a test harness): children are made
//! with fork(2), after which glibc keeps malloc usable, and never touch
//! locks another thread could have held (stdio, environment).

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult, Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};
use seccompiler::BpfProgram;

use super::cgroups::Cgroup;
use super::error::{Error, Result};
use super::rootfs::{self, RootfsPlan};
use super::spec::NetConfig;
use super::userns::{self, IdMap};

/// Default PATH when the process environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Makes the calling process a child subreaper (idempotent).
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(Error::io(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn send(fd: BorrowedFd, msg: &[u8]) -> Result<()> {
    socket::send(fd.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL)
        .map(drop)
        .map_err(|e| Error::sys("sync socket send", e))
}

/// One message; empty when the peer closed.
fn recv(fd: BorrowedFd) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("sync socket receive", e)),
        }
    }
}

/// Errors cross the socket as a kind byte and text.
pub(crate) fn encode_err(e: &Error) -> Vec<u8> {
    let mut v = vec![b'E'];
    match e {
        Error::CommandNotFound(cmd) => {
            v.push(b'N');
            v.extend(cmd.as_bytes());
        }
        Error::NotExecutable { cmd, reason } => {
            v.push(b'X');
            v.extend(cmd.as_bytes());
            v.push(0);
            v.extend(reason.as_bytes());
        }
        other => {
            v.push(b'S');
            v.extend(other.to_string().as_bytes());
        }
    }
    v
}

pub(crate) fn decode_err(msg: &[u8]) -> Error {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match msg.get(1) {
        Some(b'N') => Error::CommandNotFound(text(&msg[2..])),
        Some(b'X') => {
            let rest = &msg[2..];
            let (cmd, reason) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (text(&rest[..i]), text(&rest[i + 1..])),
                None => (text(rest), String::new()),
            };
            Error::NotExecutable { cmd, reason }
        }
        _ => {
            let t = text(msg.get(2..).unwrap_or_default());
            // Already-prefixed set-up errors are not wrapped twice.
            match t.strip_prefix("container set-up failed: ") {
                Some(s) => Error::Setup(s.to_string()),
                None => Error::Setup(t),
            }
        }
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends a forked child without running the parent's
    // atexit handlers or destructors, which belong to the parent.
    unsafe { libc::_exit(code) }
}

/// Whether this process has a single thread (then a raw clone is as safe as fork).
fn single_threaded() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|n| n.trim() == "1")
        })
        .unwrap_or(false)
}

/// The kernel's `struct clone_args` (clone3), up to the cgroup field.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork(2) whose child starts in the cgroup v2 directory `cgroup`
/// (clone3 with CLONE_INTO_CGROUP). Only for a single-threaded caller: the
/// raw syscall skips glibc's fork handlers.
fn fork_into_cgroup(cgroup: BorrowedFd) -> std::result::Result<ForkResult, nix::errno::Errno> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        #[allow(clippy::cast_sign_loss)]
        exit_signal: libc::SIGCHLD as u64,
        #[allow(clippy::cast_sign_loss)]
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like
    // fork: the child continues on a copy of this (single-threaded)
    // process. `args` is valid for the call and its size is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        0 => Ok(ForkResult::Child),
        n if n > 0 => Ok(ForkResult::Parent {
            child: Pid::from_raw(i32::try_from(n).unwrap_or(0)),
        }),
        _ => Err(nix::errno::Errno::last()),
    }
}

/// Namespaces to create, and existing ones to join (by path).
pub struct Namespaces {
    pub unshare: CloneFlags,
    pub join: Vec<(OwnedFd, CloneFlags)>,
    /// Mappings of a new user namespace (empty without one).
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

impl Namespaces {
    /// From the spec: namespaces without a path are created, those with one
    /// joined (opened now, so a bad path fails before anything starts).
    pub fn from_spec(spec: &Spec) -> Result<Namespaces> {
        let mut unshare = CloneFlags::empty();
        let mut join = Vec::new();
        for ns in spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let flag = ns_flag(ns.typ());
            if flag.is_empty() {
                return Err(Error::Setup(format!(
                    "the {:?} namespace is not supported",
                    ns.typ()
                )));
            }
            match ns.path() {
                Some(p) => {
                    let f = fs::File::open(p)
                        .map_err(|e| Error::io(format!("opening namespace {}", p.display()), e))?;
                    join.push((OwnedFd::from(f), flag));
                }
                None => unshare |= flag,
            }
        }
        // A joined user namespace first: the others are then entered with
        // the capabilities it gives.
        join.sort_by_key(|(_, f)| *f != CloneFlags::CLONE_NEWUSER);
        let (mut uid_map, mut gid_map) = (Vec::new(), Vec::new());
        if unshare.contains(CloneFlags::CLONE_NEWUSER) {
            let linux = spec.linux().as_ref();
            uid_map = IdMap::from_oci(
                linux
                    .and_then(|l| l.uid_mappings().as_deref())
                    .unwrap_or_default(),
            );
            gid_map = IdMap::from_oci(
                linux
                    .and_then(|l| l.gid_mappings().as_deref())
                    .unwrap_or_default(),
            );
            if uid_map.is_empty() || gid_map.is_empty() {
                return Err(Error::Setup(
                    "the spec's user namespace has no uidMappings or gidMappings".into(),
                ));
            }
        }
        Ok(Namespaces {
            unshare,
            join,
            uid_map,
            gid_map,
        })
    }

    pub fn has(&self, flag: CloneFlags) -> bool {
        self.unshare.contains(flag) || self.join.iter().any(|(_, f)| *f == flag)
    }
}

/// Descriptors a container's process gets as its 0, 1 and 2 instead of the
/// runtime's own (a library user such as the guest agent gives each
/// process pipes of its own).
#[derive(Debug, Clone)]
pub struct Stdio(pub std::sync::Arc<[OwnedFd; 3]>);

impl Stdio {
    pub fn new(stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> Stdio {
        Stdio(std::sync::Arc::new([stdin, stdout, stderr]))
    }

    /// Makes them this process's 0, 1 and 2 (in a fork child).
    fn install(&self) -> Result<()> {
        for (target, fd) in self.0.iter().enumerate() {
            let target = i32::try_from(target).unwrap_or(0);
            // SAFETY: dup2 on a descriptor this process owns; the target
            // is one of the standard three, replaced on purpose.
            if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                return Err(Error::io(
                    format!("setting up descriptor {target}"),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(())
    }
}

/// Everything the container's processes need, prepared by the runtime
/// before forking (so failures surface early and the children only act).
pub struct ChildPlan<'a> {
    pub spec: &'a Spec,
    pub rootfs: RootfsPlan<'a>,
    pub cgroup: Option<&'a Cgroup>,
    pub namespaces: &'a Namespaces,
    /// Network settings for eth0, configured from inside (bridge mode).
    pub net: Option<&'a NetConfig>,
    pub seccomp: &'a [BpfProgram],
    /// Run a tiny init as PID 1 (signal forwarding, zombie reaping).
    pub init: bool,
    pub stdio: Option<&'a Stdio>,
    /// `stdio` is a terminal: PID 1 makes it its controlling terminal.
    pub terminal: bool,
    /// OCI create/start: PID 1 outlives the runtime and execs on request.
    pub detached: Option<Detached<'a>>,
}

/// How a PID 1 that outlives the runtime (`uvm oci create`) is started
/// later by another process: after set-up it tells the runtime it is ready,
/// then waits on `gate` (a listening socket in the state directory) for
/// `start` to connect; the accepted connection then carries the exec's
/// outcome, as the runtime's socket does otherwise.
#[derive(Clone, Copy)]
pub struct Detached<'a> {
    pub gate: BorrowedFd<'a>,
    /// `--console-socket`: PID 1 makes a terminal, sends its master end
    /// over this socket and uses the other end as stdin, stdout and stderr.
    pub console: Option<BorrowedFd<'a>>,
}

/// A started (not yet released) container PID 1.
#[derive(Debug)]
pub struct Started {
    pub pid: Pid,
    sock: OwnedFd,
}

/// Forks the container's processes; returns once PID 1 exists and waits for
/// [`Started::release`].
pub fn spawn(plan: &ChildPlan) -> Result<Started> {
    let (psock, csock) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("socketpair", e))?;
    // On cgroup v2, a single-threaded runtime starts the child directly in
    // the container's cgroup (no migration, whose cost is an RCU grace period).
    let born_inside = plan
        .cgroup
        .filter(|c| c.version == 2)
        .and_then(|c| c.dirs.first())
        .and_then(|(_, dir)| fs::File::open(dir).ok())
        .filter(|_| single_threaded())
        .and_then(|dir| fork_into_cgroup(dir.as_fd()).ok());
    let forked = match born_inside {
        Some(r) => r,
        // SAFETY: the child runs only this crate's set-up code and ends in
        // execve or _exit; glibc's fork keeps malloc consistent in the child.
        None => unsafe { unistd::fork() }.map_err(|e| Error::sys("fork", e))?,
    };
    match forked {
        ForkResult::Child => {
            drop(psock);
            match first_child(plan, csock.as_fd(), born_inside.is_some()) {
                Ok(()) => exit_now(0),
                Err(e) => {
                    let _ = send(csock.as_fd(), &encode_err(&e));
                    exit_now(1)
                }
            }
        }
        ForkResult::Parent { child } => {
            drop(csock);
            let msg = first_child_report(plan.namespaces, child, psock.as_fd());
            let _ = waitpid(child, None);
            let msg = msg?;
            match msg.first() {
                Some(b'P') => {
                    let pid = std::str::from_utf8(&msg[1..])
                        .ok()
                        .and_then(|s| s.parse::<i32>().ok())
                        .ok_or_else(|| Error::Setup("bad pid message from the container".into()))?;
                    Ok(Started {
                        pid: Pid::from_raw(pid),
                        sock: psock,
                    })
                }
                Some(b'E') => Err(decode_err(&msg)),
                _ => Err(Error::Setup(
                    "the container's first process exited during set-up".into(),
                )),
            }
        }
    }
}

/// The first child's final message, after writing its user namespace's
/// mappings when it asks ("U": created; "M": written, go on). On a failed
/// write the child is killed and the error returned.
fn first_child_report(ns: &Namespaces, child: Pid, sock: BorrowedFd) -> Result<Vec<u8>> {
    loop {
        let msg = recv(sock)?;
        if msg != b"U" {
            return Ok(msg);
        }
        if let Err(e) =
            userns::write_maps(child, &ns.uid_map, &ns.gid_map).and_then(|()| send(sock, b"M"))
        {
            let _ = signal::kill(child, Signal::SIGKILL);
            return Err(e);
        }
    }
}

impl Started {
    /// Lets PID 1 proceed and waits until it has exec'd the workload (Ok) or
    /// failed (the error; PID 1 has then exited and is reaped).
    pub fn release(self) -> Result<Pid> {
        send(self.sock.as_fd(), b"G")?;
        let msg = recv(self.sock.as_fd())?;
        if msg.is_empty() {
            return Ok(self.pid);
        }
        let _ = waitpid(self.pid, None);
        Err(decode_err(&msg))
    }

    /// Detached ([`Detached`]): lets PID 1 set up, giving it the OCI
    /// states for the hooks it runs (createContainer, startContainer);
    /// returns once it waits for `start`, or with the error that stopped it.
    pub fn release_detached(&self, creating: &[u8], created: &[u8]) -> Result<Pid> {
        let mut go = Vec::with_capacity(2 + creating.len() + created.len());
        go.push(b'G');
        go.extend(creating);
        go.push(0);
        go.extend(created);
        send(self.sock.as_fd(), &go)?;
        let msg = recv(self.sock.as_fd())?;
        match msg.first() {
            Some(b'R') => Ok(self.pid),
            Some(b'E') => {
                let _ = waitpid(self.pid, None);
                Err(decode_err(&msg))
            }
            _ => {
                let _ = waitpid(self.pid, None);
                Err(Error::Setup(
                    "the container's PID 1 exited during set-up".into(),
                ))
            }
        }
    }

    /// Kills and reaps PID 1 (set-up abandoned).
    pub fn abort(self) {
        let _ = signal::kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

fn setns(fd: &OwnedFd, flag: CloneFlags) -> Result<()> {
    nix::sched::setns(fd, flag).map_err(|e| Error::sys(format!("joining namespace ({flag:?})"), e))
}

fn first_child(plan: &ChildPlan, sock: BorrowedFd, in_cgroup: bool) -> Result<()> {
    if let Some(stdio) = plan.stdio {
        stdio.install()?;
    }
    if let Some(cg) = plan.cgroup.filter(|_| !in_cgroup) {
        cg.add_pid(0)?;
    }
    let ns = plan.namespaces;
    for (fd, flag) in &ns.join {
        setns(fd, *flag)?;
    }
    // The user namespace first, so that it owns the others (mounting /proc,
    // /sys or an overlay inside needs that); its mappings are written by the
    // runtime, outside, before anything else is done in it.
    let user = ns.unshare & CloneFlags::CLONE_NEWUSER;
    if !user.is_empty() {
        nix::sched::unshare(user).map_err(|e| {
            Error::sys(
                "creating the user namespace (are unprivileged user namespaces disabled?)",
                e,
            )
        })?;
        send(sock, b"U")?;
        if recv(sock)? != b"M" {
            // The runtime failed to write the mappings and reports why.
            exit_now(1);
        }
        userns::become_root(&ns.uid_map, &ns.gid_map)?;
    }
    nix::sched::unshare(ns.unshare - user)
        .map_err(|e| Error::sys("creating namespaces (unshare)", e))?;
    // SAFETY: this process is single-threaded (a fork child).
    match unsafe { unistd::fork() }.map_err(|e| Error::sys("fork", e))? {
        ForkResult::Child => {
            let e = match container_init(plan, sock) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let _ = send(sock, &encode_err(&e));
            exit_now(e.exit_code())
        }
        ForkResult::Parent { child } => send(sock, format!("P{child}").as_bytes()),
    }
}

/// PID 1 of the container, up to exec.
fn container_init(plan: &ChildPlan, sock: BorrowedFd) -> Result<Infallible> {
    let go = recv(sock)?;
    if go.first() != Some(&b'G') {
        // The runtime gave up (its error is reported there).
        exit_now(1);
    }
    // Detached, the go-ahead carries the OCI state the hooks run inside
    // get on stdin: at createContainer, then at startContainer.
    let mut states = go[1..].splitn(2, |b| *b == 0);
    let (creating, created) = (
        states.next().unwrap_or_default(),
        states.next().unwrap_or_default(),
    );
    let hooks = plan
        .spec
        .hooks()
        .as_ref()
        .filter(|_| plan.detached.is_some());
    let _ = unistd::setsid();
    if plan.terminal {
        crate::tty::make_controlling()?;
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    // While the host's /proc is still there and before privileges go
    // (lowering it needs CAP_SYS_RESOURCE); exec'd processes inherit it.
    if let Some(adj) = plan.spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| Error::io(format!("setting oom_score_adj {adj}"), e))?;
    }
    let ns = plan.namespaces;
    if ns.has(CloneFlags::CLONE_NEWUTS) {
        if let Some(h) = plan.spec.hostname() {
            unistd::sethostname(h).map_err(|e| Error::sys(format!("setting hostname {h:?}"), e))?;
        }
        if let Some(d) = plan.spec.domainname() {
            set_domainname(d)?;
        }
    }
    let create_container = || match hooks.and_then(|h| h.create_container().as_deref()) {
        Some(list) => crate::oci::hooks::run_all(list, creating, "createContainer"),
        None => Ok(()),
    };
    let own_mounts = ns.has(CloneFlags::CLONE_NEWNS);
    if own_mounts {
        let mut rootfs = plan.rootfs;
        rootfs.before_pivot = Some(&create_container);
        rootfs::setup(&rootfs)?;
    } else {
        // No mount namespace of its own (as runc allows): mounting would
        // change the host's, so the rootfs is used as it is, by chroot.
        create_container()?;
        rootfs::chroot(plan.rootfs.rootfs)?;
    }
    if ns.unshare.contains(CloneFlags::CLONE_NEWNET) {
        super::network::configure_inside(plan.net)?;
    }
    if let Some(linux) = plan.spec.linux() {
        for (k, v) in linux.sysctl().iter().flatten() {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            fs::write(&path, v).map_err(|e| Error::io(format!("sysctl {k}={v}"), e))?;
        }
    }
    if own_mounts {
        rootfs::finish(plan.spec)?;
    }
    let process = plan
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Setup("spec has no process".into()))?;
    let gate = match plan.detached {
        Some(d) => {
            if let Some(console) = d.console {
                crate::oci::console::attach(console)?;
            }
            let start_container = hooks
                .and_then(|h| h.start_container().clone())
                .unwrap_or_default();
            Some(Gate {
                listener: d.gate,
                start_container,
                state: created.to_vec(),
            })
        }
        None => None,
    };
    exec_process(process, plan.seccomp, sock, None, plan.init, gate)
}

/// Signals that end a created (not yet started) detached container.
const GATE_SIGNALS: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// Where a detached PID 1 waits for `start` (see [`Detached`]).
pub struct Gate<'a> {
    listener: BorrowedFd<'a>,
    start_container: Vec<oci_spec::runtime::Hook>,
    state: Vec<u8>,
}

impl Gate<'_> {
    /// Tells the runtime set-up is done, waits for `start`, runs the
    /// startContainer hooks; returns the connection to report on.
    fn wait(&self, runtime_sock: BorrowedFd) -> Result<OwnedFd> {
        // A namespace's PID 1 ignores signals it has no handler for, even
        // from outside: while created, the usual ones end it (`kill` of a
        // created container works as with runc). Handlers do not survive
        // exec, so the workload starts with default dispositions.
        extern "C" fn die(sig: libc::c_int) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(128 + sig) }
        }
        for sig in GATE_SIGNALS {
            // SAFETY: `die` only calls an async-signal-safe function.
            let _ = unsafe { signal::signal(sig, SigHandler::Handler(die)) };
        }
        send(runtime_sock, b"R")?;
        let conn = loop {
            match socket::accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new descriptor that nothing
                    // else owns.
                    break unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("waiting for start", e)),
            }
        };
        for sig in GATE_SIGNALS {
            // SAFETY: restoring the default disposition installs no handler.
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        }
        let r = crate::oci::hooks::run_all(&self.start_container, &self.state, "startContainer");
        if let Err(e) = r {
            let _ = send(conn.as_fd(), &encode_err(&e));
            exit_now(1);
        }
        Ok(conn)
    }
}

/// Connects to a detached container's gate (`path`, a socket in its state
/// directory) and returns once its workload has exec'd, or with the error
/// that stopped it.
pub fn start_detached(path: &Path) -> Result<()> {
    let sock = gate_socket(path, "connecting to", |fd, addr| socket::connect(fd, addr))?;
    // Only one start: the gate is gone for the next one.
    let _ = fs::remove_file(path);
    let msg = recv(sock.as_fd())?;
    if msg.is_empty() {
        return Ok(());
    }
    Err(decode_err(&msg))
}

/// A listening socket at `path` for [`start_detached`].
pub fn bind_gate(path: &Path) -> Result<OwnedFd> {
    let sock = gate_socket(path, "binding", |fd, addr| socket::bind(fd, addr))?;
    socket::listen(
        &sock,
        socket::Backlog::new(1).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(|e| Error::sys(format!("listening on {}", path.display()), e))?;
    Ok(sock)
}

/// A SOCK_SEQPACKET socket on which `op` (bind or connect) was done with
/// `path`'s address.
fn gate_socket(
    path: &Path,
    what: &str,
    op: impl FnOnce(RawFd, &socket::UnixAddr) -> nix::Result<()>,
) -> Result<OwnedFd> {
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket", e))?;
    let (addr, _dir) = short_unix_addr(path)?;
    op(sock.as_raw_fd(), &addr).map_err(|e| Error::sys(format!("{what} {}", path.display()), e))?;
    Ok(sock)
}

/// A socket address for `path`, which may be longer than sun_path holds:
/// then reached through its directory's descriptor in /proc/self/fd
/// (kept open alongside the address).
fn short_unix_addr(path: &Path) -> Result<(socket::UnixAddr, Option<fs::File>)> {
    if path.as_os_str().len() < 100 {
        let a = socket::UnixAddr::new(path).map_err(|e| Error::sys("socket address", e))?;
        return Ok((a, None));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default();
    let f = fs::File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    let via = Path::new("/proc/self/fd")
        .join(f.as_raw_fd().to_string())
        .join(name);
    let a = socket::UnixAddr::new(&via).map_err(|e| Error::sys("socket address", e))?;
    Ok((a, Some(f)))
}

fn set_domainname(d: &str) -> Result<()> {
    let c = CString::new(d).map_err(|_| Error::Setup("domainname contains NUL".into()))?;
    // SAFETY: the pointer and length describe `c`, alive for the call.
    let rc = unsafe { libc::setdomainname(c.as_ptr(), d.len()) };
    if rc != 0 {
        return Err(Error::io("setdomainname", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn rlimit_resource(t: PosixRlimitType) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match t {
        PosixRlimitType::RlimitCpu => R::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => R::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => R::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => R::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => R::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => R::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => R::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => R::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => R::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => R::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => R::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => R::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => R::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => R::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => R::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fn to_caps(set: Option<&oci_spec::runtime::Capabilities>) -> Result<caps::CapsHashSet> {
    let mut out = caps::CapsHashSet::new();
    for c in set.into_iter().flatten() {
        let name = format!("CAP_{c}");
        let cap = caps::Capability::from_str(&name)
            .map_err(|_| Error::Capabilities(format!("unknown capability {name}")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn caps_err(what: &str) -> impl Fn(caps::errors::CapsError) -> Error + '_ {
    move |e| Error::Capabilities(format!("{what}: {e}"))
}

/// Drops the bounding set, switches user keeping the listed capabilities,
/// then sets the other capability sets.
fn apply_user_and_caps(process: &Process) -> Result<()> {
    use caps::CapSet;
    let c = process.capabilities().as_ref();
    let bounding = to_caps(c.and_then(|c| c.bounding().as_ref()))?;
    for cap in caps::runtime::thread_all_supported() {
        if !bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("dropping from the bounding set"))?;
        }
    }
    let user = process.user();
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // Rootless, setgroups is denied and the groups stay as they are.
    if !gids.is_empty() || userns::setgroups_allowed() {
        unistd::setgroups(&gids).map_err(|e| Error::sys("setgroups", e))?;
    }
    let gid = Gid::from_raw(user.gid());
    unistd::setresgid(gid, gid, gid).map_err(|e| Error::sys(format!("setgid {gid}"), e))?;
    let uid = Uid::from_raw(user.uid());
    if !uid.is_root() {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    unistd::setresuid(uid, uid, uid).map_err(|e| Error::sys(format!("setuid {uid}"), e))?;
    if !uid.is_root() {
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    }
    let permitted = to_caps(c.and_then(|c| c.permitted().as_ref()))?;
    let effective = to_caps(c.and_then(|c| c.effective().as_ref()))?;
    let inheritable = to_caps(c.and_then(|c| c.inheritable().as_ref()))?;
    let ambient = to_caps(c.and_then(|c| c.ambient().as_ref()))?;
    caps::set(
        None,
        CapSet::Effective,
        &effective.intersection(&permitted).copied().collect(),
    )
    .map_err(caps_err("setting effective capabilities"))?;
    caps::set(None, CapSet::Inheritable, &inheritable)
        .map_err(caps_err("setting inheritable capabilities"))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(caps_err("setting permitted capabilities"))?;
    caps::set(None, CapSet::Effective, &effective)
        .map_err(caps_err("setting effective capabilities"))?;
    // Only capabilities both permitted and inheritable can be ambient (runc's
    // own `spec` lists ambient ones without inheritable ones: they are skipped).
    let ambient: caps::CapsHashSet = ambient
        .into_iter()
        .filter(|c| permitted.contains(c) && inheritable.contains(c))
        .collect();
    if !ambient.is_empty() {
        caps::set(None, CapSet::Ambient, &ambient)
            .map_err(caps_err("setting ambient capabilities"))?;
    }
    Ok(())
}

fn env_path(env: &[String]) -> &str {
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

fn check_executable(cmd: &str, path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|_| Error::CommandNotFound(cmd.to_string()))?;
    if meta.is_dir() {
        return Err(Error::NotExecutable {
            cmd: cmd.to_string(),
            reason: "is a directory".into(),
        });
    }
    if meta.permissions().mode() & 0o111 == 0
        || unistd::access(path, unistd::AccessFlags::X_OK).is_err()
    {
        return Err(Error::NotExecutable {
            cmd: cmd.to_string(),
            reason: "permission denied".into(),
        });
    }
    Ok(())
}

/// Finds `cmd` as execvp would, in the container's filesystem.
pub fn resolve_command(cmd: &str, env: &[String]) -> Result<PathBuf> {
    if cmd.is_empty() {
        return Err(Error::CommandNotFound(cmd.to_string()));
    }
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        check_executable(cmd, &p)?;
        return Ok(p);
    }
    let mut denied = None;
    for dir in env_path(env).split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        match check_executable(cmd, &p) {
            Ok(()) => return Ok(p),
            Err(e @ Error::NotExecutable { .. }) => denied = denied.or(Some(e)),
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or_else(|| Error::CommandNotFound(cmd.to_string())))
}

/// Default dispositions and, unless `keep_blocked`, an empty mask. The
/// `--init` keeps what it inherited blocked (the runtime's forwarded
/// signals): a signal sent while the container was being set up stays
/// pending for its sigwait, where unblocking here would have let the
/// kernel drop it (a namespace's PID 1 without a handler ignores it).
fn reset_signals(keep_blocked: bool) {
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring the default disposition installs no handler.
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    if !keep_blocked {
        let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    }
}

/// Marks every descriptor above stderr close-on-exec.
fn cloexec_from(first: RawFd) {
    let first = u32::try_from(first).unwrap_or(3);
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    if let Ok(rd) = fs::read_dir("/proc/self/fd") {
        let fds: Vec<RawFd> = rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for fd in fds.into_iter().filter(|fd| *fd >= 3) {
            // SAFETY: F_SETFD on a descriptor number; a stale one just fails.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_str())
                .map_err(|_| Error::Setup(format!("{what} contains a NUL byte")))
        })
        .collect()
}

/// Final steps of any container process (PID 1 or exec'd): limits,
/// directory, user, capabilities, no_new_privs, seccomp, then execve.
/// `cwd_override` replaces the spec's working directory (exec -w).
pub fn exec_process(
    process: &Process,
    seccomp: &[BpfProgram],
    runtime_sock: BorrowedFd,
    cwd_override: Option<&str>,
    init: bool,
    gate: Option<Gate>,
) -> Result<Infallible> {
    for r in process.rlimits().iter().flatten() {
        if let Some(res) = rlimit_resource(r.typ()) {
            nix::sys::resource::setrlimit(res, r.soft(), r.hard())
                .map_err(|e| Error::sys(format!("setrlimit {:?}", r.typ()), e))?;
        }
    }
    let cwd = cwd_override.map_or_else(|| process.cwd().clone(), PathBuf::from);
    if !cwd.exists() {
        fs::create_dir_all(&cwd)
            .map_err(|e| Error::Setup(format!("working directory {}: {e}", cwd.display())))?;
    }
    unistd::chdir(&cwd)
        .map_err(|e| Error::Setup(format!("working directory {}: {e}", cwd.display())))?;

    let nnp = process.no_new_privileges().unwrap_or(false);
    if !nnp && !seccomp.is_empty() {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN:
        // do it before the capabilities go.
        super::seccomp::install(seccomp)?;
    }
    apply_user_and_caps(process)?;
    if nnp {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Error::io(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                std::io::Error::last_os_error(),
            ));
        }
    }

    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let cmd = args.first().cloned().unwrap_or_default();
    let path = resolve_command(&cmd, &env)?;
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Setup("command path contains a NUL byte".into()))?;
    let c_args = cstrings(&args, "an argument")?;
    let c_env = cstrings(&env, "the environment")?;

    reset_signals(init);
    cloexec_from(3);
    let umask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(Mode::from_bits_truncate(umask));
    let target = Execve {
        path: c_path,
        args: c_args,
        env: c_env,
        cmd,
    };
    if let Some(g) = gate {
        // The runtime is gone by the time `start` comes: from here on
        // errors go to `start`, through the gate's connection.
        let conn = g.wait(runtime_sock)?;
        let e = match finish_exec(conn.as_fd(), seccomp, nnp, init, &target) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        let _ = send(conn.as_fd(), &encode_err(&e));
        exit_now(e.exit_code())
    }
    // Die with the runtime (set last: credential changes clear it).
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if runtime_gone(runtime_sock) {
        exit_now(1);
    }
    finish_exec(runtime_sock, seccomp, nnp, init, &target)
}

/// The workload's execve, resolved.
struct Execve {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    /// As the spec names it (for errors).
    cmd: String,
}

/// The last steps before execve: a filter installed late (no_new_privs),
/// the `--init` fork, the exec itself.
fn finish_exec(
    runtime_sock: BorrowedFd,
    seccomp: &[BpfProgram],
    nnp: bool,
    init: bool,
    target: &Execve,
) -> Result<Infallible> {
    if nnp && !seccomp.is_empty() {
        super::seccomp::install(seccomp)?;
    }
    if init {
        reaper_fork(runtime_sock);
    }
    let err = match unistd::execve(&target.path, &target.args, &target.env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let cmd = target.cmd.clone();
    let path = Path::new(std::ffi::OsStr::from_bytes(target.path.as_bytes()));
    Err(match err {
        nix::errno::Errno::ENOENT => Error::NotExecutable {
            cmd,
            reason: "no such file or directory (missing interpreter or library?)".into(),
        },
        nix::errno::Errno::EACCES | nix::errno::Errno::EPERM | nix::errno::Errno::ENOEXEC => {
            Error::NotExecutable {
                cmd,
                reason: err.desc().to_lowercase(),
            }
        }
        e => Error::sys(format!("execve {}", path.display()), e),
    })
}

/// `--init`: this process stays as PID 1, a tiny init that forwards signals
/// to the workload and reaps every zombie; the workload (its child, which
/// returns from this function to exec) is PID 2. PID 1 exits with the
/// workload's status (128 + signal for a signal death). The init runs with
/// the workload's privileges, capabilities and seccomp filter.
fn reaper_fork(runtime_sock: BorrowedFd) {
    let all = SigSet::all();
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None);
    // SAFETY: this process is single-threaded (a fork child).
    match unsafe { unistd::fork() } {
        Ok(ForkResult::Child) => {
            let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        }
        Ok(ForkResult::Parent { child }) => {
            // The runtime must see the workload's exec close the socket.
            // SAFETY: closing our copy; this process never returns to the
            // code owning the descriptor (it ends in _exit below).
            unsafe { libc::close(runtime_sock.as_raw_fd()) };
            let code = loop {
                let Ok(sig) = all.wait() else { continue };
                if sig != Signal::SIGCHLD {
                    let _ = signal::kill(child, sig);
                    continue;
                }
                let mut done = None;
                loop {
                    match waitpid(
                        Pid::from_raw(-1),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                    ) {
                        Ok(WaitStatus::Exited(p, c)) if p == child => done = Some(c),
                        Ok(WaitStatus::Signaled(p, s, _)) if p == child => {
                            done = Some(128 + s as i32)
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                if let Some(c) = done {
                    break c;
                }
            };
            exit_now(code)
        }
        Err(_) => {
            // No init then: exec the workload as PID 1.
            let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        }
    }
}

/// Forks a process that joins `cgroup` and the namespaces `nsfds` (in
/// order), then a child of it (inside the pid namespace) that execs
/// `process`. Returns that child's pid once its exec succeeded.
pub fn spawn_joined(
    cgroup: Option<&Cgroup>,
    nsfds: &[(OwnedFd, CloneFlags)],
    process: &Process,
    seccomp: &[BpfProgram],
    cwd: Option<&str>,
    stdio: Option<&Stdio>,
) -> Result<Pid> {
    let (psock, csock) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("socketpair", e))?;
    // SAFETY: as in `spawn`: the child only sets up, then execs or _exits.
    match unsafe { unistd::fork() }.map_err(|e| Error::sys("fork", e))? {
        ForkResult::Child => {
            drop(psock);
            let sock = csock.as_fd();
            let r = (|| -> Result<()> {
                if let Some(stdio) = stdio {
                    stdio.install()?;
                }
                if let Some(cg) = cgroup {
                    cg.add_pid(0)?;
                }
                for (fd, flag) in nsfds {
                    setns(fd, *flag)?;
                }
                // SAFETY: this process is single-threaded (a fork child).
                match unsafe { unistd::fork() }.map_err(|e| Error::sys("fork", e))? {
                    ForkResult::Child => {
                        // Wait until the runtime reaped our parent: the
                        // parent-death signal set before exec must not fire
                        // for that exit.
                        if recv(sock).ok().as_deref() != Some(b"G") {
                            exit_now(1);
                        }
                        let e = match exec_process(process, seccomp, sock, cwd, false, None) {
                            Err(e) => e,
                            Ok(never) => match never {},
                        };
                        let _ = send(sock, &encode_err(&e));
                        exit_now(e.exit_code())
                    }
                    ForkResult::Parent { child } => send(sock, format!("P{child}").as_bytes()),
                }
            })();
            match r {
                Ok(()) => exit_now(0),
                Err(e) => {
                    let _ = send(sock, &encode_err(&e));
                    exit_now(1)
                }
            }
        }
        ForkResult::Parent { child } => {
            drop(csock);
            let msg = recv(psock.as_fd());
            let _ = waitpid(child, None);
            let msg = msg?;
            let pid = match msg.first() {
                Some(b'P') => std::str::from_utf8(&msg[1..])
                    .ok()
                    .and_then(|s| s.parse::<i32>().ok())
                    .map(Pid::from_raw)
                    .ok_or_else(|| Error::Setup("bad pid message".into()))?,
                Some(b'E') => return Err(decode_err(&msg)),
                _ => return Err(Error::Setup("exec: the set-up process died".into())),
            };
            send(psock.as_fd(), b"G")?;
            let msg = recv(psock.as_fd())?;
            if msg.is_empty() {
                return Ok(pid);
            }
            let _ = waitpid(pid, None);
            Err(decode_err(&msg))
        }
    }
}

/// Waits for `pid`, forwarding the signals of `sigs` to it. `sigs` must
/// contain SIGCHLD and be blocked in the calling thread. Also reaps other
/// children (orphans adopted as subreaper): for a process running one
/// container, such as the CLI, not for a multi-container library user.
pub fn wait_forwarding(pid: Pid, sigs: &SigSet) -> Result<ExitKind> {
    loop {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                Ok(WaitStatus::Exited(p, c)) if p == pid => return Ok(ExitKind::Code(c)),
                Ok(WaitStatus::Signaled(p, s, _)) if p == pid => {
                    return Ok(ExitKind::Signal(s as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        match sigs.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = signal::kill(pid, sig);
            }
            Err(_) => {}
        }
    }
}

/// Whether the runtime's end of the sync socket is closed (it died: our
/// parent, outside the pid namespace, is not visible to getppid()).
fn runtime_gone(sock: BorrowedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        _ => false,
    }
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    Signal(i32),
}

impl ExitKind {
    /// Shell convention: the code, or 128 + signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => 128 + s,
        }
    }
}

/// Waits for `pid` (retrying on EINTR).
pub fn wait_exit(pid: Pid) -> Result<ExitKind> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(ExitKind::Code(c)),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(ExitKind::Signal(s as i32)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys(format!("waiting for process {pid}"), e)),
        }
    }
}

/// Non-blocking check on `pid`.
pub fn try_wait(pid: Pid) -> Result<Option<ExitKind>> {
    match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, c)) => Ok(Some(ExitKind::Code(c))),
        Ok(WaitStatus::Signaled(_, s, _)) => Ok(Some(ExitKind::Signal(s as i32))),
        Ok(_) => Ok(None),
        Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(Error::sys(format!("waiting for process {pid}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trip() {
        for e in [
            Error::CommandNotFound("nope".into()),
            Error::NotExecutable {
                cmd: "/etc/passwd".into(),
                reason: "permission denied".into(),
            },
            Error::Setup("mounting x: EPERM".into()),
        ] {
            let d = decode_err(&encode_err(&e));
            assert_eq!(d.to_string(), e.to_string());
            assert_eq!(d.exit_code(), e.exit_code());
        }
    }

    #[test]
    fn command_resolution() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(resolve_command("sh", &env).unwrap().ends_with("sh"));
        assert!(matches!(
            resolve_command("no-such-command-uvm", &env),
            Err(Error::CommandNotFound(_))
        ));
        assert!(matches!(
            resolve_command("/etc/passwd", &env),
            Err(Error::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve_command("/etc", &env),
            Err(Error::NotExecutable { .. })
        ));
        assert_eq!(ExitKind::Signal(9).code(), 137);
        assert_eq!(ExitKind::Code(3).code(), 3);
    }
}
