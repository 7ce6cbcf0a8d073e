//! `uvm bench io`: the virtio devices' throughput, uvm against QEMU's
//! microvm machine (its virtio-mmio blk and net), and against Firecracker
//! with `--firecracker PATH`, booting the same kernel and initramfs, on the
//! same raw disk image and a tap made the same way, one after the other in
//! one process.
//!
//! In the guest, busybox `dd` with O_DIRECT writes and then reads the whole
//! disk, timed by the guest itself (`/proc/uptime`, 10 ms resolution) and
//! reported as `uvm-bench ...` lines on the console. Then the guest listens
//! with `nc` and the bench pushes bytes to it and pulls bytes from it over
//! TCP through the tap, timed on this side.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::firecracker::{self, Firecracker, Prepared, VmConfig};
use crate::bench::guest::{connect_tcp, json_number, number, pull, push, GuestRun, TapGuard};
use crate::bench::{
    median, p90, qemu_microvm, reference_cmdline, svg_plot, vmm_heading, Panel, Vmm,
};
use crate::error::Error;
use crate::vmm::linux::DEFAULT_CMDLINE;
use crate::vmm::memory::parse_size;
use crate::vmm::shutdown::EXIT_UVM_ERROR;

/// The guest's console lines meant for the bench start with this.
const TAG: &str = "uvm-bench";
const GUEST_IP: [u8; 4] = [10, 0, 2, 2];
const HOST_CIDR: &str = "10.0.2.1/24";
const IP_PARAM: &str = "ip=10.0.2.2::10.0.2.1:255.255.255.0::eth0:off";
const MAC: &str = "52:54:00:12:34:56";
const PORT_TO_GUEST: u16 = 5002;
const PORT_FROM_GUEST: u16 = 5003;

const USAGE_EXIT: &str = "\
Exit status: 0 when every run of every VMM completed; 1 when a run failed
(a VM crashed, hung, or moved the wrong number of bytes: the last console
lines are shown); 125 when the environment cannot run the bench (no usable
KVM, no QEMU, a --firecracker that is not Firecracker, no permission to
make a tap, bad sizes).";

#[derive(Debug, clap::Args)]
#[command(after_help = USAGE_EXIT)]
pub struct IoArgs {
    /// Runs of each VMM (alternating)
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Guest memory (every VMM)
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub mem: u64,
    /// vCPUs (every VMM)
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Size of the raw disk image, written then read whole (a multiple of 1M)
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub disk_size: u64,
    /// Bytes sent over TCP each way (host to guest, guest to host)
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    pub net_size: u64,
    /// Where the disk image is made (and deleted afterwards)
    #[arg(long, default_value = "/tmp")]
    pub dir: PathBuf,
    /// Give up on a VM (and the bench) after this many seconds
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Also write the samples as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the results as an SVG plot here (one panel per metric)
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also race this Firecracker binary (one you built or installed; none ships with uvm)
    #[arg(long, value_name = "PATH")]
    pub firecracker: Option<PathBuf>,
}

/// What went wrong: the environment (exit 125) or a run (exit 1).
#[derive(Debug, PartialEq, Eq)]
pub enum BenchError {
    Environment(String),
    Run(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Environment(m) | BenchError::Run(m) => f.write_str(m),
        }
    }
}

impl From<Error> for BenchError {
    fn from(e: Error) -> Self {
        BenchError::Environment(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    DiskWrite,
    DiskRead,
    NetToGuest,
    NetFromGuest,
}

pub const METRICS: [Metric; 4] = [
    Metric::DiskWrite,
    Metric::DiskRead,
    Metric::NetToGuest,
    Metric::NetFromGuest,
];

impl Metric {
    pub fn key(self) -> &'static str {
        match self {
            Metric::DiskWrite => "disk_write",
            Metric::DiskRead => "disk_read",
            Metric::NetToGuest => "net_to_guest",
            Metric::NetFromGuest => "net_from_guest",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::DiskWrite => "disk write (MB/s)",
            Metric::DiskRead => "disk read (MB/s)",
            Metric::NetToGuest => "net host->guest (MB/s)",
            Metric::NetFromGuest => "net guest->host (MB/s)",
        }
    }

    fn index(self) -> usize {
        match self {
            Metric::DiskWrite => 0,
            Metric::DiskRead => 1,
            Metric::NetToGuest => 2,
            Metric::NetFromGuest => 3,
        }
    }
}

/// One VM's results, MB/s (10^6 bytes per second) in `METRICS` order.
pub type Sample = [f64; 4];

/// A line the guest printed for the bench.
#[derive(Debug, Clone, PartialEq)]
pub enum GuestLine {
    /// `dd` wrote or read `bytes` between uptimes `t0` and `t1`, status `rc`.
    Disk {
        write: bool,
        bytes: u64,
        t0: f64,
        t1: f64,
        rc: i32,
    },
    /// The guest is about to listen on this port.
    Listen(u16),
    /// What the guest's `nc` received on the host-to-guest port.
    Received(u64),
    /// Something for the user: a failing command's message, a dmesg line.
    Note(String),
    Done,
}

/// Parses a console line: `None` when it is not the bench's (kernel or
/// init messages), an error when it is but makes no sense. The serial
/// console's `\r` and anything before the tag (a kernel message the line
/// was printed into) are ignored.
pub fn parse_guest_line(line: &str) -> Option<Result<GuestLine, String>> {
    let start = line.find(&format!("{TAG} "))?;
    let rest = line[start + TAG.len() + 1..].trim_end_matches(['\r', '\n']);
    let words: Vec<&str> = rest.split_whitespace().collect();
    let bad = |why: String| Err(format!("guest line {rest:?}: {why}"));
    let parsed = match words.first().copied() {
        Some("disk") => {
            let write = match words.get(1).copied() {
                Some("write") => true,
                Some("read") => false,
                other => return Some(bad(format!("unknown disk operation {other:?}"))),
            };
            (|| {
                Ok(GuestLine::Disk {
                    write,
                    bytes: number(&words, "bytes")?,
                    t0: number(&words, "t0")?,
                    t1: number(&words, "t1")?,
                    rc: number(&words, "rc")?,
                })
            })()
        }
        Some("listen") => match words.get(1).map(|p| p.parse()) {
            Some(Ok(port)) => Ok(GuestLine::Listen(port)),
            _ => Err("listen: no port".to_string()),
        },
        Some("received") => number(&words, "bytes").map(GuestLine::Received),
        Some("note") | Some("dmesg") => Ok(GuestLine::Note(rest.to_string())),
        Some("done") => Ok(GuestLine::Done),
        other => Err(format!("unknown kind {other:?}")),
    };
    Some(parsed.or_else(bad))
}

/// MB/s (10^6 bytes per second); NaN for a time too short to measure.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 && secs.is_finite() {
        bytes as f64 / secs / 1e6
    } else {
        f64::NAN
    }
}

/// uvm / QEMU; NaN when QEMU's side is not a positive number.
pub fn ratio(uvm: f64, qemu: f64) -> f64 {
    if qemu > 0.0 && qemu.is_finite() {
        uvm / qemu
    } else {
        f64::NAN
    }
}

fn medians(samples: &[Sample]) -> Sample {
    METRICS.map(|m| median(samples.iter().map(|s| s[m.index()]).collect()))
}

fn p90s(samples: &[Sample]) -> Sample {
    METRICS.map(|m| p90(samples.iter().map(|s| s[m.index()]).collect()))
}

/// What one VMM measured (uvm first, then the references).
pub type Side<'a> = (Vmm, &'a [Sample]);

/// The side-by-side table: per metric the medians of each VMM and uvm's
/// ratio to each reference, then the same for the p90s.
pub fn table(header: &str, sides: &[Side<'_>]) -> String {
    let med: Vec<Sample> = sides.iter().map(|(_, s)| medians(s)).collect();
    let p9: Vec<Sample> = sides.iter().map(|(_, s)| p90s(s)).collect();
    let mut out = String::from(header);
    let vmms: Vec<Vmm> = sides.iter().map(|(v, _)| *v).collect();
    out.push_str(&vmm_heading("", 24, &vmms));
    for m in METRICS {
        let i = m.index();
        for (label, values) in [(m.label(), &med), ("  p90", &p9)] {
            out.push_str(&format!("{label:<24}"));
            for v in values.iter() {
                out.push_str(&format!(" {:>13.2}", v[i]));
            }
            for v in &values[1..] {
                out.push_str(&format!(" {:>16.2}", ratio(values[0][i], v[i])));
            }
            out.push('\n');
        }
    }
    out
}

fn json_metrics(values: &[f64], one: impl Fn(f64) -> String) -> String {
    let metrics: Vec<String> = METRICS
        .iter()
        .map(|m| format!("\"{}\":{}", m.key(), one(values[m.index()])))
        .collect();
    format!("{{{}}}", metrics.join(","))
}

fn json_samples(samples: &[Sample]) -> String {
    let metrics: Vec<String> = METRICS
        .iter()
        .map(|m| {
            let values: Vec<String> = samples.iter().map(|s| json_number(s[m.index()])).collect();
            format!("\"{}\":[{}]", m.key(), values.join(","))
        })
        .collect();
    format!("{{{}}}", metrics.join(","))
}

/// The samples, the settings, the medians and p90s, and uvm's ratio to
/// each reference (of the medians), as JSON.
pub fn json(args: &IoArgs, sides: &[Side<'_>], firecracker: Option<&str>) -> String {
    let u = medians(sides[0].1);
    let per_side = |f: &dyn Fn(&[Sample]) -> String| -> String {
        let v: Vec<String> = sides
            .iter()
            .map(|(vmm, s)| format!("\"{}\":{}", vmm.key(), f(s)))
            .collect();
        v.join(",")
    };
    let ratios: Vec<String> = sides[1..]
        .iter()
        .map(|(vmm, s)| {
            let r = medians(s);
            let values = METRICS.map(|m| ratio(u[m.index()], r[m.index()]));
            format!("\"{}\":{}", vmm.key(), json_metrics(&values, json_number))
        })
        .collect();
    let version = firecracker.map_or(String::new(), |v| {
        format!(",\"firecracker_version\":{}", serde_json::Value::from(v))
    });
    format!(
        "{{\"runs\":{},\"mem_mib\":{},\"vcpus\":{},\"disk_mib\":{},\"net_mib\":{},\"unit\":\"MB/s (10^6 bytes/s)\"{version},{},\"median\":{{{}}},\"p90\":{{{}}},\"ratio\":{{{}}}}}\n",
        args.runs,
        args.mem >> 20,
        args.vcpus,
        args.disk_size >> 20,
        args.net_size >> 20,
        per_side(&json_samples),
        per_side(&|s| json_metrics(&medians(s), json_number)),
        per_side(&|s| json_metrics(&p90s(s), json_number)),
        ratios.join(",")
    )
}

fn plot(args: &IoArgs, sides: &[Side<'_>]) -> String {
    let values = |s: &[Sample], m: Metric| s.iter().map(|x| x[m.index()]).collect::<Vec<_>>();
    let panels: Vec<Panel<'_>> = METRICS
        .iter()
        .map(|&m| {
            (
                m.label(),
                sides
                    .iter()
                    .map(|(v, s)| (v.name(), values(s, m)))
                    .collect(),
            )
        })
        .collect();
    let names: Vec<&str> = sides.iter().map(|(v, _)| v.name()).collect();
    svg_plot(
        &format!(
            "virtio I/O, {}: {} MiB disk (O_DIRECT dd), {} MiB each way over TCP, {} run(s)",
            names.join(" vs "),
            args.disk_size >> 20,
            args.net_size >> 20,
            args.runs
        ),
        &panels,
    )
}

/// The guest's side, for `sh -c`: time dd on /dev/vda both ways, then
/// listen for the host's bytes and send it some, then the kernel's
/// messages about the devices. Kept short: it travels on the kernel
/// command line (base64), which holds 2048 bytes.
pub fn guest_script(disk_size: u64, net_size: u64) -> String {
    let count = disk_size >> 20;
    let bytes = count << 20;
    format!(
        r#"up(){{ read t _ </proc/uptime;echo $t;}}
say(){{ echo "{TAG} $*";}}
disk(){{ op=$1;shift;t0=$(up);dd "$@" bs=1M count={count} 2>/tmp/e;rc=$?;t1=$(up)
say disk $op bytes={bytes} t0=$t0 t1=$t1 rc=$rc;[ $rc = 0 ]||sed "s/^/{TAG} note dd: /" /tmp/e;}}
disk write if=/dev/zero of=/dev/vda oflag=direct conv=fsync
disk read if=/dev/vda of=/dev/null iflag=direct
say listen {PORT_TO_GUEST};n=$(nc -l -p {PORT_TO_GUEST}|wc -c);say received bytes=$((n))
say listen {PORT_FROM_GUEST};nc -l -p {PORT_FROM_GUEST} -e head -c {net_size} /dev/zero
dmesg|grep -iE "virtio|vda|eth0|error|fail|warn|stall|timed out"|grep -vE "command line|ip="|sed "s/^/{TAG} dmesg /"
say done"#
    )
}

/// The raw disk image, allocated with zeros (so neither VMM pays for the
/// host filesystem's allocation), deleted when dropped.
struct ImageGuard(PathBuf);

impl ImageGuard {
    fn create(path: &Path, size: u64) -> Result<Self, BenchError> {
        let env = |e: std::io::Error| {
            BenchError::Environment(format!("cannot make disk image {}: {e}", path.display()))
        };
        let mut f = std::fs::File::create(path).map_err(env)?;
        let image = ImageGuard(path.to_path_buf());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..size >> 20 {
            f.write_all(&chunk).map_err(env)?;
        }
        f.sync_all().map_err(env)?;
        Ok(image)
    }
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct IoBench<'a> {
    args: &'a IoArgs,
    /// Firecracker's config, written once: every run gets the same tap name.
    firecracker: Option<Prepared>,
    kernel: PathBuf,
    initrd: PathBuf,
    image: PathBuf,
    tap: String,
}

impl IoBench<'_> {
    fn argv(&self) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            guest_script(self.args.disk_size, self.args.net_size),
        ]
    }

    fn uvm(&self) -> Result<Command, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Environment(format!("locating uvm: {e}")))?;
        let mut c = Command::new(exe);
        c.args(["boot", "--mem", &format!("{}M", self.args.mem >> 20)])
            .args(["--vcpus", &self.args.vcpus.to_string()])
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .arg("--disk")
            .arg(&self.image)
            .args(["--net", &format!("tap={},mac={MAC}", self.tap)])
            .args(["--cmdline", IP_PARAM])
            .args(["--timeout", &self.args.timeout.to_string()])
            .arg("--")
            .args(self.argv());
        Ok(c)
    }

    /// Firecracker's VM: uvm's kernel command line and the same disk and tap.
    fn firecracker_config(&self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            boot_args: reference_cmdline(DEFAULT_CMDLINE, &self.argv(), IP_PARAM),
            mem: self.args.mem,
            vcpus: self.args.vcpus,
            disk: Some(self.image.clone()),
            tap: Some((self.tap.clone(), MAC.to_string())),
        }
    }

    fn qemu(&self) -> Command {
        let mut c = qemu_microvm(
            &self.kernel,
            &self.initrd,
            self.args.mem,
            self.args.vcpus,
            &self.argv(),
            IP_PARAM,
        );
        c.args([
            "-drive",
            &format!(
                "id=d0,file={},format=raw,if=none,cache=none,aio=threads",
                self.image.display()
            ),
            "-device",
            "virtio-blk-device,drive=d0",
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap),
            "-device",
            &format!("virtio-net-device,netdev=n0,mac={MAC}"),
        ]);
        c
    }

    /// Boots one VM on a fresh tap and runs the guest's side of the bench.
    fn run_vm(&self, vmm: Vmm, label: &str) -> Result<Sample, BenchError> {
        let _tap = TapGuard::create(&self.tap, HOST_CIDR).map_err(BenchError::Environment)?;
        let cmd = match (vmm, &self.firecracker) {
            (Vmm::Uvm, _) => self.uvm()?,
            (Vmm::Firecracker, Some(fc)) => fc.command(),
            _ => self.qemu(),
        };
        let args = self.args;
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        let mut run =
            GuestRun::spawn(cmd, label.to_string(), deadline).map_err(BenchError::Environment)?;
        let mut sample = [f64::NAN; 4];
        let mut done = false;
        let mut put = |m: Metric, v: f64| {
            eprintln!("bench io: {label}: {} {v:.2}", m.label());
            sample[m.index()] = v;
        };
        while !done {
            let Some(line) = run.next_line().map_err(BenchError::Run)? else {
                break;
            };
            let event = match parse_guest_line(&line) {
                None => continue,
                Some(Ok(e)) => e,
                Some(Err(e)) => return Err(BenchError::Run(run.fail(e))),
            };
            let fail = |e: String| BenchError::Run(run.fail(e));
            match event {
                GuestLine::Disk {
                    write,
                    bytes,
                    t0,
                    t1,
                    rc,
                } => {
                    let op = if write { "write" } else { "read" };
                    if rc != 0 {
                        return Err(fail(format!("guest dd {op} failed ({rc})")));
                    }
                    let m = if write {
                        Metric::DiskWrite
                    } else {
                        Metric::DiskRead
                    };
                    put(m, mb_per_s(bytes, t1 - t0));
                }
                GuestLine::Listen(PORT_TO_GUEST) => {
                    let mut s = connect_tcp(GUEST_IP, PORT_TO_GUEST, deadline).map_err(fail)?;
                    let secs =
                        push(&mut s, args.net_size, deadline, "host->guest").map_err(fail)?;
                    put(Metric::NetToGuest, mb_per_s(args.net_size, secs));
                }
                GuestLine::Received(n) if n != args.net_size => {
                    return Err(fail(format!(
                        "the guest received {n} bytes, expected {}",
                        args.net_size
                    )))
                }
                GuestLine::Received(_) => {}
                GuestLine::Listen(PORT_FROM_GUEST) => {
                    let mut s = connect_tcp(GUEST_IP, PORT_FROM_GUEST, deadline).map_err(fail)?;
                    let secs =
                        pull(&mut s, args.net_size, deadline, "guest->host").map_err(fail)?;
                    put(Metric::NetFromGuest, mb_per_s(args.net_size, secs));
                }
                GuestLine::Listen(port) => {
                    return Err(fail(format!("the guest listens on {port}?")))
                }
                GuestLine::Note(n) => eprintln!("bench io: {label}: guest: {n}"),
                GuestLine::Done => done = true,
            }
        }
        run.finish(&vmm.to_string(), done)
            .map_err(BenchError::Run)?;
        if let Some(m) = METRICS.iter().find(|m| !sample[m.index()].is_finite()) {
            return Err(BenchError::Run(format!(
                "{label}: no measurement of {}",
                m.label()
            )));
        }
        Ok(sample)
    }
}

/// Refuses at once what cannot work, with the reason on one line; the
/// Firecracker to race, if asked for.
fn preflight(args: &IoArgs) -> Result<Option<Firecracker>, BenchError> {
    let env = |m: String| Err(BenchError::Environment(m));
    if args.runs == 0 {
        return env("--runs 0: nothing to measure".into());
    }
    if args.disk_size < 1 << 20 || !args.disk_size.is_multiple_of(1 << 20) {
        return env(format!(
            "--disk-size {}: must be a whole number of MiB",
            crate::error::human(args.disk_size)
        ));
    }
    if args.net_size == 0 {
        return env("--net-size 0: nothing to send".into());
    }
    if args.timeout == 0 {
        return env("--timeout 0: no time to run".into());
    }
    let firecracker = args
        .firecracker
        .as_deref()
        .map(firecracker::check)
        .transpose()?;
    crate::check::ensure_can_boot_linux()?;
    match Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return env(format!(
                "qemu-system-x86_64 --version failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => {
            return env(format!(
                "cannot run qemu-system-x86_64 ({e}): install qemu-system-x86"
            ))
        }
    }
    Ok(firecracker)
}

/// Runs the bench; the table on success.
pub fn run(args: &IoArgs) -> Result<String, BenchError> {
    let firecracker = preflight(args)?;
    let (kernel, initrd) = crate::bench::default_paths()?;
    let pid = std::process::id();
    let mut bench = IoBench {
        args,
        firecracker: None,
        kernel,
        initrd,
        image: args.dir.join(format!("uvm-bench-io-{pid}.img")),
        tap: format!("uvmbio{}", pid % 1_000_000),
    };
    eprintln!(
        "bench io: making a {} MiB disk image {}",
        args.disk_size >> 20,
        bench.image.display()
    );
    let _image = ImageGuard::create(&bench.image, args.disk_size)?;
    if let Some(fc) = &firecracker {
        eprintln!("bench io: racing {} ({})", fc.version, fc.binary.display());
        bench.firecracker = Some(fc.prepare(&bench.firecracker_config())?);
    }
    let mut sides: Vec<(Vmm, Vec<Sample>)> = [Vmm::Uvm, Vmm::Firecracker, Vmm::Qemu]
        .into_iter()
        .filter(|v| *v != Vmm::Firecracker || firecracker.is_some())
        .map(|v| (v, vec![]))
        .collect();
    for i in 1..=args.runs {
        for (vmm, samples) in sides.iter_mut() {
            let label = format!("run {i}/{} {vmm}", args.runs);
            eprintln!("bench io: {label}: booting (tap {})", bench.tap);
            samples.push(bench.run_vm(*vmm, &label)?);
        }
    }
    let sides: Vec<Side<'_>> = sides.iter().map(|(v, s)| (*v, s.as_slice())).collect();
    let names: Vec<&str> = sides.iter().map(|(v, _)| v.name()).collect();
    let header = format!(
        "virtio I/O, {}, {} run(s) each (medians, p90 below), {} MiB guest, {} vCPU(s)\n\
         disk: {} MiB raw image, dd bs=1M O_DIRECT, timed in the guest; \
         net: {} MiB each way over TCP on a tap, timed on the host; MB = 10^6 bytes\n",
        names.join(" vs "),
        args.runs,
        args.mem >> 20,
        args.vcpus,
        args.disk_size >> 20,
        args.net_size >> 20
    );
    let out = table(&header, &sides);
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(args, &sides))
            .map_err(|e| BenchError::Environment(format!("{}: {e}", path.display())))?;
    }
    if let Some(path) = &args.json {
        let version = firecracker.as_ref().map(|f| f.version.as_str());
        std::fs::write(path, json(args, &sides, version))
            .map_err(|e| BenchError::Environment(format!("{}: {e}", path.display())))?;
    }
    Ok(out)
}

/// `uvm bench io`: prints the table, or the error; the exit status.
pub fn main(args: &IoArgs) -> i32 {
    match run(args) {
        Ok(table) => {
            print!("{table}");
            0
        }
        Err(e @ BenchError::Environment(_)) => {
            eprintln!("uvm bench io: {e}");
            EXIT_UVM_ERROR
        }
        Err(e) => {
            eprintln!("uvm bench io: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> IoArgs {
        IoArgs {
            runs: 2,
            mem: 512 << 20,
            vcpus: 1,
            disk_size: 256 << 20,
            net_size: 128 << 20,
            dir: "/tmp".into(),
            timeout: 900,
            json: None,
            plot: None,
            firecracker: None,
        }
    }

    #[test]
    fn guest_lines_parse() {
        assert_eq!(parse_guest_line("uvm-init: ready after 1.2 s"), None);
        assert_eq!(
            parse_guest_line("[    1.0] virtio_blk virtio0: [vda]"),
            None
        );
        assert_eq!(
            parse_guest_line("uvm-bench disk write bytes=268435456 t0=3.10 t1=13.35 rc=0\r"),
            Some(Ok(GuestLine::Disk {
                write: true,
                bytes: 268435456,
                t0: 3.10,
                t1: 13.35,
                rc: 0
            }))
        );
        // Printed into the middle of a kernel message.
        assert_eq!(
            parse_guest_line("[ 5.1] random: crnguvm-bench disk read bytes=1048576 t0=1 t1=2 rc=1"),
            Some(Ok(GuestLine::Disk {
                write: false,
                bytes: 1 << 20,
                t0: 1.0,
                t1: 2.0,
                rc: 1
            }))
        );
        assert_eq!(
            parse_guest_line("uvm-bench listen 5002\r"),
            Some(Ok(GuestLine::Listen(5002)))
        );
        assert_eq!(
            parse_guest_line("uvm-bench received bytes=134217728"),
            Some(Ok(GuestLine::Received(128 << 20)))
        );
        assert_eq!(
            parse_guest_line("uvm-bench dmesg [1.0] virtio_net: oops"),
            Some(Ok(GuestLine::Note("dmesg [1.0] virtio_net: oops".into())))
        );
        assert_eq!(
            parse_guest_line("uvm-bench done\r"),
            Some(Ok(GuestLine::Done))
        );
        for bad in [
            "uvm-bench disk erase bytes=1 t0=1 t1=2 rc=0",
            "uvm-bench disk write bytes=1 t0=1 rc=0",
            "uvm-bench disk write bytes=x t0=1 t1=2 rc=0",
            "uvm-bench listen",
            "uvm-bench received bytes=",
            "uvm-bench frobnicate",
        ] {
            assert!(matches!(parse_guest_line(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn rates_and_ratios() {
        assert_eq!(mb_per_s(200_000_000, 10.0), 20.0);
        assert!(mb_per_s(1, 0.0).is_nan(), "uptime did not move");
        assert!(mb_per_s(1, -1.0).is_nan());
        assert_eq!(ratio(10.0, 20.0), 0.5);
        assert!(ratio(1.0, 0.0).is_nan());
        assert!(ratio(1.0, f64::NAN).is_nan());
    }

    #[test]
    fn table_has_rows_per_metric_with_medians_p90s_and_ratios() {
        let u = [[10.0, 20.0, 30.0, 1.0], [12.0, 22.0, 34.0, 3.0]];
        let f = [[5.0, 40.0, 60.0, 2.0], [5.0, 40.0, 60.0, 2.0]];
        let q = [[20.0, 10.0, 30.0, 4.0], [20.0, 10.0, 30.0, 4.0]];
        let sides = [
            (Vmm::Uvm, &u[..]),
            (Vmm::Firecracker, &f[..]),
            (Vmm::Qemu, &q[..]),
        ];
        let t = table("header\n", &sides);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 4 * 2, "{t}");
        assert_eq!(lines[0], "header");
        assert!(
            lines[1].ends_with("uvm   firecracker  qemu microvm  uvm/firecracker         uvm/qemu"),
            "{t}"
        );
        let row = |i: usize| {
            lines[i]
                .split_whitespace()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        };
        assert!(lines[2].starts_with("disk write (MB/s)"));
        assert_eq!(row(2), ["0.55", "2.20", "20.00", "5.00", "11.00"]);
        assert!(lines[3].starts_with("  p90"));
        assert_eq!(row(3), ["0.60", "2.40", "20.00", "5.00", "12.00"]);
        assert_eq!(row(4), ["2.10", "0.53", "10.00", "40.00", "21.00"]);
        assert_eq!(row(6), ["1.07", "0.53", "30.00", "60.00", "32.00"]);
        assert!(lines[8].starts_with("net guest->host (MB/s)"));
        assert_eq!(row(8), ["0.50", "1.00", "4.00", "2.00", "2.00"]);
        assert_eq!(row(9), ["0.75", "1.50", "4.00", "2.00", "3.00"]);
        // Without Firecracker: uvm, QEMU and one ratio.
        let two = table("", &[sides[0], sides[2]]);
        assert!(!two.contains("firecracker"), "{two}");
        assert_eq!(two.lines().nth(1).unwrap().split_whitespace().count(), 6);
    }

    #[test]
    fn json_holds_samples_and_ratios() {
        let a = args();
        let u = [[10.0, 20.0, 30.0, 1.0], [12.0, 22.0, 34.0, f64::NAN]];
        let f = [[5.0, 40.0, 60.0, 2.0], [5.0, 40.0, 60.0, 2.0]];
        let q = [[20.0, 10.0, 30.0, 4.0], [20.0, 10.0, 30.0, 4.0]];
        let sides = [
            (Vmm::Uvm, &u[..]),
            (Vmm::Firecracker, &f[..]),
            (Vmm::Qemu, &q[..]),
        ];
        let j = json(&a, &sides, Some("Firecracker v1.17.0-dev"));
        assert!(
            j.starts_with(
                "{\"runs\":2,\"mem_mib\":512,\"vcpus\":1,\"disk_mib\":256,\"net_mib\":128,"
            ),
            "{j}"
        );
        assert!(j.contains("\"uvm\":{\"disk_write\":[10.000,12.000],\"disk_read\":[20.000,22.000],\"net_to_guest\":[30.000,34.000],\"net_from_guest\":[1.000,null]}"), "{j}");
        let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
        assert_eq!(v["firecracker_version"], "Firecracker v1.17.0-dev");
        assert_eq!(v["firecracker"]["disk_read"][1], 40.0);
        assert_eq!(v["median"]["uvm"]["disk_write"], 11.0);
        assert_eq!(v["p90"]["uvm"]["disk_write"], 12.0);
        assert_eq!(v["ratio"]["qemu_microvm"]["disk_write"], 0.55);
        assert_eq!(v["ratio"]["qemu_microvm"]["disk_read"], 2.1);
        assert_eq!(v["ratio"]["firecracker"]["disk_write"], 2.2);
        assert_eq!(v["ratio"]["firecracker"]["net_to_guest"], 0.533);
        let without: serde_json::Value =
            serde_json::from_str(&json(&a, &[sides[0], sides[2]], None)).unwrap();
        assert!(
            without.get("firecracker").is_none() && without.get("firecracker_version").is_none()
        );
        let svg = plot(&a, &sides);
        assert_eq!(
            svg.matches("<rect").count(),
            1 + 12,
            "background and 3 bars x 4 panels"
        );
    }

    #[test]
    fn guest_script_fits_on_the_kernel_command_line() {
        let s = guest_script(256 << 20, 128 << 20);
        assert!(s.contains("count=256") && s.contains("bytes=268435456"));
        assert!(s.contains("head -c 134217728 /dev/zero"));
        assert!(s.contains("oflag=direct") && s.contains("iflag=direct"));
        let param = uvm_protocol::encode_command(&["sh".into(), "-c".into(), s.clone()]);
        assert!(
            param.len() + crate::vmm::linux::DEFAULT_CMDLINE.len() + IP_PARAM.len() < 1800,
            "{} bytes",
            param.len()
        );
        // Every line the script prints is one the parser knows.
        for line in s.lines().filter(|l| l.contains("say ")) {
            for part in line
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("say "))
            {
                let kind = part.split_whitespace().next().unwrap();
                assert!(
                    ["disk", "listen", "received", "done"].contains(&kind),
                    "{part}"
                );
            }
        }
    }

    #[test]
    fn vmm_command_lines_share_kernel_image_and_tap() {
        let a = args();
        let b = IoBench {
            args: &a,
            firecracker: None,
            kernel: "/k".into(),
            initrd: "/i".into(),
            image: "/tmp/x.img".into(),
            tap: "uvmbio1".into(),
        };
        let q: Vec<String> = b
            .qemu()
            .get_args()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let qs = q.join(" ");
        assert!(
            qs.contains("-nodefaults") && qs.contains("microvm,acpi=on"),
            "{qs}"
        );
        assert!(qs.contains("file=/tmp/x.img,format=raw,if=none,cache=none,aio=threads"));
        assert!(qs.contains("tap,id=n0,ifname=uvmbio1,script=no,downscript=no"));
        assert!(qs.contains(&format!("virtio-net-device,netdev=n0,mac={MAC}")));
        assert!(qs.contains("-m 512M") && qs.contains("-smp 1"));
        let append = &q[q.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.ends_with(IP_PARAM) && append.contains("uvm.cmd="));
        let u: Vec<String> = b
            .uvm()
            .unwrap()
            .get_args()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let us = u.join(" ");
        assert!(us.contains("--disk /tmp/x.img") && us.contains("--mem 512M"));
        assert!(us.contains(&format!("--net tap=uvmbio1,mac={MAC}")));
        assert!(us.contains(&format!("--cmdline {IP_PARAM}")));
        assert_eq!(u[u.len() - 3..u.len() - 1], ["sh", "-c"]);
        // Firecracker: uvm's command line, the same image, tap and MAC.
        let f = b.firecracker_config().json();
        assert_eq!(f["boot-source"]["kernel_image_path"], "/k");
        assert_eq!(f["boot-source"]["initrd_path"], "/i");
        let args = f["boot-source"]["boot_args"].as_str().unwrap();
        assert!(
            args.starts_with(DEFAULT_CMDLINE) && args.ends_with(IP_PARAM),
            "{args}"
        );
        assert!(
            args.contains(&uvm_protocol::encode_command(&b.argv())),
            "{args}"
        );
        assert_eq!(f["drives"][0]["path_on_host"], "/tmp/x.img");
        assert_eq!(f["network-interfaces"][0]["host_dev_name"], "uvmbio1");
        assert_eq!(f["network-interfaces"][0]["guest_mac"], MAC);
        assert_eq!(f["machine-config"]["mem_size_mib"], 512);
        assert_eq!(f["machine-config"]["vcpu_count"], 1);
    }

    #[test]
    fn bad_sizes_are_environment_errors() {
        let mut a = args();
        a.disk_size = (1 << 20) + 1;
        assert!(matches!(preflight(&a), Err(BenchError::Environment(_))));
        let mut a = args();
        a.runs = 0;
        assert!(matches!(preflight(&a), Err(BenchError::Environment(_))));
        // A Firecracker that is not one is refused before KVM is looked at.
        let mut a = args();
        a.firecracker = Some("/bin/true".into());
        match preflight(&a) {
            Err(BenchError::Environment(m)) => assert!(
                m.starts_with("--firecracker /bin/true: not Firecracker"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
