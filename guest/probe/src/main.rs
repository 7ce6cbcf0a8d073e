//! uvm-probe: `uvm-probe FACTS_JSON` runs every probe and prints the
//! answers as one JSON array; `uvm-probe getpid N`, `cpu N`, `disk PATH MIB`, `net ADDR PORT MIB` and
//! `uvm-probe exits N` (in a VM) are the loops the benchmarks time.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::time::Instant;

use nix::errno::Errno;

mod vsock;
use uvm_probe::{Answer, HostFacts};

fn answer(probe: &str, answer: impl Into<String>, evidence: impl Into<String>) -> Answer {
    Answer {
        probe: probe.into(),
        answer: answer.into(),
        evidence: evidence.into(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// Whether `/proc/PID` is the host's process: same pid and same comm.
fn host_process_visible(h: &HostFacts) -> (bool, String) {
    match read(&format!("/proc/{}/comm", h.pid)) {
        Some(c) if c.trim() == h.comm => (true, format!("/proc/{} is {}", h.pid, h.comm)),
        Some(c) => (
            false,
            format!("/proc/{} is {}, not the host's {}", h.pid, c.trim(), h.comm),
        ),
        None => (false, format!("no /proc/{}", h.pid)),
    }
}

fn host_pids(h: &HostFacts) -> Answer {
    let (seen, ev) = host_process_visible(h);
    let count = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0);
    answer(
        "host_pids",
        yes_no(seen),
        format!("{ev}; {count} processes visible"),
    )
}

fn signal_host(h: &HostFacts) -> Answer {
    let (seen, ev) = host_process_visible(h);
    if !seen {
        return answer("signal_host", "no", ev);
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(h.pid), None) {
        Ok(()) => answer(
            "signal_host",
            "yes",
            format!("kill({}, 0) succeeded", h.pid),
        ),
        Err(e) => answer("signal_host", "no", format!("kill({}, 0): {e}", h.pid)),
    }
}

fn netifs() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let mac = read(&format!("/sys/class/net/{name}/address")).unwrap_or_default();
                    (name, mac.trim().to_string())
                })
                .filter(|(n, _)| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn host_netifs(h: &HostFacts) -> Answer {
    let mine = netifs();
    let shared: Vec<&String> = mine
        .iter()
        .filter(|i| h.netifs.contains(i))
        .map(|(n, _)| n)
        .collect();
    let names: Vec<&String> = mine.iter().map(|(n, _)| n).collect();
    answer(
        "host_netifs",
        yes_no(!shared.is_empty()),
        format!("interfaces {names:?}; the host's among them: {shared:?}"),
    )
}

fn own_hostname(h: &HostFacts) -> Answer {
    let mine = nix::unistd::gethostname()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    answer(
        "own_hostname",
        yes_no(mine != h.hostname),
        format!("hostname {mine:?}, the host's {:?}", h.hostname),
    )
}

fn load_module() -> Answer {
    // An empty image: a caller allowed to load modules gets a format error
    // from the loader, one who is not gets EPERM before any parsing.
    let params = CString::default();
    // SAFETY: init_module(2) with a null image of length 0 and a valid
    // empty parameter string; the kernel reads nothing through the null.
    let r = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            std::ptr::null::<u8>(),
            0usize,
            params.as_ptr(),
        )
    };
    let e = Errno::last();
    if r == 0 {
        return answer("load_module", "yes", "init_module accepted an empty image?");
    }
    let permitted = !matches!(e, Errno::EPERM | Errno::EACCES | Errno::ENOSYS);
    answer(
        "load_module",
        yes_no(permitted),
        format!("init_module: {e}"),
    )
}

/// A block device this system has (from /sys/dev/block), not a ram or loop
/// device: (name, major, minor).
fn some_block_device() -> Option<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = fs::read_dir("/sys/dev/block")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let mm = e.file_name().to_string_lossy().into_owned();
            let (ma, mi) = mm.split_once(':')?;
            let target = fs::read_link(e.path()).ok()?;
            let name = target.file_name()?.to_string_lossy().into_owned();
            Some((name, ma.parse().ok()?, mi.parse().ok()?))
        })
        .filter(|(n, _, _)| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    v.sort();
    v.into_iter().next()
}

fn mknod_block() -> Answer {
    let Some((name, ma, mi)) = some_block_device() else {
        return answer(
            "mknod_block",
            "no",
            "no block device listed in /sys/dev/block",
        );
    };
    let dev = nix::sys::stat::makedev(ma, mi);
    // /dev first: /tmp may be mounted nodev, which would hide the answer.
    let mut made = None;
    let mut refused = None;
    for dir in ["/dev", "/tmp"] {
        let node = format!("{dir}/uvm-probe-blk-{}", std::process::id());
        let _ = fs::remove_file(&node);
        match nix::sys::stat::mknod(
            node.as_str(),
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            dev,
        ) {
            Ok(()) => {
                made = Some(node);
                break;
            }
            Err(e) => refused = Some(e),
        }
    }
    let Some(node) = made else {
        return answer(
            "mknod_block",
            "no",
            format!(
                "mknod {name} ({ma}:{mi}): {}",
                refused.map_or("?".into(), |e| e.to_string())
            ),
        );
    };
    let r = fs::File::open(&node).and_then(|mut f| {
        let mut buf = [0u8; 512];
        f.read_exact(&mut buf).map(|_| buf)
    });
    let _ = fs::remove_file(&node);
    match r {
        Ok(_) => answer(
            "mknod_block",
            "yes",
            format!("made {name} ({ma}:{mi}) and read 512 bytes"),
        ),
        Err(e) => answer(
            "mknod_block",
            "no",
            format!("made {name} ({ma}:{mi}), open/read: {e}"),
        ),
    }
}

fn mount() -> Answer {
    let dir = format!("/tmp/uvm-probe-mnt-{}", std::process::id());
    let _ = fs::create_dir(&dir);
    let r = nix::mount::mount(
        Some("tmpfs"),
        dir.as_str(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    );
    let a = match r {
        Ok(()) => {
            let _ = nix::mount::umount(dir.as_str());
            answer("mount", "yes", "mounted a tmpfs")
        }
        Err(e) => answer("mount", "no", format!("mount tmpfs: {e}")),
    };
    let _ = fs::remove_dir(&dir);
    a
}

fn set_clock() -> Answer {
    // Setting the tick to the value it has changes nothing, yet needs
    // CAP_SYS_TIME: a permission test with no effect on the clock.
    // SAFETY: timex is plain data; adjtimex(2) with modes 0 only reads.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, writable timex.
    if unsafe { libc::adjtimex(&mut t) } < 0 {
        return answer(
            "set_clock",
            "no",
            format!("adjtimex (read): {}", Errno::last()),
        );
    }
    let tick = t.tick;
    // SAFETY: as above.
    let mut set: libc::timex = unsafe { std::mem::zeroed() };
    set.modes = libc::ADJ_TICK;
    set.tick = tick;
    // SAFETY: a valid timex setting only the tick, to its current value.
    if unsafe { libc::adjtimex(&mut set) } < 0 {
        answer(
            "set_clock",
            "no",
            format!("adjtimex(ADJ_TICK): {}", Errno::last()),
        )
    } else {
        answer(
            "set_clock",
            "yes",
            format!("adjtimex(ADJ_TICK={tick}) accepted"),
        )
    }
}

fn host_file(h: &HostFacts) -> Answer {
    match read(&h.secret_path) {
        Some(s) if s.trim() == h.secret => answer(
            "host_file",
            "yes",
            format!("read the host's {}", h.secret_path),
        ),
        Some(_) => answer(
            "host_file",
            "no",
            format!("{} exists but holds something else", h.secret_path),
        ),
        None => answer("host_file", "no", format!("no {}", h.secret_path)),
    }
}

fn host_kernel(h: &HostFacts) -> Answer {
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let boot_id = read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let same = boot_id.trim() == h.boot_id;
    answer(
        "host_kernel",
        yes_no(same),
        format!(
            "kernel {} boot id {}…, the host's {} {}…",
            release.trim(),
            boot_id.trim().get(..8).unwrap_or(""),
            h.kernel_release,
            h.boot_id.get(..8).unwrap_or("")
        ),
    )
}

fn kcore_mem() -> Answer {
    let mut seen = Vec::new();
    for p in ["/proc/kcore", "/dev/mem"] {
        match fs::metadata(p) {
            Ok(m) if m.len() > 0 || p == "/dev/mem" => {
                let open = fs::File::open(p)
                    .map(|_| "opened".to_string())
                    .unwrap_or_else(|e| format!("open: {e}"));
                // A masked path is /dev/null bound over it: a char device 1:3.
                use std::os::unix::fs::MetadataExt;
                let masked = m.rdev() == nix::sys::stat::makedev(1, 3);
                if masked {
                    seen.push(format!("{p} masked"));
                } else {
                    seen.push(format!("{p} present, {open}"));
                }
            }
            Ok(_) => seen.push(format!("{p} empty")),
            Err(e) => seen.push(format!("{p}: {e}")),
        }
    }
    let yes = seen.iter().any(|s| s.ends_with("opened"));
    answer("kcore_mem", yes_no(yes), seen.join("; "))
}

fn status_field(name: &str) -> String {
    read("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn capabilities() -> Answer {
    let eff = status_field("CapEff");
    let n = u64::from_str_radix(&eff, 16)
        .map(u64::count_ones)
        .unwrap_or(0);
    answer("capabilities", format!("{n}"), format!("CapEff {eff}"))
}

fn seccomp() -> Answer {
    let mode = status_field("Seccomp");
    let name = match mode.as_str() {
        "0" => "none",
        "1" => "strict",
        "2" => "filter",
        _ => "?",
    };
    answer(
        "seccomp",
        name,
        format!(
            "Seccomp: {mode}, {} filters",
            status_field("Seccomp_filters")
        ),
    )
}

/// A limit of this process's cgroup: `v2file` on the unified hierarchy, or
/// `v1file` in controller `v1ctrl`'s; (value, file) when one is set.
fn cgroup_limit(v1ctrl: &str, v1file: &str, v2file: &str) -> Option<(u64, String)> {
    let cg = read("/proc/self/cgroup")?;
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_end_matches('/');
        let file = if ctrls.is_empty() {
            format!("/sys/fs/cgroup{path}/{v2file}")
        } else if ctrls.split(',').any(|c| c == v1ctrl) {
            format!("/sys/fs/cgroup/{v1ctrl}{path}/{v1file}")
        } else {
            continue;
        };
        let Some(v) = read(&file) else { continue };
        // "max", or v1's page-aligned "unlimited", is no limit.
        if let Ok(n) = v.trim().parse::<u64>() {
            if n < 1 << 60 {
                return Some((n, file));
            }
        }
    }
    None
}

fn mem_total() -> u64 {
    read("/proc/meminfo")
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn memory_limit(h: &HostFacts) -> Answer {
    let _ = h;
    let mib = |b: u64| b >> 20;
    let total = mem_total();
    // Enforced: a child touching twice the cgroup's limit, or more than
    // all of a small machine's RAM, must not survive it.
    let (kind, want, seen) = match cgroup_limit("memory", "memory.limit_in_bytes", "memory.max") {
        Some((n, file)) => ("cgroup", n * 2, format!("limit {} MiB in {file}", mib(n))),
        None if total < 4 << 30 => (
            "RAM",
            total + (16 << 20),
            format!("no cgroup limit; MemTotal {} MiB", mib(total)),
        ),
        None => {
            return answer(
                "memory_limit",
                "none",
                format!(
                    "no cgroup limit; MemTotal {} MiB, too much to exhaust",
                    mib(total)
                ),
            )
        }
    };
    let enforced = match fork_touch(want) {
        Ok(survived) => !survived,
        Err(e) => return answer("memory_limit", "?", format!("fork: {e}")),
    };
    answer(
        "memory_limit",
        format!(
            "{kind}, {}",
            if enforced { "enforced" } else { "not enforced" }
        ),
        format!(
            "{seen}; a child touching {} MiB {}",
            mib(want),
            if enforced { "was killed" } else { "survived" }
        ),
    )
}

/// Forks a child that touches `bytes` of memory; whether it exited normally.
fn fork_touch(bytes: u64) -> Result<bool, Errno> {
    // SAFETY: the child only allocates, writes and exits; this program
    // has no other threads whose locks it could inherit.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            let n = usize::try_from(bytes).unwrap_or(usize::MAX);
            let mut v = vec![0u8; n];
            // One write per page makes each page real.
            for i in (0..n).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
            std::process::exit(0);
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None)?;
            Ok(matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)))
        }
    }
}

fn fork_bomb(h: &HostFacts) -> Answer {
    let max = h.fork_max.max(1);
    let mut kids = Vec::new();
    let mut refused = None;
    for _ in 0..max {
        // SAFETY: the child only pauses until it is killed.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => loop {
                nix::unistd::pause();
            },
            Ok(nix::unistd::ForkResult::Parent { child }) => kids.push(child),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let got = kids.len();
    for k in &kids {
        let _ = nix::sys::signal::kill(*k, nix::sys::signal::Signal::SIGKILL);
    }
    for k in &kids {
        let _ = nix::sys::wait::waitpid(*k, None);
    }
    let pids_max = cgroup_limit("pids", "pids.max", "pids.max").map(|(n, _)| n);
    let bounded = refused.is_some();
    answer(
        "fork_bomb",
        if bounded {
            format!("stopped at {got}")
        } else {
            format!("all {got}")
        },
        format!(
            "forked {got} of {max}{}; pids.max {}",
            refused.map(|e| format!(", then {e}")).unwrap_or_default(),
            pids_max.map_or("none".into(), |n| n.to_string())
        ),
    )
}

/// A port no device of uvm's or QEMU microvm's answers.
const UNCLAIMED_PORT: u16 = 0x2e0;
/// A guest-physical address in the MMIO hole that no device claims.
const UNCLAIMED_MMIO: i64 = 0xd080_0000;

/// Microseconds per VM exit of each kind: CPUID, an `in` from an unclaimed
/// port, a read of unclaimed MMIO. Needs root in a VM (iopl, /dev/mem).
fn exits(n: u64) -> Result<(f64, f64, f64), String> {
    #[allow(clippy::cast_precision_loss)]
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(std::arch::x86_64::__cpuid(
            u32::try_from(i % 2).unwrap_or(0),
        ));
    }
    let cpuid = per(t);
    // SAFETY: iopl(2) only changes this process's I/O privilege level.
    if unsafe { libc::iopl(3) } != 0 {
        return Err(format!("iopl: {}", Errno::last()));
    }
    let t = Instant::now();
    for _ in 0..n {
        let v: u8;
        // SAFETY: reading an unclaimed port has no effect; iopl(3) allows it.
        unsafe {
            std::arch::asm!("in al, dx", out("al") v, in("dx") UNCLAIMED_PORT, options(nomem, nostack))
        };
        std::hint::black_box(v);
    }
    let pio = per(t);
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
        .map_err(|e| format!("/dev/mem: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of one page of /dev/mem; nothing else
    // refers to it, and it is unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            UNCLAIMED_MMIO,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap /dev/mem: {}", Errno::last()));
    }
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: p maps a readable page; a volatile read so each one exits.
        std::hint::black_box(unsafe { std::ptr::read_volatile(p.cast::<u32>()) });
    }
    let mmio = per(t);
    // SAFETY: p came from mmap above with this length.
    unsafe { libc::munmap(p, 4096) };
    Ok((cpuid, pio, mmio))
}

/// Sequential write (fsync'd) and read of `mib` MiB at `path`, in MB/s.
/// The read is O_DIRECT where the filesystem allows it, so that it comes
/// from the device and not the page cache just filled.
fn disk(path: &str, mib: usize) -> Result<(f64, f64), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const CHUNK: usize = 1 << 20;
    let layout = std::alloc::Layout::from_size_align(CHUNK, 4096).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; CHUNK];
    let t = Instant::now();
    let mut f = fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
    for _ in 0..mib {
        f.write_all(&buf)
            .map_err(|e| format!("writing {path}: {e}"))?;
    }
    f.sync_all().map_err(|e| format!("fsync {path}: {e}"))?;
    drop(f);
    let mb = (mib * CHUNK) as f64 / 1e6;
    let write = mb / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let direct = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let mut f = match direct {
        Ok(f) => f,
        Err(_) => fs::File::open(path).map_err(|e| format!("{path}: {e}"))?,
    };
    // SAFETY: layout has a non-zero size; the block is freed below.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        return Err("out of memory".into());
    }
    // SAFETY: p points to CHUNK writable bytes, aligned for O_DIRECT.
    let aligned = unsafe { std::slice::from_raw_parts_mut(p, CHUNK) };
    let mut total = 0usize;
    let r = loop {
        match f.read(aligned) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n,
            Err(e) => break Err(format!("reading {path}: {e}")),
        }
    };
    // SAFETY: p was allocated above with this layout.
    unsafe { std::alloc::dealloc(p, layout) };
    r?;
    let read = total as f64 / 1e6 / t.elapsed().as_secs_f64();
    let _ = fs::remove_file(path);
    Ok((write, read))
}

fn run_probes(h: &HostFacts) -> Vec<Answer> {
    vec![
        host_pids(h),
        signal_host(h),
        host_netifs(h),
        own_hostname(h),
        load_module(),
        mknod_block(),
        mount(),
        set_clock(),
        host_file(h),
        host_kernel(h),
        kcore_mem(),
        capabilities(),
        seccomp(),
        memory_limit(h),
        fork_bomb(h),
    ]
}

/// TCP throughput to a host end (`uvm bench`'s sink): MIB MiB sent, then
/// the write side closed and the sink's one-line answer awaited, so the time
/// covers every byte having reached the host. MB/s, MB = 10^6 bytes.
fn net(addr: &str, port: &str, mib: usize) -> Result<f64, String> {
    use std::io::{Read, Write};
    const CHUNK: usize = 64 << 10;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let buf = vec![0xa5u8; CHUNK];
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect((addr, port))
        .map_err(|e| format!("connecting to {addr}:{port}: {e}"))?;
    for _ in 0..mib * ((1 << 20) / CHUNK) {
        s.write_all(&buf).map_err(|e| format!("sending: {e}"))?;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("closing: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let expect = format!("got {}", mib << 20);
    if answer.trim() != expect {
        return Err(format!("the sink answered {answer:?}, not {expect:?}"));
    }
    #[allow(clippy::cast_precision_loss)]
    Ok((mib << 20) as f64 / 1e6 / t.elapsed().as_secs_f64())
}

fn main() {
    uvm_protocol::abort_on_panic();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |s: Option<&String>| s.and_then(|n| n.parse::<u64>().ok()).unwrap_or(1_000_000);
    match args.first().map(String::as_str) {
        // Syscall cost: nanoseconds per getpid(2).
        Some("getpid") => {
            let n = count(args.get(1));
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(nix::unistd::getpid());
            }
            #[allow(clippy::cast_precision_loss)]
            let per = t.elapsed().as_nanos() as f64 / n.max(1) as f64;
            println!("{per:.1}");
        }
        // Compute: seconds for a fixed integer workload.
        Some("cpu") => {
            let n = count(args.get(1));
            let t = Instant::now();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for i in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x = x.wrapping_add(i);
            }
            std::hint::black_box(x);
            println!("{:.6}", t.elapsed().as_secs_f64());
        }
        Some("disk") => {
            let path = args
                .get(1)
                .map_or("/var/tmp/uvm-probe-disk", String::as_str);
            let mib = usize::try_from(count(args.get(2))).unwrap_or(16).min(4096);
            match disk(path, mib) {
                Ok((w, r)) => println!("{w:.1} {r:.1}"),
                Err(e) => {
                    eprintln!("uvm-probe: disk: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some("net") => {
            let (Some(addr), Some(port)) = (args.get(1), args.get(2)) else {
                eprintln!("uvm-probe: usage: uvm-probe net ADDR PORT MIB");
                std::process::exit(2);
            };
            let mib = usize::try_from(count(args.get(3))).unwrap_or(16).min(4096);
            match net(addr, port, mib) {
                Ok(mbs) => println!("{mbs:.1}"),
                Err(e) => {
                    eprintln!("uvm-probe: net: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some(cmd @ ("vsock-recv" | "vsock-send" | "vsock-echo" | "vsock-refused")) => {
            let num = |i: usize| args.get(i).and_then(|n| n.parse::<u32>().ok());
            let r = match (cmd, num(1), num(2)) {
                ("vsock-recv", Some(port), _) => vsock::recv(port),
                ("vsock-echo", Some(port), n) => vsock::echo(port, n.unwrap_or(1) as usize),
                ("vsock-send", Some(cid), Some(port)) => vsock::send(cid, port),
                ("vsock-refused", Some(cid), Some(port)) => vsock::refused(cid, port),
                _ => Err("usage: vsock-recv PORT | vsock-echo PORT N | vsock-send CID PORT | vsock-refused CID PORT".into()),
            };
            if let Err(e) = r {
                eprintln!("uvm-probe: {cmd}: {e}");
                std::process::exit(1);
            }
        }
        Some("exits") => match exits(count(args.get(1))) {
            Ok((c, p, m)) => println!("{c:.3} {p:.3} {m:.3}"),
            Err(e) => {
                eprintln!("uvm-probe: exits: {e}");
                std::process::exit(1);
            }
        },
        Some(json) => match serde_json::from_str::<HostFacts>(json) {
            Ok(h) => {
                let answers = run_probes(&h);
                println!("{}", serde_json::to_string(&answers).unwrap_or_default());
            }
            Err(e) => {
                eprintln!("uvm-probe: bad host facts: {e}");
                std::process::exit(2);
            }
        },
        None => {
            eprintln!(
                "usage: uvm-probe HOST_FACTS_JSON | getpid N | cpu N | disk PATH MIB | net ADDR PORT MIB | exits N"
            );
            std::process::exit(2);
        }
    }
}
