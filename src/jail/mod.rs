//! `uvm boot --jail DIR`: the VMM in a jail, Firecracker's jailer done
//! in-process.
//!
//! The parent (root, on the host) checks everything, makes the jail's
//! folder `DIR/uvm-PID/root` with an empty placeholder for each file the
//! VMM needs (kernel, initrd, disks, `/dev/kvm`, `/dev/net/tun`), its cgroup
//! and a record for `uvm gc`, then forks the VMM: with `--jail-pidns` into a
//! new pid namespace, where the VMM is PID 1 (it starts no processes, so it
//! has nothing to reap). The child ([`enter`]) unshares its mount (and
//! network) namespace, waits while the parent moves the taps in and puts it
//! in the cgroup, binds the files onto their placeholders, pivots into the
//! folder and builds the VM there; then it drops every capability, sets
//! no_new_privs and becomes `--uid`:`--gid` before a vCPU starts, and the
//! threads' seccomp filters go on as without a jail. The parent forwards
//! SIGINT/SIGTERM/SIGHUP, waits, removes the folder, the cgroup and the
//! record, and exits with the VMM's status. A SIGKILL of the parent takes
//! the VMM with it (parent-death signal), and `uvm gc` removes the rest.

mod enter;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use uvm_runtime::cgroups::{Cgroup, Hierarchy, Resources};
use uvm_runtime::state;

use crate::cli::BootArgs;
use crate::error::{human, Error};
use crate::vmm::linux::{LinuxVmConfig, Output};
use crate::vmm::shutdown::EXIT_UVM_ERROR;

/// The user and group a jailed VMM runs as unless told: nobody, nogroup.
pub const DEFAULT_ID: u32 = 65534;

/// What the VMM's cgroup must hold beyond guest RAM: the VMM's own memory
/// (a few MiB measured) with room to spare.
const VMM_HEADROOM: u64 = 32 << 20;

/// A jail, as `uvm boot --jail DIR ...` asks for it.
#[derive(Debug, Clone)]
pub struct JailSpec {
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub netns: bool,
    pub pidns: bool,
    pub resources: Resources,
}

impl JailSpec {
    /// The jail `args` ask for, checked against the VM they describe; None
    /// without `--jail`. Nothing on the host changes here.
    pub fn from_args(args: &BootArgs, cfg: &LinuxVmConfig) -> Result<Option<JailSpec>, Error> {
        let Some(dir) = &args.jail else {
            return Ok(None);
        };
        let usage = |m: String| Err(Error::Usage(format!("--jail: {m}")));
        if !dir.is_dir() {
            return usage(format!("{} is not an existing folder", dir.display()));
        }
        let (uid, gid) = (
            args.uid.unwrap_or(DEFAULT_ID),
            args.gid.unwrap_or(DEFAULT_ID),
        );
        if uid == 0 || gid == 0 {
            return usage(format!(
                "--uid {uid} --gid {gid}: the jail runs the VMM as an unprivileged user, not root"
            ));
        }
        let refused = [
            (
                !cfg.shares.is_empty(),
                "--fs (virtiofsd's socket would have to live in the jail)",
            ),
            (
                cfg.vsock.is_some() || args.agent,
                "--vsock and --agent (their Unix sockets would have to live in the jail)",
            ),
            (
                cfg.nets.iter().any(|n| n.bridge) || !args.publish.is_empty(),
                "--net bridge and -p (the lease's nft rules are made by a helper outside the jail)",
            ),
        ];
        if let Some((_, what)) = refused.iter().find(|(on, _)| *on) {
            return usage(format!("{what} cannot be used with a jail yet"));
        }
        if let Some(m) = args.jail_mem {
            if m < cfg.mem_size + VMM_HEADROOM {
                return usage(format!(
                    "--jail-mem {}: the cgroup must hold the guest's RAM (--mem {}) and the VMM, at least {}",
                    human(m),
                    human(cfg.mem_size),
                    human(cfg.mem_size + VMM_HEADROOM)
                ));
            }
        }
        if args.jail_pids.is_some_and(|p| p < 1) {
            return usage("--jail-pids: must be at least 1".into());
        }
        let cpu_quota = match args.jail_cpus {
            None => None,
            Some(c) if c > 0.0 && c.is_finite() && c <= 1024.0 => {
                // A CFS quota in microseconds per the default 100 ms period.
                Some(std::time::Duration::from_secs_f64(c / 10.0).as_micros())
            }
            Some(c) => return usage(format!("--jail-cpus {c}: must be a number of CPUs above 0")),
        };
        let resources = Resources {
            memory: args.jail_mem,
            pids: args.jail_pids,
            cpu_quota: cpu_quota.and_then(|q| u64::try_from(q).ok()),
            cpu_period: cpu_quota.map(|_| 100_000),
            ..Resources::default()
        };
        resources
            .validate()
            .map_err(|e| Error::Usage(format!("--jail: {e}")))?;
        Ok(Some(JailSpec {
            dir: dir.clone(),
            uid,
            gid,
            netns: args.jail_netns,
            pidns: args.jail_pidns,
            resources,
        }))
    }
}

/// A file bound into the jail: the host's path, its place in the jail
/// (relative to the root), and whether the bind is read-only.
#[derive(Debug, Clone)]
struct Bind {
    host: PathBuf,
    inside: PathBuf,
    read_only: bool,
}

/// The folder, cgroup and record of one jail, removed on drop.
struct Jail {
    /// `DIR/uvm-PID`; the root is its `root`.
    folder: PathBuf,
    record: PathBuf,
    cgroup: Option<Cgroup>,
}

impl Jail {
    fn root(&self) -> PathBuf {
        self.folder.join("root")
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if let Some(cg) = &self.cgroup {
            cg.destroy();
        }
        // Only empty placeholders are here: the binds were in the VMM's
        // mount namespace, which ended with it.
        let _ = std::fs::remove_dir_all(&self.folder);
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Where the jails' records are (`uvm gc` reads them).
fn records() -> PathBuf {
    state::default_root().join("jail")
}

/// Rewrites `cfg` to the paths the VMM will see inside the jail and says
/// what to bind where.
fn plan(cfg: &mut LinuxVmConfig) -> Vec<Bind> {
    let mut binds = vec![
        Bind {
            host: "/dev/kvm".into(),
            inside: "dev/kvm".into(),
            read_only: false,
        },
        Bind {
            host: "/dev/net/tun".into(),
            inside: "dev/net/tun".into(),
            read_only: false,
        },
    ];
    let mut bind = |host: &mut PathBuf, name: String, read_only: bool| {
        binds.push(Bind {
            host: host.clone(),
            inside: name.clone().into(),
            read_only,
        });
        *host = Path::new("/").join(name);
    };
    bind(&mut cfg.kernel, "kernel".into(), true);
    if let Some(i) = cfg.initrd.as_mut() {
        bind(i, "initrd".into(), true);
    }
    for (n, d) in cfg.disks.iter_mut().enumerate() {
        bind(&mut d.path, format!("disk{n}"), d.read_only);
    }
    binds
}

/// Makes the jail's folder with a placeholder for each bind, its cgroup
/// and its record; on error, what was made is removed.
fn prepare(spec: &JailSpec, binds: &[Bind]) -> Result<Jail, Error> {
    let me = std::process::id();
    let folder = spec.dir.join(format!("uvm-{me}"));
    let io = |what: &str, p: &Path, e| Error::Io(format!("{what} {}", p.display()), e);
    std::fs::create_dir_all(records()).map_err(|e| io("creating", &records(), e))?;
    let record = records().join(format!("uvm-{me}.json"));
    if folder.exists() {
        // Left by an earlier uvm of the same pid that was killed.
        let _ = std::fs::remove_dir_all(&folder);
    }
    let mut jail = Jail {
        folder,
        record,
        cgroup: None,
    };
    let start = state::proc_start_time(i32::try_from(me).unwrap_or(0)).unwrap_or(0);
    let rel = PathBuf::from("uvm-jail").join(format!("uvm-{me}"));
    // Recorded before anything is made, with the cgroup's name, so that gc
    // finds all of it whenever uvm is killed.
    let r = serde_json::json!({
        "owner": [me, start],
        "folder": jail.folder,
        "cgroup": rel,
    });
    std::fs::write(&jail.record, r.to_string()).map_err(|e| io("writing", &jail.record, e))?;
    let root = jail.root();
    std::fs::create_dir_all(&root).map_err(|e| io("creating", &root, e))?;
    for b in binds {
        let p = root.join(&b.inside);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
        }
        std::fs::File::create(&p).map_err(|e| io("creating", &p, e))?;
    }
    let h = Hierarchy::detect()?;
    jail.cgroup = Some(Cgroup::create(&h, &rel, &spec.resources)?);
    Ok(jail)
}

/// `uvm boot --jail`: runs the VM in a jail and returns uvm's exit status.
/// `command`, if any, goes to the guest's init on the command line.
pub fn main(args: &BootArgs) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uvm: {e}");
            EXIT_UVM_ERROR
        }
    }
}

fn run(args: &BootArgs) -> Result<i32, Error> {
    let mut cfg = args.to_config()?;
    let Some(spec) = JailSpec::from_args(args, &cfg)? else {
        return Err(Error::Usage("--jail DIR is missing".into()));
    };
    if !args.command.is_empty() {
        // Before the user's fragment, which comes last.
        let at = cfg.cmdline.len().saturating_sub(1);
        cfg.cmdline
            .insert(at, uvm_protocol::encode_command(&args.command));
    }
    cfg.console = Output::Stdout;
    if spec.netns {
        check_taps_exist(&cfg)?;
    }
    cfg.validate()?;
    crate::check::ensure_can_boot_linux()?;
    let binds = plan(&mut cfg);
    let jail = prepare(&spec, &binds)?;
    let code = spawn(&spec, &jail, &binds, &cfg);
    drop(jail);
    code
}

/// With `--jail-netns` each tap is moved in, so it must exist first.
fn check_taps_exist(cfg: &LinuxVmConfig) -> Result<(), Error> {
    let mut nl = netlink(uvm_runtime::netlink::Netlink::new())?;
    for n in &cfg.nets {
        if !netlink(nl.link_exists(&n.tap))? {
            return Err(Error::Usage(format!(
                "--jail-netns: tap {} does not exist; create it first (ip tuntap add {} mode tap): it is moved into the jail's network namespace",
                n.tap, n.tap
            )));
        }
    }
    Ok(())
}

fn netlink<T>(r: Result<T, uvm_runtime::netlink::Error>) -> Result<T, Error> {
    r.map_err(|e| Error::Container(e.into()))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::Io("making a pipe to the jailed VMM".into(), e.into()))
}

/// The signals the parent takes while the VMM runs: those it forwards, and
/// SIGCHLD.
fn parent_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Forks the VMM into its namespaces, moves its taps in and puts it in the
/// cgroup while it waits, then lets it go and waits for its status.
fn spawn(spec: &JailSpec, jail: &Jail, binds: &[Bind], cfg: &LinuxVmConfig) -> Result<i32, Error> {
    let signals = parent_signals();
    signals
        .thread_block()
        .map_err(|e| Error::Io("blocking signals".into(), e.into()))?;
    if spec.pidns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
            .map_err(|e| Error::Io("making the jail's pid namespace".into(), e.into()))?;
    }
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let root = jail.root();
    // SAFETY: uvm has started no thread yet (the jail is set up first
    // thing), so the child is a full copy and may run anything.
    match unsafe { fork() }.map_err(|e| Error::Io("forking the jailed VMM".into(), e.into()))? {
        ForkResult::Child => {
            drop((ready_r, go_w));
            let code = enter::child(spec, &root, binds, cfg, ready_w, go_r, &signals);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let pid = u32::try_from(child.as_raw()).unwrap_or(0);
            // The child has unshared its namespaces when it says so.
            let mut byte = [0u8; 1];
            let ready = std::fs::File::from(ready_r).read(&mut byte).unwrap_or(0) == 1;
            let set_up = ready.then(|| admit(spec, jail, cfg, pid)).transpose();
            let mut go = std::fs::File::from(go_w);
            match set_up {
                Ok(Some(())) => {
                    // A child that died meanwhile is waited for below.
                    let _ = go.write_all(b"g");
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("uvm: {e}");
                    drop(go);
                    let _ = wait_forwarding(child, &signals);
                    return Ok(EXIT_UVM_ERROR);
                }
            }
            // Kept open: the child sees the parent gone when it closes.
            let code = wait_forwarding(child, &signals);
            drop(go);
            code
        }
    }
}

/// Moves the taps into the VMM's network namespace and the VMM into its
/// cgroup.
fn admit(spec: &JailSpec, jail: &Jail, cfg: &LinuxVmConfig, pid: u32) -> Result<(), Error> {
    if spec.netns {
        let mut nl = netlink(uvm_runtime::netlink::Netlink::new())?;
        for n in &cfg.nets {
            netlink(nl.link_set_netns(&n.tap, uvm_runtime::netlink::Netns::Pid(pid)))?;
        }
    }
    if let Some(cg) = &jail.cgroup {
        cg.add_pid(i32::try_from(pid).unwrap_or(0))?;
    }
    Ok(())
}

/// Waits for the VMM, passing on the signals that stop it; its status as
/// uvm's (128+N if a signal N ended it).
fn wait_forwarding(child: Pid, signals: &SigSet) -> Result<i32, Error> {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => return Ok(EXIT_UVM_ERROR),
            Err(e) => return Err(Error::Io("waiting for the jailed VMM".into(), e.into())),
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
    }
}

/// The cgroup `rel` in every hierarchy of `h`, whether or not it exists.
fn cgroup_at(h: &Hierarchy, rel: &Path) -> Cgroup {
    let (version, dirs) = match h {
        Hierarchy::V2 { root } => (2, vec![(Vec::new(), root.join(rel))]),
        Hierarchy::V1 { mounts } => (
            1,
            mounts
                .iter()
                .map(|(ctrls, mp)| (ctrls.clone(), mp.join(rel)))
                .collect(),
        ),
    };
    Cgroup {
        version,
        rel: rel.to_path_buf(),
        dirs,
    }
}

/// Removes the folders, cgroups and records of jails whose uvm died;
/// returns what was removed.
pub fn gc() -> Vec<String> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(records()).into_iter().flatten().flatten() {
        let path = e.path();
        let Ok(v) = std::fs::read_to_string(&path)
            .map_err(drop)
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(drop))
        else {
            continue;
        };
        let owner = v["owner"].as_array().and_then(|o| {
            Some((
                i32::try_from(o.first()?.as_u64()?).ok()?,
                o.get(1)?.as_u64()?,
            ))
        });
        if owner.is_some_and(|(pid, start)| state::proc_alive(pid, start)) {
            continue;
        }
        let cgroup = v["cgroup"].as_str().map(Path::new);
        if let Some(cg) = cgroup
            .zip(Hierarchy::detect().ok())
            .map(|(rel, h)| cgroup_at(&h, rel))
        {
            if cg.exists() && cg.destroy() {
                removed.push(format!("jail cgroup {}", cg.rel.display()));
            }
        }
        if let Some(folder) = v["folder"].as_str().map(PathBuf::from) {
            if folder.exists() && std::fs::remove_dir_all(&folder).is_ok() {
                removed.push(format!("jail folder {}", folder.display()));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn spec(dir: &Path) -> JailSpec {
        JailSpec {
            dir: dir.to_path_buf(),
            uid: DEFAULT_ID,
            gid: DEFAULT_ID,
            netns: false,
            pidns: false,
            resources: Resources {
                memory: Some(64 << 20),
                pids: Some(16),
                ..Resources::default()
            },
        }
    }

    fn config(kernel: PathBuf, disk: PathBuf) -> LinuxVmConfig {
        let disk = crate::vmm::virtio::DiskSpec {
            path: disk,
            read_only: true,
            id: None,
            root: false,
            rate_limit: Default::default(),
        };
        LinuxVmConfig {
            kernel,
            initrd: None,
            cmdline: Vec::new(),
            vcpus: 1,
            mem_size: 256 << 20,
            timeout: None,
            disks: vec![disk],
            nets: Vec::new(),
            vsock: None,
            shares: Vec::new(),
            verbose: false,
            seccomp: true,
            console: Output::Stdout,
        }
    }

    /// The jail's folder, record and cgroup are named after the process:
    /// one test at a time.
    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("uvm-jail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// What a process sees after entering the jail and dropping its
    /// privileges, told as one line through a pipe (the jail has no /proc).
    fn look_from_inside(root: &Path, binds: &[Bind]) -> String {
        let (r, w) = pipe().unwrap();
        // SAFETY: the child only makes system calls and allocates (glibc's
        // fork leaves the allocator usable), then _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // Other tests' sockets (a listener a test is about to see
                // closed) must not live on in this child: keep only the pipe.
                let keep = u32::try_from(w.as_raw_fd()).unwrap();
                // SAFETY: close_range on fd numbers only; this child owns
                // copies of them and uses none but `keep` and 0-2.
                unsafe {
                    libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
                    libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
                }
                let line = (|| -> Result<String, Error> {
                    unshare_mounts()?;
                    enter::pivot_into(root, binds)?;
                    enter::drop_privileges(DEFAULT_ID, DEFAULT_ID)?;
                    let mut names: Vec<String> = std::fs::read_dir("/")
                        .map_err(|e| Error::Io("/".into(), e))?
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    let kernel = std::fs::read_to_string("/kernel").unwrap_or_default();
                    let create = std::fs::File::create("/new").is_ok();
                    let disk_write = std::fs::OpenOptions::new().write(true).open("/disk0").is_ok();
                    Ok(format!(
                        "root={} kernel={} uid={} gid={} eff={} bnd={} nnp={} create={create} disk_write={disk_write}",
                        names.join(","),
                        kernel.trim(),
                        nix::unistd::getuid(),
                        nix::unistd::getgid(),
                        caps::read(None, caps::CapSet::Effective).map_or(99, |c| c.len()),
                        caps::read(None, caps::CapSet::Bounding).map_or(99, |c| c.len()),
                        nix::sys::prctl::get_no_new_privs().unwrap_or(false),
                    ))
                })()
                .unwrap_or_else(|e| format!("error {e}"));
                // SAFETY: a plain write of a buffer we own to our pipe.
                unsafe { libc::write(w.as_raw_fd(), line.as_ptr().cast(), line.len()) };
                // SAFETY: ends the forked child without running the test
                // harness's exit handlers.
                unsafe { libc::_exit(0) };
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut out = String::new();
                std::fs::File::from(r).read_to_string(&mut out).unwrap();
                waitpid(child, None).unwrap();
                out
            }
        }
    }

    fn unshare_mounts() -> Result<(), Error> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| Error::Io("unshare".into(), e.into()))
    }

    #[test]
    fn a_jail_holds_only_its_files_and_leaves_no_privilege() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test makes namespaces, mounts and cgroups: run it as root");
        }
        let _one = one_at_a_time();
        let dir = scratch("enter");
        let files = scratch("files");
        std::fs::write(files.join("vmlinuz"), "kernel-bytes\n").unwrap();
        std::fs::write(files.join("disk.img"), "disk").unwrap();
        let mut cfg = config(files.join("vmlinuz"), files.join("disk.img"));
        let binds = plan(&mut cfg);
        assert_eq!(cfg.kernel, Path::new("/kernel"));
        assert_eq!(cfg.disks[0].path, Path::new("/disk0"));
        let jail = prepare(&spec(&dir), &binds).unwrap();
        let cg = jail.cgroup.clone().unwrap();
        let stats = cg.stats();
        assert_eq!(stats.memory_limit, Some(64 << 20), "{cg:?}");
        assert_eq!(stats.pids_limit, Some(16), "{cg:?}");
        let seen = look_from_inside(&jail.root(), &binds);
        assert_eq!(
            seen,
            "root=dev,disk0,kernel kernel=kernel-bytes uid=65534 gid=65534 eff=0 bnd=0 nnp=true create=false disk_write=false"
        );
        // The binds were the child's: here the placeholders are empty.
        assert_eq!(std::fs::read(jail.root().join("kernel")).unwrap(), b"");
        let (folder, record) = (jail.folder.clone(), jail.record.clone());
        drop(jail);
        assert!(!folder.exists() && !record.exists() && !cg.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&files).unwrap();
    }

    #[test]
    fn gc_removes_the_jails_of_dead_uvms_only() {
        let _one = one_at_a_time();
        let dir = scratch("gc");
        let files = scratch("gc-files");
        std::fs::write(files.join("k"), "k").unwrap();
        std::fs::write(files.join("d"), "d").unwrap();
        let mut cfg = config(files.join("k"), files.join("d"));
        let binds = plan(&mut cfg);
        let jail = prepare(&spec(&dir), &binds).unwrap();
        let cg = jail.cgroup.clone().unwrap();
        // This process lives: gc leaves its jail alone.
        let _ = gc();
        assert!(jail.root().join("kernel").exists() && cg.exists());
        // A uvm that was killed: its record names a process that is gone.
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&jail.record).unwrap()).unwrap();
        v["owner"] = serde_json::json!([u32::MAX >> 2, 1]);
        std::fs::write(&jail.record, v.to_string()).unwrap();
        let removed = gc();
        assert!(
            removed.iter().any(|r| r.starts_with("jail folder"))
                && removed.iter().any(|r| r.starts_with("jail cgroup")),
            "{removed:?}"
        );
        assert!(!jail.folder.exists() && !jail.record.exists() && !cg.exists());
        std::mem::forget(jail);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&files).unwrap();
    }
}
