//! The guest's virtio devices: what `--disk`, `--root` and `--net` ask for,
//! and how each becomes a virtio-mmio window with its ioeventfds, irqfd and
//! event-loop worker.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use uvm_devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use uvm_devices::virtio::block::{self, Block, BlockConfig};
use uvm_devices::virtio::fs::{self, Fs, FsConfig};
use uvm_devices::virtio::net::{format_mac, tap, Net, NetConfig};
use uvm_devices::virtio::vsock::{Vsock, VsockConfig};
use uvm_devices::virtio::{self, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};

use super::layout::{IOAPIC_PINS, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use super::Vm;
use crate::acpi::AcpiDevice;
use crate::error::Error;

/// How many virtio devices fit: one IOAPIC pin each, from the first free one.
pub const MAX_DEVICES: u32 = IOAPIC_PINS - VIRTIO_IRQ_BASE;

/// `--disk PATH[,ro][,id=NAME][,root][,bw=RATE][,iops=N][,burst=SIZE][,ops_burst=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    pub id: Option<String>,
    /// The guest mounts this disk as `/` instead of staying on the initramfs.
    pub root: bool,
    /// Bytes per second of reads and writes, requests per second.
    pub rate_limit: RateLimiterConfig,
}

/// A rate limit's options as given, before they are checked together.
#[derive(Debug, Default, Clone, Copy)]
struct LimitOpts {
    bw: Option<u64>,
    burst: Option<u64>,
    ops: Option<u64>,
    ops_burst: Option<u64>,
}

impl LimitOpts {
    /// Takes `key=value` if `key` (after `prefix`) is a limit option:
    /// `bw`, `burst`, `ops_burst` and `ops` (or `ops_key`, for a disk's
    /// `iops`). `Ok(false)` when it is none of them.
    fn parse(&mut self, prefix: &str, ops_key: &str, key: &str, v: &str) -> Result<bool, String> {
        let Some(name) = key.strip_prefix(prefix) else {
            return Ok(false);
        };
        match name {
            "bw" => self.bw = Some(parse_rate(key, v)?),
            "burst" => self.burst = Some(parse_amount(key, v, "bytes", true)?),
            "ops_burst" => self.ops_burst = Some(parse_amount(key, v, "operations", false)?),
            n if n == ops_key => {
                self.ops = Some(parse_amount(key, v, "operations per second", false)?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Direction-specific options over the general ones.
    fn or(self, general: LimitOpts) -> LimitOpts {
        LimitOpts {
            bw: self.bw.or(general.bw),
            burst: self.burst.or(general.burst),
            ops: self.ops.or(general.ops),
            ops_burst: self.ops_burst.or(general.ops_burst),
        }
    }

    /// The limiter's configuration; a burst needs the rate it is a burst
    /// of (`what` names the limit and its rate options in the message).
    fn build(self, what: &str, bw_keys: &str, ops_keys: &str) -> Result<RateLimiterConfig, String> {
        if self.burst.is_some() && self.bw.is_none() {
            return Err(format!(
                "a byte burst for {what} needs a byte rate ({bw_keys}): the burst is spent on top of it"
            ));
        }
        if self.ops_burst.is_some() && self.ops.is_none() {
            return Err(format!(
                "an ops burst for {what} needs an ops rate ({ops_keys}): the burst is spent on top of it"
            ));
        }
        Ok(RateLimiterConfig {
            bandwidth: self
                .bw
                .map(|r| BucketConfig::per_second(r, self.burst.unwrap_or(0))),
            ops: self
                .ops
                .map(|r| BucketConfig::per_second(r, self.ops_burst.unwrap_or(0))),
        })
    }
}

/// A rate in bytes per second, written as a size: `10M` is 10 MiB/s.
fn parse_rate(key: &str, v: &str) -> Result<u64, String> {
    match uvm_runtime::limits::parse_size(v) {
        Ok(0) => Err(format!(
            "{key}={v}: a rate must be more than 0 bytes per second"
        )),
        Ok(n) => Ok(n),
        Err(why) => Err(format!(
            "{key}={v}: {why}; a rate is bytes per second, e.g. 10M for 10 MiB/s"
        )),
    }
}

/// A positive number of bytes (a size, as `4M`) or of operations (a
/// whole number).
fn parse_amount(key: &str, v: &str, unit: &str, size: bool) -> Result<u64, String> {
    let n = if size {
        uvm_runtime::limits::parse_size(v).map_err(|why| format!("{key}={v}: {why}"))?
    } else {
        v.parse::<u64>()
            .map_err(|_| format!("{key}={v}: expected a whole number of {unit}"))?
    };
    if n == 0 {
        return Err(format!("{key}={v}: must be more than 0 {unit}"));
    }
    Ok(n)
}

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(
                "a disk needs a path: --disk PATH[,ro][,id=NAME][,root][,bw=RATE,iops=N]".into(),
            );
        }
        let mut spec = DiskSpec {
            path: PathBuf::from(path),
            read_only: false,
            id: None,
            root: false,
            rate_limit: RateLimiterConfig::default(),
        };
        let mut limits = LimitOpts::default();
        for opt in parts {
            if let Some((key, v)) = opt.split_once('=') {
                if limits.parse("", "iops", key, v)? {
                    continue;
                }
            }
            match opt.split_once('=') {
                None if opt == "ro" => spec.read_only = true,
                None if opt == "rw" => spec.read_only = false,
                None if opt == "root" => spec.root = true,
                Some(("id", id)) if id.is_empty() || id.len() > block::ID_BYTES => {
                    return Err(format!(
                        "id={id:?}: a disk id is 1 to {} bytes",
                        block::ID_BYTES
                    ))
                }
                Some(("id", id)) => spec.id = Some(id.to_string()),
                _ => {
                    return Err(format!(
                        "unknown disk option {opt:?} (use ro, id=NAME, root, bw=RATE, iops=N, \
                         burst=SIZE or ops_burst=N)"
                    ))
                }
            }
        }
        spec.rate_limit = limits.build("the disk", "bw=", "iops=")?;
        Ok(spec)
    }
}

/// `--vsock cid=N,uds=PATH`: the guest's context id and the Unix socket
/// host programs use (Firecracker's convention: `CONNECT <port>` on PATH
/// reaches the guest, the guest's connections to port P reach `PATH_P`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    pub cid: u64,
    pub uds: PathBuf,
}

impl FromStr for VsockSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use --vsock cid=N,uds=PATH (N from 3)";
        let (mut cid, mut uds) = (None, None);
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("cid", n)) => {
                    let n: u64 = n
                        .parse()
                        .map_err(|_| format!("cid={n:?}: not a number; {usage}"))?;
                    if !(3..=u64::from(u32::MAX - 1)).contains(&n) {
                        return Err(format!(
                            "cid={n}: 0, 1 and 2 are the hypervisor's and the host's, and a cid fits in 32 bits; {usage}"
                        ));
                    }
                    cid = Some(n);
                }
                Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
                _ => return Err(format!("unknown vsock option {opt:?}; {usage}")),
            }
        }
        match (cid, uds) {
            (Some(cid), Some(uds)) => Ok(VsockSpec { cid, uds }),
            _ => Err(format!("--vsock needs both cid and uds; {usage}")),
        }
    }
}

impl VsockSpec {
    /// What can be told before anything is made: the socket must not exist
    /// (uvm never removes a file it did not create) and its folder must.
    pub fn check(&self) -> Result<(), Error> {
        if self.uds.symlink_metadata().is_ok() {
            return Err(Error::Device(format!(
                "--vsock uds={}: the path exists; uvm will not remove a file it did not create",
                self.uds.display()
            )));
        }
        let dir = match self.uds.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::Device(format!(
                "--vsock uds={}: no folder {}",
                self.uds.display(),
                dir.display()
            )));
        }
        Ok(())
    }
}

/// `--fs HOST_DIR:TAG[:ro]`: a host folder the guest mounts over
/// virtio-fs, served by a virtiofsd of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSpec {
    pub dir: PathBuf,
    pub tag: String,
    pub read_only: bool,
    /// Where the guest's init mounts it (`/mnt/TAG` for `--fs`).
    pub guest_path: String,
}

/// Tags are names: letters, digits, `.`, `_` and `-`, at most 36 bytes.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= fs::TAG_BYTES
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl FromStr for FsSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use --fs HOST_DIR:TAG[:ro]";
        let mut parts: Vec<&str> = s.split(':').collect();
        let read_only = match parts.last() {
            Some(&"ro") => true,
            Some(&"rw") => false,
            _ => {
                parts.push("");
                false
            }
        };
        parts.pop();
        let tag = parts.pop().unwrap_or_default();
        let dir = parts.join(":");
        if dir.is_empty() || tag.is_empty() {
            return Err(format!("{s:?}: {usage}"));
        }
        if !valid_tag(tag) {
            return Err(format!(
                "tag {tag:?}: 1 to {} letters, digits, '.', '_' or '-'",
                fs::TAG_BYTES
            ));
        }
        Ok(FsSpec {
            dir: PathBuf::from(dir),
            tag: tag.to_string(),
            read_only,
            guest_path: format!("/mnt/{tag}"),
        })
    }
}

impl FsSpec {
    pub fn check(&self) -> Result<(), Error> {
        if !self.dir.is_dir() {
            return Err(Error::Device(format!(
                "--fs {}: no such folder",
                self.dir.display()
            )));
        }
        Ok(())
    }
}

/// `--net tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,LIMITS]` or
/// `--net bridge[,mac=..][,LIMITS]`, LIMITS being `bw=RATE`, `ops=N`,
/// `burst=SIZE` and `ops_burst=N` for both directions, each also with an
/// `rx_` or `tx_` prefix for one direction (which wins over the other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// For `bridge`, empty until uvm's lease names the tap it makes.
    pub tap: String,
    pub mac: Option<[u8; 6]>,
    /// On uvm's bridge, with an address from its allocator.
    pub bridge: bool,
    /// Frames to the guest, frames from it.
    pub rx_rate_limit: RateLimiterConfig,
    pub tx_rate_limit: RateLimiterConfig,
}

impl FromStr for NetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = None;
        let mut bridge = false;
        let (mut both, mut rx, mut tx) = (
            LimitOpts::default(),
            LimitOpts::default(),
            LimitOpts::default(),
        );
        for opt in s.split(',') {
            if let Some((key, v)) = opt.split_once('=') {
                if rx.parse("rx_", "ops", key, v)?
                    || tx.parse("tx_", "ops", key, v)?
                    || both.parse("", "ops", key, v)?
                {
                    continue;
                }
            }
            match opt.split_once('=') {
                Some(("tap", name)) => tap = Some(name.to_string()),
                Some(("mac", m)) => mac = Some(parse_mac(m)?),
                None if opt == "bridge" => bridge = true,
                _ => {
                    return Err(format!(
                        "unknown net option {opt:?}: use tap=NAME[,mac=XX:XX:XX:XX:XX:XX] or bridge[,mac=..], \
                         and for rate limits [rx_|tx_]bw=RATE, [rx_|tx_]ops=N, [rx_|tx_]burst=SIZE, \
                         [rx_|tx_]ops_burst=N"
                    ))
                }
            }
        }
        let rx_rate_limit = rx
            .or(both)
            .build("RX", "bw= or rx_bw=", "ops= or rx_ops=")?;
        let tx_rate_limit = tx
            .or(both)
            .build("TX", "bw= or tx_bw=", "ops= or tx_ops=")?;
        if let Some(m) = mac {
            if m[0] & 1 != 0 {
                return Err(format!("mac={}: a multicast address", format_mac(&m)));
            }
        }
        if bridge {
            if tap.is_some() {
                return Err(
                    "--net bridge makes its own tap: give bridge or tap=NAME, not both".into(),
                );
            }
            return Ok(NetSpec {
                tap: String::new(),
                mac,
                bridge,
                rx_rate_limit,
                tx_rate_limit,
            });
        }
        let tap = tap.ok_or(
            "a network device needs a tap or uvm's bridge: --net tap=NAME or --net bridge",
        )?;
        if !tap::valid_name(&tap) {
            return Err(format!(
                "tap={tap:?}: an interface name is 1 to 15 bytes, without '/', ':', '%' or whitespace"
            ));
        }
        Ok(NetSpec {
            tap,
            mac,
            bridge: false,
            rx_rate_limit,
            tx_rate_limit,
        })
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac={s}: expected six hex bytes, as 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut n = 0;
    for (i, byte) in s.split(':').enumerate() {
        if i >= 6 || byte.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(byte, 16).map_err(|_| bad())?;
        n += 1;
    }
    if n != 6 {
        return Err(bad());
    }
    Ok(mac)
}

/// Checks that can be made without KVM, so bad input fails the same way on
/// every host.
pub fn validate(
    disks: &[DiskSpec],
    nets: &[NetSpec],
    vsock: Option<&VsockSpec>,
    shares: &[FsSpec],
) -> Result<(), Error> {
    if let Some(v) = vsock {
        v.check()?;
    }
    for f in shares {
        f.check()?;
    }
    if let Some(tag) = given_twice(shares.iter().map(|f| f.tag.as_str())) {
        return Err(Error::Device(format!(
            "--fs tag {tag} is given twice: each share needs its own"
        )));
    }
    if !shares.is_empty() {
        super::virtiofsd::binary()?;
    }
    let count = disks.len() + nets.len() + usize::from(vsock.is_some()) + shares.len();
    if count > MAX_DEVICES as usize {
        return Err(Error::Device(format!(
            "{count} virtio devices: uvm has interrupt lines for at most {MAX_DEVICES}"
        )));
    }
    if disks.iter().filter(|d| d.root).count() > 1 {
        return Err(Error::Device("only one disk can be the root".into()));
    }
    for d in disks {
        block::check_image(&d.path)?;
    }
    if let Some(tap) = given_twice(nets.iter().map(|n| n.tap.as_str())) {
        return Err(Error::Device(format!(
            "tap {tap} is given twice: each --net needs its own tap"
        )));
    }
    Ok(())
}

/// A name that occurs more than once, if any.
fn given_twice<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut v: Vec<&str> = names.collect();
    v.sort_unstable();
    v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// The disks in the order the guest finds them: the root disk first, so it
/// is always /dev/vda.
pub fn ordered(disks: &[DiskSpec]) -> Vec<DiskSpec> {
    let mut v: Vec<DiskSpec> = disks.iter().filter(|d| d.root).cloned().collect();
    v.extend(disks.iter().filter(|d| !d.root).cloned());
    v
}

/// What the guest is told about the devices that were attached.
#[derive(Debug, Default)]
pub struct Attached {
    pub acpi: Vec<AcpiDevice>,
    /// Command-line fragments: `virtio_mmio.device=` for kernels that take
    /// it, and `root=` when a disk is the root.
    pub cmdline: Vec<String>,
}

/// Creates the devices and wires each into `vm`: the next MMIO window and
/// IOAPIC pin, ioeventfds on QueueNotify, the irqfd, and its worker in the
/// event loop.
pub fn attach(
    vm: &mut Vm,
    disks: &[DiskSpec],
    nets: &[NetSpec],
    vsock: Option<&VsockSpec>,
    shares: &[FsSpec],
) -> Result<Attached, Error> {
    let mut out = Attached::default();
    for d in ordered(disks) {
        let dev = Block::new(BlockConfig {
            path: d.path.clone(),
            read_only: d.read_only,
            id: d.id.clone(),
            rate_limit: d.rate_limit,
        })?;
        add_device(
            vm,
            &mut out,
            dev,
            format!("virtio-blk {}", d.path.display()),
        )?;
        if d.root {
            out.cmdline.push(format!(
                "root=/dev/vda {}",
                if d.read_only { "ro" } else { "rw" }
            ));
        }
    }
    for n in nets {
        let dev = Net::new(NetConfig {
            tap: n.tap.clone(),
            mac: n.mac,
            rx_rate_limit: n.rx_rate_limit,
            tx_rate_limit: n.tx_rate_limit,
        })?;
        let what = format!("virtio-net {} {}", n.tap, format_mac(&dev.mac()));
        add_device(vm, &mut out, dev, what)?;
    }
    if let Some(v) = vsock {
        let dev = Vsock::new(VsockConfig {
            guest_cid: v.cid,
            uds_path: v.uds.clone(),
        })?;
        let what = format!("virtio-vsock cid {} {}", v.cid, v.uds.display());
        add_device(vm, &mut out, dev, what)?;
    }
    for (i, f) in shares.iter().enumerate() {
        let (daemon, socket) = super::virtiofsd::Virtiofsd::start(f, i)?;
        vm.keep_alive(Box::new(daemon));
        let dev = Fs::new(FsConfig {
            socket,
            tag: f.tag.clone(),
        })?;
        let what = format!("virtio-fs {} {}", f.tag, f.dir.display());
        add_device(vm, &mut out, dev, what)?;
    }
    if !shares.is_empty() {
        let list: Vec<uvm_protocol::Share> = shares
            .iter()
            .map(|f| uvm_protocol::Share {
                tag: f.tag.clone(),
                read_only: f.read_only,
                path: f.guest_path.clone(),
            })
            .collect();
        out.cmdline.push(uvm_protocol::encode_shares(&list));
    }
    // Debian's kernels find the devices in the DSDT; kernels built with
    // VIRTIO_MMIO_CMDLINE_DEVICES (and no ACPI) find them here.
    for dev in &out.acpi {
        if let AcpiDevice::VirtioMmio { base, len, irq } = dev {
            out.cmdline
                .push(format!("virtio_mmio.device={}K@{base:#x}:{irq}", len >> 10));
        }
    }
    Ok(out)
}

/// Puts `dev` in the next window: the slot is the number of devices
/// already described.
fn add_device<D>(vm: &mut Vm, out: &mut Attached, dev: D, what: String) -> Result<(), Error>
where
    D: virtio::VirtioDevice + event_manager::MutEventSubscriber + 'static,
{
    let slot = u32::try_from(out.acpi.len()).unwrap_or(u32::MAX);
    let (base, irq) = place(slot)?;
    let (transport, worker) = virtio::mmio_device(vm.memory().clone(), dev)?;
    let device = worker.clone();
    vm.add_report(
        what,
        Box::new(move || match device.lock() {
            Ok(d) => d.summary(),
            Err(_) => "(the device's worker panicked)".into(),
        }),
    );
    wire(vm, transport, worker, base, irq)?;
    out.acpi.push(AcpiDevice::VirtioMmio {
        base,
        len: VIRTIO_MMIO_SIZE,
        irq,
    });
    Ok(())
}

fn place(slot: u32) -> Result<(u64, u32), Error> {
    if slot >= MAX_DEVICES {
        return Err(Error::Device(format!(
            "more than {MAX_DEVICES} virtio devices"
        )));
    }
    Ok((
        VIRTIO_MMIO_BASE + u64::from(slot) * VIRTIO_MMIO_SIZE,
        VIRTIO_IRQ_BASE + slot,
    ))
}

fn wire<D>(
    vm: &mut Vm,
    transport: virtio::MmioTransport,
    worker: Arc<Mutex<D>>,
    base: u64,
    irq: u32,
) -> Result<(), Error>
where
    D: event_manager::MutEventSubscriber + Send + 'static,
{
    const _: () = assert!(VIRTIO_MMIO_SIZE == MMIO_WINDOW_SIZE);
    for (queue, evt) in transport.ioeventfds() {
        vm.fd()
            .register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                queue,
            )
            .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
    }
    vm.fd()
        .register_irqfd(transport.irq_eventfd(), irq)
        .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    vm.add_subscriber(worker);
    vm.add_mmio_device(Arc::new(Mutex::new(transport)), base, VIRTIO_MMIO_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn disk_specs() {
        let d: DiskSpec = "/img/a.raw".parse().unwrap();
        assert_eq!(
            d,
            DiskSpec {
                path: "/img/a.raw".into(),
                read_only: false,
                id: None,
                root: false,
                rate_limit: RateLimiterConfig::default(),
            }
        );
        let d: DiskSpec = "a.raw,ro,id=data,root".parse().unwrap();
        assert!(d.read_only && d.root);
        assert_eq!(d.id.as_deref(), Some("data"));
        for bad in [
            "",
            ",ro",
            "a,rx",
            "a,id=",
            "a,id=123456789012345678901",
            "a,size=3",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad:?} accepted");
        }
    }

    fn per_second(rate: u64, burst: u64) -> Option<BucketConfig> {
        Some(BucketConfig::per_second(rate, burst))
    }

    #[test]
    fn disk_rate_limits() {
        let d: DiskSpec = "a.raw,bw=10M,iops=100,burst=20M,ops_burst=50,ro"
            .parse()
            .unwrap();
        assert!(d.read_only);
        assert_eq!(
            d.rate_limit,
            RateLimiterConfig {
                bandwidth: per_second(10 << 20, 20 << 20),
                ops: per_second(100, 50),
            }
        );
        // The whole bucket refills in a second: the rate is its size.
        assert_eq!(
            d.rate_limit.bandwidth.unwrap().refill_time,
            std::time::Duration::from_secs(1)
        );
        let d: DiskSpec = "a.raw,bw=4M".parse().unwrap();
        assert_eq!(d.rate_limit.bandwidth, per_second(4 << 20, 0));
        assert_eq!(d.rate_limit.ops, None);
        let d: DiskSpec = "a.raw,iops=7".parse().unwrap();
        assert_eq!(d.rate_limit.ops, per_second(7, 0));
        assert!("a.raw"
            .parse::<DiskSpec>()
            .unwrap()
            .rate_limit
            .is_unlimited());
        for (bad, why) in [
            ("a,bw=0", "bw=0: a rate must be more than 0"),
            ("a,bw=-5M", "bw=-5M: expected a size"),
            ("a,bw=fast", "bw=fast: expected a size"),
            ("a,bw=", "bw=: expected a size"),
            ("a,bw=10X", "unknown unit"),
            ("a,bw=10M/s", "unknown unit"),
            ("a,iops=0", "iops=0: must be more than 0"),
            ("a,iops=-1", "iops=-1: expected a whole number"),
            ("a,iops=1.5", "iops=1.5: expected a whole number"),
            (
                "a,burst=1M",
                "a byte burst for the disk needs a byte rate (bw=)",
            ),
            ("a,iops=5,burst=1M", "needs a byte rate"),
            (
                "a,ops_burst=5",
                "an ops burst for the disk needs an ops rate (iops=)",
            ),
            ("a,bw=1M,burst=0", "burst=0: must be more than 0"),
            (
                "a,bw=1M,ops_burst=x",
                "ops_burst=x: expected a whole number",
            ),
            ("a,ops=5", "unknown disk option"),
            ("a,rx_bw=1M", "unknown disk option"),
        ] {
            let e = bad.parse::<DiskSpec>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn net_rate_limits() {
        let n: NetSpec = "tap=t,bw=10M".parse().unwrap();
        assert_eq!(n.rx_rate_limit, n.tx_rate_limit);
        assert_eq!(n.rx_rate_limit.bandwidth, per_second(10 << 20, 0));
        // Per direction, over both.
        let n: NetSpec = "tap=t,bw=10M,rx_bw=1M,tx_ops=100,burst=2M,ops=50,rx_ops_burst=9"
            .parse()
            .unwrap();
        assert_eq!(
            n.rx_rate_limit,
            RateLimiterConfig {
                bandwidth: per_second(1 << 20, 2 << 20),
                ops: per_second(50, 9),
            }
        );
        assert_eq!(
            n.tx_rate_limit,
            RateLimiterConfig {
                bandwidth: per_second(10 << 20, 2 << 20),
                ops: per_second(100, 0),
            }
        );
        // One direction alone.
        let n: NetSpec = "tap=t,tx_bw=512k,tx_burst=1M".parse().unwrap();
        assert!(n.rx_rate_limit.is_unlimited());
        assert_eq!(n.tx_rate_limit.bandwidth, per_second(512 << 10, 1 << 20));
        let n: NetSpec = "bridge,bw=1M".parse().unwrap();
        assert!(n.bridge && !n.tx_rate_limit.is_unlimited());
        assert!("tap=t"
            .parse::<NetSpec>()
            .unwrap()
            .rx_rate_limit
            .is_unlimited());
        for (bad, why) in [
            ("tap=t,bw=0", "bw=0: a rate must be more than 0"),
            ("tap=t,rx_bw=junk", "rx_bw=junk: expected a size"),
            ("tap=t,tx_ops=0", "tx_ops=0: must be more than 0"),
            ("tap=t,ops=many", "ops=many: expected a whole number"),
            (
                "tap=t,burst=1M",
                "a byte burst for RX needs a byte rate (bw= or rx_bw=)",
            ),
            (
                "tap=t,rx_bw=1M,burst=1M",
                "a byte burst for TX needs a byte rate (bw= or tx_bw=)",
            ),
            (
                "tap=t,rx_ops_burst=3",
                "an ops burst for RX needs an ops rate (ops= or rx_ops=)",
            ),
            ("tap=t,iops=5", "unknown net option"),
            ("tap=t,up_bw=1M", "unknown net option"),
        ] {
            let e = bad.parse::<NetSpec>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn net_specs() {
        let n: NetSpec = "tap=uvmtap0,mac=52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(n.tap, "uvmtap0");
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 1]));
        assert_eq!(format_mac(&n.mac.unwrap()), "52:54:00:ab:cd:01");
        for bad in [
            "",
            "mac=52:54:00:00:00:01",
            "tap=",
            "tap=a/b",
            "tap=waytoolonginterfacename",
            "tap=t,mac=52:54:00:00:00",
            "tap=t,mac=52:54:00:00:00:01:02",
            "tap=t,mac=zz:54:00:00:00:01",
            "tap=t,mac=01:00:5e:00:00:01",
            "tap=t,queues=2",
        ] {
            assert!(bad.parse::<NetSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn root_disk_comes_first_and_windows_do_not_overlap() {
        let disks: Vec<DiskSpec> = ["a", "b,root", "c"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let order: Vec<_> = ordered(&disks).into_iter().map(|d| d.path).collect();
        assert_eq!(order, [PathBuf::from("b"), "a".into(), "c".into()]);
        let (b0, i0) = place(0).unwrap();
        let (b1, i1) = place(1).unwrap();
        assert_eq!((b0, i0), (VIRTIO_MMIO_BASE, VIRTIO_IRQ_BASE));
        assert_eq!(b1 - b0, VIRTIO_MMIO_SIZE);
        assert_eq!(i1, i0 + 1);
        let (_, last) = place(MAX_DEVICES - 1).unwrap();
        assert_eq!(last, IOAPIC_PINS - 1);
        assert!(place(MAX_DEVICES).is_err());
    }

    #[test]
    fn validation_catches_what_it_can_without_kvm() {
        let dir = std::env::temp_dir().join(format!("uvm-virtio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, [0u8; 100]).unwrap();
        let ok = dir.join("ok");
        std::fs::write(&ok, [0u8; 4096]).unwrap();
        let spec = |p: &Path, root| DiskSpec {
            path: p.to_path_buf(),
            read_only: false,
            id: None,
            root,
            rate_limit: RateLimiterConfig::default(),
        };
        assert!(validate(&[spec(&ok, true)], &[], None, &[]).is_ok());
        for bad in [
            vec![spec(&small, false)],
            vec![spec(&dir, false)],
            vec![spec(&dir.join("missing"), false)],
            vec![spec(&ok, true), spec(&ok, true)],
        ] {
            let e = validate(&bad, &[], None, &[]).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
        let tap = |t: &str| NetSpec {
            tap: t.into(),
            mac: None,
            bridge: false,
            rx_rate_limit: RateLimiterConfig::default(),
            tx_rate_limit: RateLimiterConfig::default(),
        };
        assert!(validate(&[], &[tap("a"), tap("a")], None, &[]).is_err());
        let many: Vec<_> = (0..MAX_DEVICES + 1)
            .map(|i| tap(&format!("t{i}")))
            .collect();
        assert!(validate(&[], &many, None, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fs_flags() {
        let f: FsSpec = "/srv/data:share".parse().unwrap();
        assert_eq!(
            f,
            FsSpec {
                dir: "/srv/data".into(),
                tag: "share".into(),
                read_only: false,
                guest_path: "/mnt/share".into(),
            }
        );
        let f: FsSpec = "/a:b:c:ro".parse().unwrap();
        assert_eq!(
            (f.dir.to_str(), f.tag.as_str(), f.read_only),
            (Some("/a:b"), "c", true)
        );
        for bad in [
            "",
            "/a",
            ":t",
            "/a:",
            "/a:ro",
            "/a:t t",
            "/a:t/u",
            &format!("/a:{}", "x".repeat(37)),
        ] {
            assert!(bad.parse::<FsSpec>().is_err(), "{bad:?} accepted");
        }
        let missing = FsSpec {
            dir: "/nonexistent-uvm".into(),
            tag: "t".into(),
            read_only: false,
            guest_path: "/mnt/t".into(),
        };
        let e = validate(&[], &[], None, std::slice::from_ref(&missing))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such folder"), "{e}");
        let mut twice = missing;
        twice.dir = std::env::temp_dir();
        let e = validate(&[], &[], None, &[twice.clone(), twice])
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn vsock_flags() {
        let v: VsockSpec = "cid=3,uds=/tmp/v.sock".parse().unwrap();
        assert_eq!(
            (v.cid, v.uds.as_path()),
            (3, std::path::Path::new("/tmp/v.sock"))
        );
        for (bad, why) in [
            ("cid=2,uds=/tmp/v", "the host's"),
            ("cid=0,uds=/tmp/v", "the host's"),
            ("cid=99999999999,uds=/tmp/v", "32 bits"),
            ("cid=x,uds=/tmp/v", "not a number"),
            ("cid=3", "needs both"),
            ("uds=/tmp/v", "needs both"),
            ("cid=3,uds=/tmp/v,port=1", "unknown vsock option"),
        ] {
            let e = bad.parse::<VsockSpec>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let exists = VsockSpec {
            cid: 3,
            uds: std::env::temp_dir(),
        };
        assert!(exists.check().unwrap_err().to_string().contains("exists"));
        let nodir = VsockSpec {
            cid: 3,
            uds: "/nonexistent-uvm/v.sock".into(),
        };
        assert!(nodir.check().unwrap_err().to_string().contains("no folder"));
    }
}
