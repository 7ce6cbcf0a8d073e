//! `uvm bench` (no subcommand): the same workload at each isolation level,
//! with references in the same run: runc on the host beside the container
//! level, QEMU's microvm (same kernel, initramfs and root image) beside the
//! vm level. Metrics: start-to-exit latency of `true` (median, p90), PSS of
//! everything the level runs, syscall cost (getpid in the probe binary), a
//! fixed compute loop, sequential disk write and read, TCP throughput to a
//! sink on the host (across uvm's bridge; runc and QEMU are put on it too,
//! `net.rs`), and the round trip
//! of a VM exit at the vm levels (CPUID, port I/O, MMIO).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{bridge_gateway, QemuTap, RuncNet, Sink};
use super::{median, p90};
use crate::error::Error;
use crate::guest_image;
use crate::run::{self, probe::probe_rootfs, Isolation};

#[derive(Debug, Clone, clap::Args)]
pub struct LevelsArgs {
    /// A short run (2 start-ups per target, smaller loops), for demos
    #[arg(long)]
    pub quick: bool,
    /// Start-ups per target [default: 10, or 2 with --quick]
    #[arg(long)]
    pub runs: Option<usize>,
    #[command(flatten)]
    pub select: crate::run::LevelSelection,
    /// Leave out the references (runc, QEMU microvm)
    #[arg(long)]
    pub no_reference: bool,
    /// Also write every sample as JSON here
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one SVG plot per metric into this folder
    #[arg(long, value_name = "DIR")]
    pub plot_dir: Option<PathBuf>,
}

/// What is measured, with its unit and whether less is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Start,
    Memory,
    Getpid,
    Cpu,
    DiskWrite,
    DiskRead,
    ExitCpuid,
    ExitPio,
    ExitMmio,
    VmmOverhead,
    Net,
}

impl Metric {
    pub const ALL: [Metric; 11] = [
        Metric::Start,
        Metric::Memory,
        Metric::VmmOverhead,
        Metric::Getpid,
        Metric::Cpu,
        Metric::DiskWrite,
        Metric::DiskRead,
        Metric::Net,
        Metric::ExitCpuid,
        Metric::ExitPio,
        Metric::ExitMmio,
    ];
    pub fn key(self) -> &'static str {
        match self {
            Metric::Start => "start_s",
            Metric::Memory => "pss_mib",
            Metric::VmmOverhead => "vmm_overhead_mib",
            Metric::Getpid => "getpid_ns",
            Metric::Cpu => "cpu_s",
            Metric::DiskWrite => "disk_write_mb_s",
            Metric::DiskRead => "disk_read_mb_s",
            Metric::Net => "net_tx_mb_s",
            Metric::ExitCpuid => "exit_cpuid_us",
            Metric::ExitPio => "exit_pio_us",
            Metric::ExitMmio => "exit_mmio_us",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Metric::Start => "start to exit of `true` (s)",
            Metric::Memory => "memory: PSS of all it runs (MiB)",
            Metric::VmmOverhead => "VMM memory outside guest RAM (MiB)",
            Metric::Getpid => "getpid() (ns)",
            Metric::Cpu => "fixed compute loop (s)",
            Metric::DiskWrite => "sequential write (MB/s)",
            Metric::DiskRead => "sequential read (MB/s)",
            Metric::Net => "TCP to the host end (MB/s)",
            Metric::ExitCpuid => "CPUID round trip (us)",
            Metric::ExitPio => "port I/O exit, unclaimed port (us)",
            Metric::ExitMmio => "MMIO exit, unclaimed address (us)",
        }
    }
    fn higher_is_better(self) -> bool {
        matches!(self, Metric::DiskWrite | Metric::DiskRead | Metric::Net)
    }
}

/// Who runs the workload: a level of uvm's, or a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Level(Isolation),
    Runc,
    Qemu,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Level(l) => l.name(),
            Target::Runc => "runc",
            Target::Qemu => "qemu-microvm",
        }
    }
    /// The uvm level a reference stands beside.
    fn beside(self) -> Option<Target> {
        match self {
            Target::Runc => Some(Target::Level(Isolation::Container)),
            Target::Qemu => Some(Target::Level(Isolation::Vm)),
            Target::Level(_) => None,
        }
    }
}

/// Every sample, by target and metric.
pub type Samples = BTreeMap<Target, BTreeMap<Metric, Vec<f64>>>;

/// The measuring workload: the lines it prints are parsed by [`parse_lines`].
/// `sink`: where the host's TCP sink answers this target.
fn workload_script(quick: bool, in_vm: bool, sink: (Ipv4Addr, u16)) -> String {
    let (calls, loops, mib, net_mib) = if quick {
        (100_000, 10_000_000, 8, 8)
    } else {
        (2_000_000, 200_000_000, 64, 256)
    };
    let (addr, port) = sink;
    let mut s = format!(
        "echo bench-ready; sleep 1; \
         echo getpid $(uvm-probe getpid {calls}); echo cpu $(uvm-probe cpu {loops}); \
         d=/var/tmp; [ -w $d ] || d=/tmp; echo disk $(uvm-probe disk $d/uvm-bench.$$ {mib}); \
         echo net $(uvm-probe net {addr} {port} {net_mib})"
    );
    if in_vm {
        s.push_str(&format!(
            "; echo exits $(uvm-probe exits {})",
            if quick { 1000 } else { 20000 }
        ));
    }
    s
}

/// The workload's lines (any `\r` already gone) as metric samples.
pub fn parse_lines(text: &str) -> BTreeMap<Metric, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let num = |s: &str| s.trim().parse::<f64>().ok();
        match key {
            "getpid" => num(rest).map(|v| m.insert(Metric::Getpid, v)),
            "cpu" => num(rest).map(|v| m.insert(Metric::Cpu, v)),
            "net" => num(rest).map(|v| m.insert(Metric::Net, v)),
            "disk" => {
                let v: Vec<f64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if let [w, r] = v[..] {
                    m.insert(Metric::DiskWrite, w);
                    m.insert(Metric::DiskRead, r);
                }
                None
            }
            "exits" => {
                let v: Vec<f64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if let [c, p, mm] = v[..] {
                    m.insert(Metric::ExitCpuid, c);
                    m.insert(Metric::ExitPio, p);
                    m.insert(Metric::ExitMmio, mm);
                }
                None
            }
            _ => None,
        };
    }
    m
}

/// Sum of PSS (KiB) of `root` and all its descendants.
fn tree_pss_kib(root: u32) -> u64 {
    let mut parent_of = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The ppid is the second field after the parenthesised comm.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Pss:")?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// How long one start-up run may take before it counts as hung.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to its end: wall time and stdout. Fails on a non-zero status,
/// and kills it (an error that says so) after `limit`.
fn time_run_within(
    mut cmd: Command,
    what: &str,
    limit: Duration,
) -> Result<(Duration, String), Error> {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Io(format!("starting {what}"), e))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Usage(format!(
                    "bench: {what} did not finish within {} s",
                    limit.as_secs()
                )));
            }
            Err(e) => return Err(Error::Io(format!("waiting for {what}"), e)),
        }
    };
    let took = start.elapsed();
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        return Err(Error::Usage(format!(
            "bench: {what} failed ({status}): {}",
            stderr_tail(&err)
        )));
    }
    Ok((took, out.replace('\r', "")))
}

/// The last lines of a failed run's stderr: for a VM, why it ended (a
/// timeout, a triple fault) comes before the console's tail.
fn stderr_tail(err: &str) -> String {
    let lines: Vec<&str> = err
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(STDERR_TAIL)..].join("\n  ")
}

/// Lines of a failed run's stderr shown with its error.
const STDERR_TAIL: usize = 12;

fn time_run(cmd: Command, what: &str) -> Result<(Duration, String), Error> {
    time_run_within(cmd, what, RUN_LIMIT)
}

/// Runs the measuring workload: PSS once it says it is ready, then its lines.
/// With `guest_ram`, the child is a VMM with that much guest RAM, and its
/// resident memory outside that RAM is measured too.
fn measure_run(
    mut cmd: Command,
    what: &str,
    guest_ram: Option<u64>,
) -> Result<BTreeMap<Metric, f64>, Error> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Io(format!("starting {what}"), e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Usage(format!("bench: {what}: no stdout")))?;
    let mut text = String::new();
    let mut pss = None;
    let mut overhead = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains("bench-ready") && pss.is_none() {
            pss = Some(tree_pss_kib(child.id()));
            if let Some(mem) = guest_ram {
                let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id()))
                    .unwrap_or_default();
                overhead = Some(super::rss_outside_guest_ram(&smaps, mem));
            }
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child
        .wait()
        .map_err(|e| Error::Io(format!("waiting for {what}"), e))?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        return Err(Error::Usage(format!(
            "bench: {what} failed ({status}): {}",
            stderr_tail(&err)
        )));
    }
    let mut m = parse_lines(&text.replace('\r', ""));
    #[allow(clippy::cast_precision_loss)]
    if let Some(k) = pss {
        m.insert(Metric::Memory, k as f64 / 1024.0);
    }
    #[allow(clippy::cast_precision_loss)]
    if let Some(k) = overhead {
        m.insert(Metric::VmmOverhead, k as f64 / 1024.0);
    }
    Ok(m)
}

/// Guest RAM of every VM here: `uvm run`'s default workload memory plus the
/// guest overhead it adds, which QEMU is given too.
const VM_RAM: u64 = run::vm::DEFAULT_WORKLOAD_MEMORY + run::vm::GUEST_OVERHEAD;

/// What every target needs: paths to the binaries, images and bundle.
struct Setup {
    uvm: PathBuf,
    probe: PathBuf,
    rootfs: PathBuf,
    cache: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    image: Option<PathBuf>,
    bundle: Option<PathBuf>,
    quick: bool,
}

impl Setup {
    /// `bridged`: on uvm's bridge (the measuring run; start-ups have no network).
    fn uvm_run(&self, level: Isolation, name: &str, argv: &[&str], bridged: bool) -> Command {
        let mut c = Command::new(&self.uvm);
        c.args([
            "run",
            "-i",
            level.name(),
            "--name",
            name,
            "--timeout",
            "600",
            "--cache-dir",
        ])
        .arg(&self.cache);
        if level != Isolation::Process {
            c.arg("--rootfs").arg(&self.rootfs);
            if bridged {
                c.args(["--net", "bridge"]);
            }
        }
        c.arg("--").args(argv);
        // At the process level the probe binary is the host's copy.
        if level == Isolation::Process {
            let dir = self
                .probe
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let path = format!(
                "{}:{}",
                dir.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            c.env("PATH", path);
        }
        c
    }

    /// runc on a bundle of the same root folder, with `argv` as its process,
    /// in the network namespace `netns` when given.
    fn runc(&self, name: &str, argv: &[&str], netns: Option<&RuncNet>) -> Result<Command, Error> {
        let bundle = self
            .bundle
            .as_ref()
            .ok_or_else(|| Error::Usage("bench: no runc bundle".into()))?;
        let cfg_path = bundle.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| Error::Io(format!("reading {}", cfg_path.display()), e))?;
        let mut cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Usage(format!("bench: runc spec: {e}")))?;
        cfg["process"]["args"] = serde_json::json!(argv);
        cfg["process"]["terminal"] = serde_json::json!(false);
        cfg["root"]["path"] = serde_json::json!(self.rootfs);
        cfg["root"]["readonly"] = serde_json::json!(true);
        let namespaces = cfg["linux"]["namespaces"]
            .as_array_mut()
            .ok_or_else(|| Error::Usage("bench: runc spec has no namespaces".into()))?;
        for ns in namespaces.iter_mut().filter(|n| n["type"] == "network") {
            *ns = match netns {
                Some(n) => serde_json::json!({"type": "network", "path": n.path()}),
                None => serde_json::json!({"type": "network"}),
            };
        }
        // Writes go to the filesystem the container level's overlay upper
        // directory is on (the runtime's state folder), so the disk metric
        // compares runtimes, not a tmpfs with a disk.
        let scratch = self.runc_scratch();
        std::fs::create_dir_all(&scratch).map_err(|e| Error::Cache(scratch.clone(), e))?;
        let mounts = cfg["mounts"]
            .as_array_mut()
            .ok_or_else(|| Error::Usage("bench: runc spec has no mounts".into()))?;
        mounts.retain(|m| m["destination"] != "/var/tmp");
        mounts.push(serde_json::json!({"destination": "/var/tmp", "type": "bind", "source": scratch, "options": ["rbind", "rw", "nosuid", "nodev"]}));
        std::fs::write(
            &cfg_path,
            serde_json::to_string_pretty(&cfg).unwrap_or_default(),
        )
        .map_err(|e| Error::Io(format!("writing {}", cfg_path.display()), e))?;
        let mut c = Command::new("runc");
        c.arg("--root")
            .arg(bundle.join("state"))
            .args(["run", "-b"])
            .arg(bundle)
            .arg(name);
        Ok(c)
    }

    /// QEMU microvm on the same kernel, initramfs and (a copy of the) root
    /// image, running `argv` under uvm-init.
    /// runc's writable /var/tmp, beside the container level's overlays.
    fn runc_scratch(&self) -> PathBuf {
        uvm_runtime::state::default_root().join(format!("bench-runc-{}", std::process::id()))
    }

    /// With `tap`, a virtio-net device on it and the guest's `ip=`.
    fn qemu(&self, argv: &[&str], disk: &Path, tap: Option<&QemuTap>) -> Command {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut extra = "root=/dev/vda".to_string();
        if let Some(t) = tap {
            extra = format!("{extra} {}", t.ip_param());
        }
        let mut c = super::qemu_microvm(&self.kernel, &self.initrd, VM_RAM, 1, &argv, &extra);
        c.args([
            "-drive",
            &format!("id=root,file={},format=raw,if=none", disk.display()),
        ])
        .args(["-device", "virtio-blk-device,drive=root"]);
        if let Some(t) = tap {
            c.args([
                "-netdev",
                &format!("tap,id=n0,ifname={},script=no,downscript=no", t.tap()),
            ])
            .args(["-device", "virtio-net-device,netdev=n0"]);
        }
        c
    }
}

fn prepare(args: &LevelsArgs, levels: &[Isolation]) -> Result<Setup, Error> {
    let uvm = std::env::current_exe().map_err(|e| Error::Io("finding uvm".into(), e))?;
    let cache = args.select.cache();
    let probe = guest_image::default_file("uvm-probe")?;
    let rootfs = probe_rootfs(&cache, &probe)?;
    let image = if levels.iter().any(|l| l.in_vm()) {
        Some(run::image::root_image(&rootfs, &cache)?)
    } else {
        None
    };
    let bundle = if !args.no_reference && levels.contains(&Isolation::Container) {
        let b = cache.join(format!("bench-runc-{}", std::process::id()));
        std::fs::create_dir_all(&b).map_err(|e| Error::Cache(b.clone(), e))?;
        let st = Command::new("runc")
            .arg("spec")
            .current_dir(&b)
            .status()
            .map_err(|e| Error::Usage(format!("bench: runc is needed for the container reference ({e}): apt-get install runc, or pass --no-reference")))?;
        if !st.success() {
            return Err(Error::Usage("bench: runc spec failed".into()));
        }
        Some(b)
    } else {
        None
    };
    Ok(Setup {
        uvm,
        probe,
        rootfs,
        cache,
        kernel: guest_image::default_file(guest_image::KERNEL)?,
        initrd: guest_image::default_file(guest_image::INITRD)?,
        image,
        bundle,
        quick: args.quick,
    })
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(b) = &self.bundle {
            let _ = std::fs::remove_dir_all(b);
            let _ = std::fs::remove_dir_all(self.runc_scratch());
        }
    }
}

/// A scratch copy of the root image for one QEMU run, removed when dropped.
struct ScratchDisk(PathBuf);

impl ScratchDisk {
    fn new(s: &Setup) -> Result<Self, Error> {
        let img = s
            .image
            .as_ref()
            .ok_or_else(|| Error::Usage("bench: no root image".into()))?;
        let p = std::env::temp_dir().join(format!("uvm-bench-qemu-{}.ext4", std::process::id()));
        run::image::private_copy(img, &p)?;
        Ok(ScratchDisk(p))
    }
}

impl Drop for ScratchDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn one_target(
    s: &Setup,
    t: Target,
    runs: usize,
    sink: &Sink,
    step: &mut dyn FnMut(&str),
) -> Result<BTreeMap<Metric, Vec<f64>>, Error> {
    let mut m: BTreeMap<Metric, Vec<f64>> = BTreeMap::new();
    let name = format!(
        "bench-{}-{}",
        t.name().replace('+', "-"),
        std::process::id()
    );
    let in_vm = matches!(
        t,
        Target::Qemu | Target::Level(Isolation::Vm | Isolation::VmContainer)
    );
    // A container, even in a VM, may not make VM exits at will: no iopl,
    // no /dev/mem.
    let exits = matches!(t, Target::Qemu | Target::Level(Isolation::Vm));
    // A process reaches the host on loopback; everything else crosses uvm's
    // bridge to its address.
    let host_end = if t == Target::Level(Isolation::Process) {
        Ipv4Addr::LOCALHOST
    } else {
        bridge_gateway()
    };
    let script = workload_script(s.quick, exits, (host_end, sink.port()));
    for i in 0..runs {
        step(&format!("{} start-up {}/{runs}", t.name(), i + 1));
        let cmd = match t {
            Target::Level(l) => s.uvm_run(l, &name, &["true"], false),
            Target::Runc => s.runc(&name, &["true"], None)?,
            Target::Qemu => {
                let d = ScratchDisk::new(s)?;
                // The reference guest sometimes hangs at boot in the nested
                // runner's emulated L1: such a run is dropped and redone once.
                let (took, _) = time_run(s.qemu(&["true"], &d.0, None), t.name()).or_else(|e| {
                    eprintln!("uvm bench: {e}; running it once more");
                    time_run(s.qemu(&["true"], &d.0, None), t.name())
                })?;
                m.entry(Metric::Start).or_default().push(took.as_secs_f64());
                continue;
            }
        };
        let (took, _) = time_run(cmd, t.name())?;
        m.entry(Metric::Start).or_default().push(took.as_secs_f64());
    }
    step(&format!("{} workload", t.name()));
    let argv = ["sh", "-c", script.as_str()];
    let got = match t {
        Target::Level(l) => measure_run(
            s.uvm_run(l, &name, &argv, true),
            t.name(),
            in_vm.then_some(VM_RAM),
        )?,
        Target::Runc => {
            let net = RuncNet::create(&name)?;
            measure_run(s.runc(&name, &argv, Some(&net))?, t.name(), None)?
        }
        Target::Qemu => {
            let d = ScratchDisk::new(s)?;
            let tap = QemuTap::create(&name)?;
            measure_run(s.qemu(&argv, &d.0, Some(&tap)), t.name(), Some(VM_RAM))?
        }
    };
    for (k, v) in got {
        m.entry(k).or_default().push(v);
    }
    Ok(m)
}

pub fn run(args: &LevelsArgs) -> Result<(Samples, String), Error> {
    let levels = args.select.levels();
    let runs = args.runs.unwrap_or(if args.quick { 2 } else { 10 }).max(1);
    let s = prepare(args, &levels)?;
    let mut targets: Vec<Target> = levels.iter().map(|l| Target::Level(*l)).collect();
    if !args.no_reference {
        if levels.contains(&Isolation::Container) {
            targets.push(Target::Runc);
        }
        if levels.contains(&Isolation::Vm) {
            targets.push(Target::Qemu);
        }
    }
    let total = targets.len() * (runs + 1);
    let mut done = 0;
    let started = std::time::Instant::now();
    let mut step = |what: &str| {
        done += 1;
        let width = 30;
        let filled = done * width / total.max(1);
        eprintln!(
            "uvm bench: [{}{}] {done}/{total} {what} (at {:.0} s)",
            "#".repeat(filled),
            ".".repeat(width - filled),
            started.elapsed().as_secs_f64()
        );
    };
    let sink = Sink::start()?;
    let mut samples = Samples::new();
    for t in &targets {
        samples.insert(*t, one_target(&s, *t, runs, &sink, &mut step)?);
    }
    if let Some(dir) = &args.plot_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("creating {}", dir.display()), e))?;
        for metric in Metric::ALL {
            let bars: Vec<(&str, Vec<f64>)> = samples
                .iter()
                .filter_map(|(t, m)| Some((t.name(), m.get(&metric)?.clone())))
                .collect();
            if bars.is_empty() {
                continue;
            }
            let path = dir.join(format!("{}.svg", metric.key()));
            super::write_plot(&path, &super::svg_bars(metric.label(), &bars))?;
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, json(&samples, runs, args.quick))
            .map_err(|e| Error::Io(format!("writing {}", path.display()), e))?;
    }
    Ok((samples.clone(), table(&samples)))
}

/// Every sample, the medians and the ratios, as JSON.
pub fn json(samples: &Samples, runs: usize, quick: bool) -> String {
    let mut targets = serde_json::Map::new();
    for (t, m) in samples {
        let mut metrics = serde_json::Map::new();
        for (k, v) in m {
            metrics.insert(k.key().into(), serde_json::json!({ "samples": v, "median": median(v.clone()), "p90": p90(v.clone()) }));
        }
        if let Some(b) = t.beside() {
            let mut ratios = serde_json::Map::new();
            for (k, v) in m {
                if let Some(u) = samples.get(&b).and_then(|bm| bm.get(k)) {
                    ratios.insert(
                        k.key().into(),
                        serde_json::json!(median(u.clone()) / median(v.clone())),
                    );
                }
            }
            metrics.insert(
                format!("ratio_{}_over_this", b.name()),
                serde_json::Value::Object(ratios),
            );
        }
        targets.insert(t.name().into(), serde_json::Value::Object(metrics));
    }
    serde_json::to_string_pretty(
        &serde_json::json!({ "runs": runs, "quick": quick, "targets": targets }),
    )
    .unwrap_or_default()
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Metrics down, targets across (medians; start-up also p90), then each
/// uvm level over its reference.
pub fn table(samples: &Samples) -> String {
    let targets: Vec<&Target> = samples.keys().collect();
    let mut out = format!("{:<38}", "metric (median)");
    for t in &targets {
        out.push_str(&format!(" {:>13}", t.name()));
    }
    out.push('\n');
    let get = |t: &Target, m: Metric| samples.get(t).and_then(|x| x.get(&m)).cloned();
    for m in Metric::ALL {
        if !targets.iter().any(|t| get(t, m).is_some()) {
            continue;
        }
        out.push_str(&format!("{:<38}", m.label()));
        for t in &targets {
            out.push_str(&format!(
                " {:>13}",
                get(t, m).map_or("-".into(), |v| fmt_num(median(v)))
            ));
        }
        out.push('\n');
        if m == Metric::Start {
            out.push_str(&format!("{:<38}", "  p90"));
            for t in &targets {
                out.push_str(&format!(
                    " {:>13}",
                    get(t, m).map_or("-".into(), |v| fmt_num(p90(v)))
                ));
            }
            out.push('\n');
        }
    }
    for r in targets.iter().filter(|t| t.beside().is_some()) {
        let b = r.beside().unwrap_or(**r);
        if !samples.contains_key(&b) {
            continue;
        }
        out.push_str(&format!(
            "\nratio {} / {} ({}):\n",
            b.name(),
            r.name(),
            "below 1 is uvm ahead on time and memory, above 1 on throughput"
        ));
        for m in Metric::ALL {
            if let (Some(u), Some(v)) = (get(&b, m), get(r, m)) {
                let ratio = median(u) / median(v);
                let ahead = if m.higher_is_better() {
                    ratio >= 1.0
                } else {
                    ratio <= 1.0
                };
                out.push_str(&format!(
                    "  {:<38} {:>6.2}{}\n",
                    m.label(),
                    ratio,
                    if ahead { "" } else { "  (behind)" }
                ));
            }
        }
    }
    out
}

pub fn main(args: &LevelsArgs) -> i32 {
    match run(args) {
        Ok((_, t)) => {
            print!("{t}");
            if let Some(d) = &args.plot_dir {
                let png = std::fs::read_dir(d).is_ok_and(|mut r| {
                    r.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png")))
                });
                let also = if png { " (and .png)" } else { "" };
                println!("plots: {}/*.svg{also}", d.display());
            }
            if let Some(j) = &args.json {
                println!("samples: {}", j.display());
            }
            0
        }
        Err(e) => {
            eprintln!("uvm bench: {e}");
            crate::vmm::shutdown::EXIT_UVM_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_why_the_vm_ended_and_the_consoles_tail() {
        let mut err = String::from("uvm run: the guest triple-faulted (CPU shutdown)\n");
        err.push_str("uvm run: the guest's console ended with:\n\n");
        for i in 0..5 {
            err.push_str(&format!("console line {i}\n"));
        }
        let t = stderr_tail(&err);
        assert!(t.starts_with("uvm run: the guest triple-faulted"), "{t}");
        assert!(t.ends_with("console line 4"), "{t}");
        assert!(!t.contains("\n  \n"), "blank lines are left out: {t}");
        let long: String = (0..40).map(|i| format!("l{i}\n")).collect();
        let t = stderr_tail(&long);
        assert_eq!(t.lines().count(), STDERR_TAIL);
        assert!(t.starts_with("l28") && t.ends_with("l39"), "{t}");
    }

    #[test]
    fn workload_lines_parse() {
        let m = parse_lines(
            "bench-ready\ngetpid 52.5\ncpu 0.123\ndisk 33.5 67.1\nnet 812.5\nexits 1.5 2.5 3.5\nnoise 7\n",
        );
        assert_eq!(m[&Metric::Getpid], 52.5);
        assert_eq!(m[&Metric::Cpu], 0.123);
        assert_eq!((m[&Metric::DiskWrite], m[&Metric::DiskRead]), (33.5, 67.1));
        assert_eq!(
            (
                m[&Metric::ExitCpuid],
                m[&Metric::ExitPio],
                m[&Metric::ExitMmio]
            ),
            (1.5, 2.5, 3.5)
        );
        assert_eq!(m[&Metric::Net], 812.5);
        assert_eq!(m.len(), 8);
        assert!(parse_lines("disk garbage\nexits 1 2\n").is_empty());
    }

    #[test]
    fn table_and_json_carry_every_target_and_the_ratios() {
        let mut s = Samples::new();
        let mut vm = BTreeMap::new();
        vm.insert(Metric::Start, vec![1.0, 2.0, 3.0]);
        vm.insert(Metric::DiskWrite, vec![100.0]);
        let mut q = BTreeMap::new();
        q.insert(Metric::Start, vec![4.0, 4.0, 4.0]);
        q.insert(Metric::DiskWrite, vec![50.0]);
        s.insert(Target::Level(Isolation::Vm), vm);
        s.insert(Target::Qemu, q);
        let t = table(&s);
        assert!(t.contains("vm") && t.contains("qemu-microvm"), "{t}");
        assert!(t.contains("ratio vm / qemu-microvm"), "{t}");
        assert!(t.contains("  0.50"), "start: 2 / 4: {t}");
        assert!(t.contains("  2.00"), "write: 100 / 50: {t}");
        assert!(!t.contains("(behind)"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&json(&s, 3, true)).unwrap();
        assert_eq!(
            j["targets"]["vm"]["start_s"]["samples"],
            serde_json::json!([1.0, 2.0, 3.0])
        );
        assert_eq!(
            j["targets"]["qemu-microvm"]["ratio_vm_over_this"]["start_s"],
            serde_json::json!(0.5)
        );
    }

    #[test]
    fn a_run_past_its_limit_is_killed_and_named() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2"]);
        let (_, out) = time_run_within(c, "sh", Duration::from_secs(30)).unwrap();
        assert_eq!(out, "out\n");
        let mut c = Command::new("sh");
        c.args(["-c", "echo bad >&2; exit 3"]);
        let e = time_run_within(c, "sh", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("failed") && e.contains("bad"), "{e}");
        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let e = time_run_within(c, "sleep", Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
