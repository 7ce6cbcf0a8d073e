//! Block I/O: a relative weight (`--blkio-weight`, the OCI spec's
//! `blockIO.weight`) and per-device rate limits (`--device-read-bps` and
//! friends, `blockIO.throttle*Device`). v1 (the blkio controller):
//! blkio.bfq.weight where BFQ is there, else blkio.weight (CFQ's), and
//! blkio.throttle.{read,write}_{bps,iops}_device; v2 (the io controller):
//! io.bfq.weight with the same value, else io.weight converted as runc
//! does (`1 + (weight - 10) * 9999 / 990`), and io.max. A kernel with
//! neither weight file (no BFQ, no CFQ, no io.cost) cannot weigh I/O: a
//! weight is then a one-line error.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{Resources, Write};

/// `--blkio-weight` range (as Docker and v1's blkio.weight).
pub const WEIGHT_MIN: u16 = 10;
pub const WEIGHT_MAX: u16 = 1000;

/// Which rate a [`Throttle`] limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IoLimit {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

impl IoLimit {
    pub const ALL: [IoLimit; 4] = [
        IoLimit::ReadBps,
        IoLimit::WriteBps,
        IoLimit::ReadIops,
        IoLimit::WriteIops,
    ];

    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            IoLimit::ReadBps => "--device-read-bps",
            IoLimit::WriteBps => "--device-write-bps",
            IoLimit::ReadIops => "--device-read-iops",
            IoLimit::WriteIops => "--device-write-iops",
        }
    }

    /// Bytes per second (else operations per second).
    pub fn is_bps(self) -> bool {
        matches!(self, IoLimit::ReadBps | IoLimit::WriteBps)
    }

    fn v1_file(self) -> &'static str {
        match self {
            IoLimit::ReadBps => "blkio.throttle.read_bps_device",
            IoLimit::WriteBps => "blkio.throttle.write_bps_device",
            IoLimit::ReadIops => "blkio.throttle.read_iops_device",
            IoLimit::WriteIops => "blkio.throttle.write_iops_device",
        }
    }

    fn v2_key(self) -> &'static str {
        match self {
            IoLimit::ReadBps => "rbps",
            IoLimit::WriteBps => "wbps",
            IoLimit::ReadIops => "riops",
            IoLimit::WriteIops => "wiops",
        }
    }
}

/// One rate limit on one block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub limit: IoLimit,
    pub major: u64,
    pub minor: u64,
    /// Bytes or operations per second (above 0).
    pub rate: u64,
}

/// v2's io.weight for a blkio weight (10..1000 onto 1..10000, runc's
/// conversion).
pub fn io_weight(blkio_weight: u16) -> u64 {
    let w = u64::from(blkio_weight.clamp(WEIGHT_MIN, WEIGHT_MAX));
    1 + (w - 10) * 9999 / 990
}

/// A weight out of range, as a reason.
pub fn check_weight(w: u16) -> std::result::Result<(), String> {
    if (WEIGHT_MIN..=WEIGHT_MAX).contains(&w) {
        Ok(())
    } else {
        Err(format!(
            "expected a weight from {WEIGHT_MIN} to {WEIGHT_MAX}"
        ))
    }
}

fn no_weight(files: &str) -> String {
    format!(
        "this kernel cannot weigh block I/O (no {files}: neither the BFQ nor the CFQ \
         I/O scheduler): run without --blkio-weight (blockIO.weight)"
    )
}

pub fn v1(r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(w) = r.blkio_weight {
        out.push(
            Write::new("blkio", "blkio.bfq.weight", w)
                .or("blkio.weight", w)
                .explain_if_missing(no_weight("blkio.bfq.weight or blkio.weight")),
        );
    }
    for t in &r.io_limits {
        out.push(Write::new(
            "blkio",
            t.limit.v1_file(),
            format!("{}:{} {}", t.major, t.minor, t.rate),
        ));
    }
    out
}

pub fn v2(r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(w) = r.blkio_weight {
        out.push(
            Write::new("io", "io.bfq.weight", w)
                .or("io.weight", io_weight(w))
                .explain_if_missing(no_weight("io.bfq.weight or io.weight")),
        );
    }
    // io.max: one line per device with all its limits (a later limit of
    // the same kind replaces an earlier one, as on v1).
    let mut per_device: BTreeMap<(u64, u64), BTreeMap<IoLimit, u64>> = BTreeMap::new();
    for t in &r.io_limits {
        per_device
            .entry((t.major, t.minor))
            .or_default()
            .insert(t.limit, t.rate);
    }
    for ((major, minor), limits) in per_device {
        let keys: Vec<String> = limits
            .iter()
            .map(|(l, rate)| format!("{}={rate}", l.v2_key()))
            .collect();
        out.push(Write::new(
            "io",
            "io.max",
            format!("{major}:{minor} {}", keys.join(" ")),
        ));
    }
    out
}

/// The whole disk `major:minor` names, checked: a reason if there is no
/// such block device or it is a partition (the kernel limits disks only).
pub fn check_disk(major: u64, minor: u64) -> std::result::Result<(), String> {
    let sys = Path::new("/sys/dev/block").join(format!("{major}:{minor}"));
    if !sys.exists() {
        return Err(format!("there is no block device {major}:{minor}"));
    }
    if sys.join("partition").exists() {
        let disk = std::fs::canonicalize(&sys)
            .ok()
            .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
            .map_or_else(String::new, |d| format!(", give /dev/{d}"));
        return Err(format!(
            "{major}:{minor} is a partition: I/O limits apply to whole disks{disk}"
        ));
    }
    Ok(())
}

/// `(major, minor)` of block device node `path`, a whole disk.
pub fn device_numbers(path: &Path) -> std::result::Result<(u64, u64), String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("no such device {}", path.display())
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{} is not a block device", path.display()));
    }
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    check_disk(major, minor).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res() -> Resources {
        Resources {
            blkio_weight: Some(500),
            io_limits: vec![
                Throttle {
                    limit: IoLimit::WriteBps,
                    major: 7,
                    minor: 0,
                    rate: 1 << 20,
                },
                Throttle {
                    limit: IoLimit::ReadIops,
                    major: 7,
                    minor: 0,
                    rate: 100,
                },
                Throttle {
                    limit: IoLimit::ReadBps,
                    major: 253,
                    minor: 0,
                    rate: 4096,
                },
            ],
            ..Resources::default()
        }
    }

    #[test]
    fn v1_files() {
        let w = v1(&res());
        assert_eq!(
            w[0].choices,
            [
                ("blkio.bfq.weight", "500".to_string()),
                ("blkio.weight", "500".to_string())
            ]
        );
        assert!(
            matches!(&w[0].if_missing, super::super::IfMissing::Explain(e) if e.contains("cannot weigh block I/O"))
        );
        let rest: Vec<(&str, &str)> = w[1..].iter().map(|w| (w.file(), w.value())).collect();
        assert_eq!(
            rest,
            [
                ("blkio.throttle.write_bps_device", "7:0 1048576"),
                ("blkio.throttle.read_iops_device", "7:0 100"),
                ("blkio.throttle.read_bps_device", "253:0 4096"),
            ]
        );
        assert!(w.iter().all(|w| w.controller == "blkio"));
    }

    #[test]
    fn v2_files() {
        let w = v2(&res());
        assert_eq!(
            w[0].choices,
            [
                ("io.bfq.weight", "500".to_string()),
                ("io.weight", "4950".to_string())
            ]
        );
        let rest: Vec<(&str, &str)> = w[1..].iter().map(|w| (w.file(), w.value())).collect();
        assert_eq!(
            rest,
            [
                ("io.max", "7:0 wbps=1048576 riops=100"),
                ("io.max", "253:0 rbps=4096")
            ]
        );
        assert!(w.iter().all(|w| w.controller == "io"));
    }

    #[test]
    fn weights() {
        assert_eq!(io_weight(10), 1);
        assert_eq!(io_weight(1000), 10000);
        assert_eq!(io_weight(500), 4950);
        assert!(check_weight(10).is_ok() && check_weight(1000).is_ok());
        assert!(check_weight(9).is_err() && check_weight(1001).is_err());
    }

    #[test]
    fn devices() {
        assert_eq!(
            device_numbers(Path::new("/dev/nonexistent-uvm")).unwrap_err(),
            "no such device /dev/nonexistent-uvm"
        );
        assert_eq!(
            device_numbers(Path::new("/dev/null")).unwrap_err(),
            "/dev/null is not a block device"
        );
        assert!(check_disk(4095, 1_048_575)
            .unwrap_err()
            .contains("no block device"));
        // A disk of this machine resolves to its numbers.
        if let Some(disk) = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| Path::new("/dev").join(e.file_name()))
            .find(|p| p.exists())
        {
            let (major, minor) = device_numbers(&disk).unwrap();
            let want = std::fs::read_to_string(format!(
                "/sys/block/{}/dev",
                disk.file_name().unwrap().to_string_lossy()
            ))
            .unwrap();
            assert_eq!(format!("{major}:{minor}"), want.trim());
        }
    }
}
