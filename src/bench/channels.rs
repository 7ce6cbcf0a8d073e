//! `uvm bench channels`: the channels into a guest against the devices a
//! guest would use without them, in one uvm VM that has all of them:
//! vsock against TCP over virtio-net on a tap (throughput both ways, one
//! byte round trips), and a host folder over virtio-fs against the same
//! files on a virtio-blk ext4 disk (a big file read sequentially, then many
//! small files stat'ed, read and created). Both sides of each pair come
//! from the same guest in the same run, and their ratio is the result.
//!
//! Streams are timed on this side; file work is timed by the guest
//! (`/proc/uptime`, 10 ms), each step on files this guest has not touched
//! yet, so nothing comes from its page cache.
//! Both the shared folder and the disk image live in `--dir` (a tmpfs by
//! default), so neither side waits on a host disk.

use std::fmt;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::guest::{
    connect_tcp, field, json_number, number, pull, push, retry_connect, round_trips, GuestRun,
    HalfClose, TapGuard, STALL,
};
use crate::bench::io::{mb_per_s, ratio, BenchError};
use crate::bench::{median, svg_plot, write_plot, Panel};
use crate::vmm::memory::parse_size;
use crate::vmm::shutdown::EXIT_UVM_ERROR;

const TAG: &str = "uvm-bench";
const GUEST_IP: [u8; 4] = [10, 0, 3, 2];
const HOST_CIDR: &str = "10.0.3.1/24";
const IP_PARAM: &str = "ip=10.0.3.2::10.0.3.1:255.255.255.0::eth0:off";
const MAC: &str = "52:54:00:12:34:57";
const CID: u32 = 3;
/// The guest's ports, and the host port the guest sends to over vsock.
const VSOCK_TO_GUEST: u32 = 5000;
const VSOCK_ECHO: u32 = 5001;
const VSOCK_FROM_GUEST: u32 = 6000;
const TCP_TO_GUEST: u16 = 5002;
const TCP_FROM_GUEST: u16 = 5003;
const TCP_ECHO: u16 = 5004;
/// Bytes of each small file.
const SMALL_FILE: usize = 1024;

const USAGE_EXIT: &str = "\
Exit status: 0 when every run completed; 1 when a run failed (the VM
crashed or hung, a channel moved the wrong bytes, the two disks' files
differed: the last lines are shown); 125 when the environment cannot run
the bench (no usable KVM, no virtiofsd, no mkfs.ext4, no permission to
make a tap, bad sizes).";

#[derive(Debug, clap::Args)]
#[command(after_help = USAGE_EXIT)]
pub struct ChannelsArgs {
    /// Runs (one VM each)
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Guest memory
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub mem: u64,
    /// Bytes sent each way over vsock and over TCP
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    pub stream_size: u64,
    /// One-byte round trips over each channel
    #[arg(long, default_value_t = 1000)]
    pub round_trips: usize,
    /// The big file read sequentially from virtio-fs and from virtio-blk
    #[arg(long, default_value = "100M", value_parser = parse_size)]
    pub file_size: u64,
    /// Small files (1 KiB each) stat'ed, read, and created on each
    #[arg(long, default_value_t = 1000)]
    pub files: usize,
    /// Where the shared folder and the disk image are made (and removed)
    #[arg(long, default_value = "/dev/shm")]
    pub dir: PathBuf,
    /// Give up on a VM (and the bench) after this many seconds
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Also write the samples as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the results as an SVG plot here (and a PNG beside it)
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// What is compared: a channel and the device it stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    ToGuest,
    FromGuest,
    RoundTrip,
    SeqRead,
    Stat,
    ReadSmall,
    Create,
}

pub const PAIRS: [Pair; 7] = [
    Pair::ToGuest,
    Pair::FromGuest,
    Pair::RoundTrip,
    Pair::SeqRead,
    Pair::Stat,
    Pair::ReadSmall,
    Pair::Create,
];

impl Pair {
    pub fn key(self) -> &'static str {
        match self {
            Pair::ToGuest => "to_guest",
            Pair::FromGuest => "from_guest",
            Pair::RoundTrip => "round_trip",
            Pair::SeqRead => "seq_read",
            Pair::Stat => "stat_files",
            Pair::ReadSmall => "read_files",
            Pair::Create => "create_files",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Pair::ToGuest => "host->guest (MB/s)",
            Pair::FromGuest => "guest->host (MB/s)",
            Pair::RoundTrip => "1-byte round trip (us, lower is better)",
            Pair::SeqRead => "sequential read (MB/s)",
            Pair::Stat => "stat small files (files/s)",
            Pair::ReadSmall => "read small files (files/s)",
            Pair::Create => "create small files + sync (files/s)",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Pair::ToGuest | Pair::FromGuest | Pair::SeqRead => "MB/s",
            Pair::RoundTrip => "us",
            Pair::Stat | Pair::ReadSmall | Pair::Create => "files/s",
        }
    }

    /// The channel's name and the reference's.
    pub fn sides(self) -> [&'static str; 2] {
        match self {
            Pair::ToGuest | Pair::FromGuest | Pair::RoundTrip => ["vsock", "tcp"],
            _ => ["virtio-fs", "virtio-blk"],
        }
    }

    fn index(self) -> usize {
        PAIRS.iter().position(|p| *p == self).expect("in PAIRS")
    }
}

/// One run: per pair, [channel, reference].
pub type Sample = [[f64; 2]; 7];

/// vsock or TCP, as the guest names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Vsock,
    Tcp,
}

/// File work the guest timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Seq,
    Stat,
    Read,
    Create,
}

/// A line the guest printed for the bench.
#[derive(Debug, Clone, PartialEq)]
pub enum GuestLine {
    /// File work on virtio-fs (`fs`) or the ext4 disk: `n` bytes (seq) or
    /// files, between uptimes `t0` and `t1`, status `rc`, and for `read`
    /// the checksum of what it read.
    File {
        blk: bool,
        op: FileOp,
        n: u64,
        t0: f64,
        t1: f64,
        rc: i32,
        md5: Option<String>,
    },
    /// The guest listens on `port` for bytes from the host.
    ToGuest(Channel, u32),
    /// What the guest received over the channel.
    Received(Channel, u64),
    /// The guest sends bytes: over vsock it connects to the host's `port`,
    /// over TCP it listens on it.
    FromGuest(Channel, u32),
    /// The guest echoes what it gets on `port`.
    Echo(Channel, u32),
    Note(String),
    Done,
}

/// Parses a line of the guest's stdout: `None` when it is not the bench's,
/// an error when it is but makes no sense.
pub fn parse_guest_line(line: &str) -> Option<Result<GuestLine, String>> {
    let rest = line.strip_prefix(&format!("{TAG} "))?.trim_end();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let channel = |w: Option<&&str>| match w.copied() {
        Some("vsock") => Ok(Channel::Vsock),
        Some("tcp") => Ok(Channel::Tcp),
        other => Err(format!("unknown channel {other:?}")),
    };
    let port = |w: Option<&&str>| {
        w.and_then(|p| p.parse::<u32>().ok())
            .ok_or_else(|| "no port".to_string())
    };
    let parsed = match words.first().copied() {
        Some("file") => (|| {
            let blk = match words.get(1).copied() {
                Some("fs") => false,
                Some("blk") => true,
                other => return Err(format!("unknown disk {other:?}")),
            };
            let op = match words.get(2).copied() {
                Some("seq") => FileOp::Seq,
                Some("stat") => FileOp::Stat,
                Some("read") => FileOp::Read,
                Some("create") => FileOp::Create,
                other => return Err(format!("unknown file operation {other:?}")),
            };
            Ok(GuestLine::File {
                blk,
                op,
                n: number(&words, "n")?,
                t0: number(&words, "t0")?,
                t1: number(&words, "t1")?,
                rc: number(&words, "rc")?,
                md5: field(&words, "md5").ok().map(str::to_string),
            })
        })(),
        Some(kind @ ("to-guest" | "from-guest" | "echo")) => channel(words.get(1)).and_then(|c| {
            let p = port(words.get(2))?;
            Ok(match kind {
                "to-guest" => GuestLine::ToGuest(c, p),
                "from-guest" => GuestLine::FromGuest(c, p),
                _ => GuestLine::Echo(c, p),
            })
        }),
        Some("received") => {
            channel(words.get(1)).and_then(|c| Ok(GuestLine::Received(c, number(&words, "bytes")?)))
        }
        Some("note") => Ok(GuestLine::Note(rest.to_string())),
        Some("done") => Ok(GuestLine::Done),
        other => Err(format!("unknown kind {other:?}")),
    };
    Some(parsed.map_err(|why| format!("guest line {rest:?}: {why}")))
}

/// The guest's side: file work on both disks, then the streams, each step
/// announced so the host can play its part (a vsock listener once it
/// listens: `w` waits for uvm-probe to say so).
pub fn guest_script(args: &ChannelsArgs) -> String {
    let (size, n, bytes) = (args.file_size, args.files, args.stream_size);
    format!(
        r#"up(){{ read $1 _ </proc/uptime;}}
say(){{ echo "{TAG} $*";}}
w(){{ while ! [ -s /tmp/l ];do sleep 0.1;done;rm /tmp/l;}}
mkdir -p /mnt/blk
mount -t ext4 /dev/vda /mnt/blk 2>/tmp/e||sed "s/^/{TAG} note mount: /" /tmp/e
for k in fs blk;do d=/mnt/data;[ $k = blk ]&&d=/mnt/blk
up t0;dd if=$d/big of=/dev/null bs=1M 2>/tmp/e;rc=$?;up t1
say file $k seq n={size} t0=$t0 t1=$t1 rc=$rc;[ $rc = 0 ]||sed "s/^/{TAG} note dd: /" /tmp/e
up t0;c=$(ls -l $d/small|grep -c "^-");up t1
say file $k stat n=$c t0=$t0 t1=$t1 rc=0
up t0;m=$(cat $d/small/*|md5sum);rc=$?;up t1
say file $k read n=$c t0=$t0 t1=$t1 rc=$rc md5=${{m%% *}}
mkdir $d/new;up t0;i=0;while [ $i -lt {n} ];do echo x >$d/new/f$i||break;i=$((i+1));done;sync;up t1
say file $k create n=$i t0=$t0 t1=$t1 rc=0
done
uvm-probe vsock-recv {VSOCK_TO_GUEST} 2>/tmp/l|wc -c >/tmp/c&
w;say to-guest vsock {VSOCK_TO_GUEST};wait $!;say received vsock bytes=$(($(cat /tmp/c)))
say to-guest tcp {TCP_TO_GUEST};c=$(nc -l -p {TCP_TO_GUEST}|wc -c);say received tcp bytes=$((c))
say from-guest vsock {VSOCK_FROM_GUEST}
head -c {bytes} /dev/zero|uvm-probe vsock-send 2 {VSOCK_FROM_GUEST} >/dev/null 2>/tmp/e||sed "s/^/{TAG} note /" /tmp/e
say from-guest tcp {TCP_FROM_GUEST};nc -l -p {TCP_FROM_GUEST} -e head -c {bytes} /dev/zero
uvm-probe vsock-echo {VSOCK_ECHO} 1 >/dev/null 2>/tmp/l&
w;say echo vsock {VSOCK_ECHO};wait $!
say echo tcp {TCP_ECHO};nc -l -p {TCP_ECHO} -e cat
say done"#
    )
}

/// Fills `f` with `len` bytes that do not compress or repeat (xorshift).
fn write_noise(f: &mut impl Write, len: u64, seed: u64) -> std::io::Result<()> {
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The bench's folder: the shared folder, the disk image made from it, the
/// vsock socket. Removed when dropped.
struct Workdir {
    root: PathBuf,
}

impl Workdir {
    fn share(&self) -> PathBuf {
        self.root.join("share")
    }
    fn image(&self) -> PathBuf {
        self.root.join("disk.ext4")
    }
    fn uds(&self) -> PathBuf {
        self.root.join("vsock")
    }

    /// `files` small files and one big one, in the share and, by
    /// `mkfs.ext4 -d`, on the disk image.
    fn create(dir: &Path, args: &ChannelsArgs) -> Result<Workdir, BenchError> {
        let root = dir.join(format!("uvm-bench-channels-{}", std::process::id()));
        let shown = root.display().to_string();
        let env =
            |what: &str, e: std::io::Error| BenchError::Environment(format!("{what} {shown}: {e}"));
        std::fs::create_dir(&root).map_err(|e| env("cannot make", e))?;
        let w = Workdir { root };
        let small = w.share().join("small");
        std::fs::create_dir_all(&small).map_err(|e| env("cannot fill", e))?;
        let mut big =
            std::fs::File::create(w.share().join("big")).map_err(|e| env("cannot fill", e))?;
        write_noise(&mut big, args.file_size, 0x9e37_79b9_7f4a_7c15)
            .map_err(|e| env("cannot fill", e))?;
        for i in 0..args.files {
            let mut f = std::fs::File::create(small.join(format!("f{i:05}")))
                .map_err(|e| env("cannot fill", e))?;
            write_noise(&mut f, SMALL_FILE as u64, i as u64 + 1)
                .map_err(|e| env("cannot fill", e))?;
        }
        // Room for the data, an inode and a block per file (the guest
        // creates as many again), and ext4's own.
        let mib = (args.file_size >> 20) + ((args.files as u64 * 3 * 4096) >> 20) + 64;
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "uvmbench", "-d"])
            .arg(w.share())
            .arg(w.image())
            .arg(format!("{mib}M"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                BenchError::Environment(format!("cannot run mkfs.ext4 (e2fsprogs): {e}"))
            })?;
        if !out.status.success() {
            return Err(BenchError::Environment(format!(
                "mkfs.ext4 -d {}: {}",
                w.share().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(w)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

struct ChannelsBench<'a> {
    args: &'a ChannelsArgs,
    kernel: PathBuf,
    initrd: PathBuf,
    tap: String,
}

impl ChannelsBench<'_> {
    fn uvm(&self, w: &Workdir) -> Result<Command, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Environment(format!("locating uvm: {e}")))?;
        let mut c = Command::new(exe);
        c.args(["boot", "--mem", &format!("{}M", self.args.mem >> 20)])
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .arg("--disk")
            .arg(w.image())
            .args(["--net", &format!("tap={},mac={MAC}", self.tap)])
            .args(["--cmdline", IP_PARAM])
            .arg("--vsock")
            .arg(format!("cid={CID},uds={}", w.uds().display()))
            .arg("--fs")
            .arg(format!("{}:data", w.share().display()))
            .args(["--timeout", &self.args.timeout.to_string()])
            .args(["--", "sh", "-c", &guest_script(self.args)]);
        Ok(c)
    }

    /// One VM: the guest's script, the host's part of each step.
    fn run_vm(&self, label: &str) -> Result<Sample, BenchError> {
        let args = self.args;
        let w = Workdir::create(&args.dir, args)?;
        let _tap = TapGuard::create(&self.tap, HOST_CIDR).map_err(BenchError::Environment)?;
        // Bound before the guest starts: it connects when it pleases.
        let from_guest_path = PathBuf::from(format!("{}_{VSOCK_FROM_GUEST}", w.uds().display()));
        let from_guest = UnixListener::bind(&from_guest_path).map_err(|e| {
            BenchError::Environment(format!("binding {}: {e}", from_guest_path.display()))
        })?;
        // Past uvm's own --timeout and its hard stop 30 s later, so that a
        // stuck VM is ended by uvm, which names what it was stuck in.
        let deadline = Instant::now() + Duration::from_secs(args.timeout + 45);
        let mut run = GuestRun::spawn(self.uvm(&w)?, label.to_string(), deadline)
            .map_err(BenchError::Environment)?;
        let mut sample = [[f64::NAN; 2]; 7];
        let mut md5s: [Option<String>; 2] = [None, None];
        let mut done = false;
        let uds = w.uds();
        let vsock = |port: u32| {
            retry_connect(&format!("guest vsock port {port}"), deadline, || {
                let s = crate::agent::vsock_connect(&uds, port)?;
                s.set_read_timeout(Some(STALL))?;
                s.set_write_timeout(Some(STALL))?;
                Ok(s)
            })
        };
        // The host's end of a guest port: over vsock through uvm's socket
        // (or, for a guest that sends, the connection uvm makes to ours),
        // over TCP to the guest's address.
        let open =
            |c: Channel, port: u32, guest_sends: bool| -> Result<Box<dyn HalfClose>, String> {
                Ok(match c {
                    Channel::Vsock if guest_sends => Box::new(accept(&from_guest, deadline)?),
                    Channel::Vsock => Box::new(vsock(port)?),
                    Channel::Tcp => {
                        let port = u16::try_from(port)
                            .map_err(|_| format!("the guest names TCP port {port}"))?;
                        Box::new(connect_tcp(GUEST_IP, port, deadline)?)
                    }
                })
            };
        let mut put = |p: Pair, side: usize, v: f64| {
            eprintln!(
                "bench channels: {label}: {} {}: {v:.2}",
                p.sides()[side],
                p.label()
            );
            sample[p.index()][side] = v;
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
            let side = |c: Channel| usize::from(c == Channel::Tcp);
            match event {
                GuestLine::File {
                    blk,
                    op,
                    n,
                    t0,
                    t1,
                    rc,
                    md5,
                } => {
                    let disk = if blk { "virtio-blk" } else { "virtio-fs" };
                    if rc != 0 {
                        return Err(fail(format!("{disk}: {op:?} failed ({rc})")));
                    }
                    let want = if op == FileOp::Seq {
                        args.file_size
                    } else {
                        args.files as u64
                    };
                    if n != want {
                        return Err(fail(format!("{disk}: {op:?} did {n} of {want}")));
                    }
                    let secs = t1 - t0;
                    let rate = |count: u64| {
                        if secs > 0.0 {
                            count as f64 / secs
                        } else {
                            f64::NAN
                        }
                    };
                    let (pair, v) = match op {
                        FileOp::Seq => (Pair::SeqRead, mb_per_s(n, secs)),
                        FileOp::Stat => (Pair::Stat, rate(n)),
                        FileOp::Read => {
                            md5s[usize::from(blk)] = md5;
                            (Pair::ReadSmall, rate(n))
                        }
                        FileOp::Create => (Pair::Create, rate(n)),
                    };
                    put(pair, usize::from(blk), v);
                }
                GuestLine::ToGuest(c, port) => {
                    let mut s = open(c, port, false).map_err(fail)?;
                    let secs = push(
                        &mut *s,
                        args.stream_size,
                        deadline,
                        &format!("host->guest over {c}"),
                    )
                    .map_err(fail)?;
                    put(Pair::ToGuest, side(c), mb_per_s(args.stream_size, secs));
                }
                GuestLine::Received(c, n) if n != args.stream_size => {
                    return Err(fail(format!(
                        "over {c} the guest received {n} bytes, expected {}",
                        args.stream_size
                    )))
                }
                GuestLine::Received(..) => {}
                GuestLine::FromGuest(c, port) => {
                    let mut s = open(c, port, true).map_err(fail)?;
                    let secs = pull(
                        &mut *s,
                        args.stream_size,
                        deadline,
                        &format!("guest->host over {c}"),
                    )
                    .map_err(fail)?;
                    put(Pair::FromGuest, side(c), mb_per_s(args.stream_size, secs));
                }
                GuestLine::Echo(c, port) => {
                    let mut s = open(c, port, false).map_err(fail)?;
                    let trips = round_trips(
                        &mut *s,
                        args.round_trips,
                        deadline,
                        &format!("round trips over {c}"),
                    )
                    .map_err(fail)?;
                    put(Pair::RoundTrip, side(c), median(trips));
                }
                GuestLine::Note(n) => eprintln!("bench channels: {label}: guest: {n}"),
                GuestLine::Done => done = true,
            }
        }
        run.finish("uvm", done).map_err(BenchError::Run)?;
        if md5s[0] != md5s[1] {
            return Err(BenchError::Run(format!(
                "{label}: the small files read differently: virtio-fs {:?}, virtio-blk {:?}",
                md5s[0], md5s[1]
            )));
        }
        for p in PAIRS {
            for (side, v) in sample[p.index()].iter().enumerate() {
                if !v.is_finite() {
                    return Err(BenchError::Run(format!(
                        "{label}: no measurement of {} over {}",
                        p.label(),
                        p.sides()[side]
                    )));
                }
            }
        }
        Ok(sample)
    }
}

/// The VMM's connection for a guest that connects to the host's port.
fn accept(l: &UnixListener, deadline: Instant) -> Result<UnixStream, String> {
    l.set_nonblocking(true)
        .map_err(|e| format!("vsock listener: {e}"))?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .and_then(|()| s.set_read_timeout(Some(STALL)))
                    .map_err(|e| format!("vsock from the guest: {e}"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err("the guest never connected over vsock".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("vsock listener: {e}")),
        }
    }
}

fn medians(samples: &[Sample]) -> Sample {
    let mut m = [[f64::NAN; 2]; 7];
    for p in PAIRS {
        for side in 0..2 {
            m[p.index()][side] = median(samples.iter().map(|s| s[p.index()][side]).collect());
        }
    }
    m
}

/// The side-by-side table: each pair's medians and channel / reference.
pub fn table(header: &str, samples: &[Sample]) -> String {
    let m = medians(samples);
    let mut out = String::from(header);
    out.push_str(&format!(
        "{:<40} {:>22} {:>24} {:>8}\n",
        "", "channel", "reference", "ratio"
    ));
    for p in PAIRS {
        let [a, b] = m[p.index()];
        let [na, nb] = p.sides();
        out.push_str(&format!(
            "{:<40} {:>22} {:>24} {:>8.2}\n",
            p.label(),
            format!("{na} {a:.2}"),
            format!("{nb} {b:.2}"),
            ratio(a, b)
        ));
    }
    out
}

/// Settings, every sample and each pair's ratio of medians, as JSON.
pub fn json(args: &ChannelsArgs, samples: &[Sample]) -> String {
    let m = medians(samples);
    let pairs: Vec<String> = PAIRS
        .iter()
        .map(|&p| {
            let [a, b] = p.sides();
            let list = |side: usize| {
                samples
                    .iter()
                    .map(|s| json_number(s[p.index()][side]))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!(
                "\"{}\":{{\"unit\":\"{}\",\"channel\":\"{a}\",\"reference\":\"{b}\",\"{a}\":[{}],\"{b}\":[{}],\"ratio\":{}}}",
                p.key(),
                p.unit(),
                list(0),
                list(1),
                json_number(ratio(m[p.index()][0], m[p.index()][1]))
            )
        })
        .collect();
    format!(
        "{{\"runs\":{},\"mem_mib\":{},\"stream_bytes\":{},\"round_trips\":{},\"file_bytes\":{},\"files\":{},\"pairs\":{{{}}}}}\n",
        args.runs,
        args.mem >> 20,
        args.stream_size,
        args.round_trips,
        args.file_size,
        args.files,
        pairs.join(",")
    )
}

fn plot(args: &ChannelsArgs, samples: &[Sample]) -> String {
    let panels: Vec<Panel<'_>> = PAIRS
        .iter()
        .map(|&p| {
            let [a, b] = p.sides();
            let values = |side: usize| samples.iter().map(|s| s[p.index()][side]).collect();
            (p.label(), vec![(a, values(0)), (b, values(1))])
        })
        .collect();
    svg_plot(
        &format!(
            "uvm's channels vs the devices they stand in for, one guest: {} MiB each way, {} round trips, a {} MiB file and {} small files, {} run(s)",
            args.stream_size >> 20,
            args.round_trips,
            args.file_size >> 20,
            args.files,
            args.runs
        ),
        &panels,
    )
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Vsock => "vsock",
            Channel::Tcp => "tcp",
        })
    }
}

/// Refuses at once what cannot work, with the reason on one line.
fn preflight(args: &ChannelsArgs) -> Result<(), BenchError> {
    let env = |m: String| Err(BenchError::Environment(m));
    if args.runs == 0 {
        return env("--runs 0: nothing to measure".into());
    }
    if args.stream_size == 0 || args.file_size == 0 || args.files == 0 || args.round_trips == 0 {
        return env(
            "--stream-size, --file-size, --files and --round-trips must all be above 0".into(),
        );
    }
    if args.timeout == 0 {
        return env("--timeout 0: no time to run".into());
    }
    if !args.dir.is_dir() {
        return env(format!("--dir {}: no such folder", args.dir.display()));
    }
    crate::check::ensure_can_boot_linux()?;
    crate::vmm::virtiofsd::binary()?;
    Ok(())
}

/// Runs the bench; the table on success.
pub fn run(args: &ChannelsArgs) -> Result<String, BenchError> {
    preflight(args)?;
    let (kernel, initrd) = crate::bench::default_paths()?;
    let bench = ChannelsBench {
        args,
        kernel,
        initrd,
        tap: format!("uvmbch{}", std::process::id() % 1_000_000),
    };
    let mut samples = vec![];
    for i in 1..=args.runs {
        let label = format!("run {i}/{}", args.runs);
        eprintln!(
            "bench channels: {label}: making {} MiB and {} small files in {}, booting",
            args.file_size >> 20,
            args.files,
            args.dir.display()
        );
        samples.push(bench.run_vm(&label)?);
    }
    let header = format!(
        "uvm's channels against the devices they stand in for, in one guest ({} MiB, {} run(s), medians)\n\
         streams: {} MiB each way and {} one-byte round trips, timed on the host; files: a {} MiB file \
         and {} files of 1 KiB, timed in the guest, first touch; MB = 10^6 bytes\n",
        args.mem >> 20,
        args.runs,
        args.stream_size >> 20,
        args.round_trips,
        args.file_size >> 20,
        args.files
    );
    let out = table(&header, &samples);
    let io =
        |p: &Path, e: crate::error::Error| BenchError::Environment(format!("{}: {e}", p.display()));
    if let Some(path) = &args.plot {
        write_plot(path, &plot(args, &samples)).map_err(|e| io(path, e))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, json(args, &samples))
            .map_err(|e| BenchError::Environment(format!("{}: {e}", path.display())))?;
    }
    Ok(out)
}

/// `uvm bench channels`: prints the table, or the error; the exit status.
pub fn main(args: &ChannelsArgs) -> i32 {
    match run(args) {
        Ok(table) => {
            print!("{table}");
            0
        }
        Err(e @ BenchError::Environment(_)) => {
            eprintln!("uvm bench channels: {e}");
            EXIT_UVM_ERROR
        }
        Err(e) => {
            eprintln!("uvm bench channels: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ChannelsArgs {
        ChannelsArgs {
            runs: 2,
            mem: 512 << 20,
            stream_size: 32 << 20,
            round_trips: 1000,
            file_size: 100 << 20,
            files: 1000,
            dir: "/dev/shm".into(),
            timeout: 900,
            json: None,
            plot: None,
        }
    }

    #[test]
    fn guest_lines_parse() {
        assert_eq!(parse_guest_line("uvm-init: ready"), None);
        assert_eq!(
            parse_guest_line("uvm-bench file blk read n=1000 t0=1.5 t1=2.5 rc=0 md5=abc"),
            Some(Ok(GuestLine::File {
                blk: true,
                op: FileOp::Read,
                n: 1000,
                t0: 1.5,
                t1: 2.5,
                rc: 0,
                md5: Some("abc".into())
            }))
        );
        assert_eq!(
            parse_guest_line("uvm-bench file fs seq n=10 t0=1 t1=2 rc=1"),
            Some(Ok(GuestLine::File {
                blk: false,
                op: FileOp::Seq,
                n: 10,
                t0: 1.0,
                t1: 2.0,
                rc: 1,
                md5: None
            }))
        );
        assert_eq!(
            parse_guest_line("uvm-bench to-guest vsock 5000"),
            Some(Ok(GuestLine::ToGuest(Channel::Vsock, 5000)))
        );
        assert_eq!(
            parse_guest_line("uvm-bench from-guest tcp 5003"),
            Some(Ok(GuestLine::FromGuest(Channel::Tcp, 5003)))
        );
        assert_eq!(
            parse_guest_line("uvm-bench echo tcp 5004"),
            Some(Ok(GuestLine::Echo(Channel::Tcp, 5004)))
        );
        assert_eq!(
            parse_guest_line("uvm-bench received vsock bytes=33554432"),
            Some(Ok(GuestLine::Received(Channel::Vsock, 32 << 20)))
        );
        assert_eq!(
            parse_guest_line("uvm-bench done"),
            Some(Ok(GuestLine::Done))
        );
        for bad in [
            "uvm-bench file nfs seq n=1 t0=1 t1=2 rc=0",
            "uvm-bench file fs erase n=1 t0=1 t1=2 rc=0",
            "uvm-bench file fs seq n=1 t1=2 rc=0",
            "uvm-bench to-guest pipe 5000",
            "uvm-bench echo vsock",
            "uvm-bench received tcp bytes=x",
            "uvm-bench frobnicate",
        ] {
            assert!(matches!(parse_guest_line(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn every_line_the_script_prints_is_one_the_parser_knows() {
        let s = guest_script(&args());
        assert!(s.contains("n=104857600") && s.contains("-lt 1000"), "{s}");
        assert!(s.contains("head -c 33554432 /dev/zero"), "{s}");
        let kinds: Vec<&str> = s
            .split([';', '\n'])
            .filter_map(|p| p.trim().strip_prefix("say "))
            .map(|p| p.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(kinds.iter().filter(|k| **k == "file").count(), 4);
        for k in kinds {
            assert!(
                ["file", "to-guest", "received", "from-guest", "echo", "done"].contains(&k),
                "{k}"
            );
        }
    }

    #[test]
    fn table_json_and_plot_hold_every_pair() {
        let a = args();
        let mut s1 = [[1.0, 2.0]; 7];
        s1[2] = [40.0, 80.0];
        let mut s2 = [[3.0, 2.0]; 7];
        s2[2] = [60.0, 80.0];
        let t = table("h\n", &[s1, s2]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 7, "{t}");
        assert!(lines[2].starts_with("host->guest (MB/s)"), "{t}");
        assert!(
            lines[2].contains("vsock 2.00") && lines[2].contains("tcp 2.00"),
            "{t}"
        );
        assert!(lines[2].ends_with("1.00"), "{t}");
        assert!(
            lines[4].contains("vsock 50.00") && lines[4].ends_with("0.62"),
            "{t}"
        );
        assert!(
            lines[5].contains("virtio-fs") && lines[5].contains("virtio-blk"),
            "{t}"
        );
        let j = json(&a, &[s1, s2]);
        assert!(
            j.starts_with("{\"runs\":2,\"mem_mib\":512,\"stream_bytes\":33554432,"),
            "{j}"
        );
        assert!(j.contains("\"round_trip\":{\"unit\":\"us\",\"channel\":\"vsock\",\"reference\":\"tcp\",\"vsock\":[40.000,60.000],\"tcp\":[80.000,80.000],\"ratio\":0.625}"), "{j}");
        assert!(
            j.contains("\"seq_read\":{\"unit\":\"MB/s\",\"channel\":\"virtio-fs\""),
            "{j}"
        );
        assert_eq!(j.matches('{').count(), j.matches('}').count());
        let svg = plot(&a, &[s1, s2]);
        assert_eq!(svg.matches("<rect").count(), 1 + 2 * 7);
        assert_eq!(svg.matches("<circle").count(), 2 * 2 * 7);
    }

    #[test]
    fn noise_is_the_length_asked_and_differs_by_seed() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_noise(&mut a, 1025, 1).unwrap();
        write_noise(&mut b, 1025, 2).unwrap();
        assert_eq!(a.len(), 1025);
        assert_ne!(a, b);
        assert_ne!(a[..8], a[8..16]);
    }

    #[test]
    fn bad_settings_are_environment_errors() {
        for change in [
            (|a: &mut ChannelsArgs| a.runs = 0) as fn(&mut ChannelsArgs),
            |a| a.files = 0,
            |a| a.stream_size = 0,
            |a| a.round_trips = 0,
            |a| a.timeout = 0,
            |a| a.dir = "/nonexistent/uvm".into(),
        ] {
            let mut a = args();
            change(&mut a);
            assert!(matches!(preflight(&a), Err(BenchError::Environment(_))));
        }
    }
}
