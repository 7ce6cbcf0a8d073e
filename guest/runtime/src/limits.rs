//! Parsing of resource-limit flags (`--memory`, `--cpus`, `--pids-limit`,
//! `--cpu-shares`, `--cpuset-cpus`, `--device-write-bps`...) into the
//! numbers the cgroup layer writes. Each checks what it can before
//! anything is created: a CPU that is not online or a device that does
//! not exist is a one-line error naming the flag.

use std::path::Path;

use super::cgroups::{blkio, cpu, cpuset, IoLimit, Throttle};
use super::error::{Error, Result};

/// Smallest memory limit accepted (as docker): below this the runtime itself
/// and a shell cannot start.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// CFS period used for `--cpus` (100 ms, as docker and runc).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Parses a size: a number with an optional unit b, k, m, g, t (powers of
/// 1024; `kb`, `KiB`, `M`... accepted), e.g. `512m`, `1.5g`, `4096`. The one
/// size parser of the workspace: the VMM's `--mem` and the runtime's limits
/// both use it. The error is the reason alone; callers name the flag.
pub fn parse_size(value: &str) -> std::result::Result<u64, String> {
    let s = value.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let expected = || "expected a size such as 64m, 512m or 2g".to_string();
    if num.is_empty() {
        return Err(expected());
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} (use b, k, m, g or t, e.g. 512m)"
            ))
        }
    };
    let unit = 1u64 << shift;
    // Fractions in integers (up to 6 digits), so 1.5g is exactly 3 << 29.
    let bytes = match num.split_once('.') {
        Some((whole, frac)) => {
            if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(expected());
            }
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| expected())?
            };
            let frac_val: u64 = frac.parse().map_err(|_| expected())?;
            let scale = 10u64.pow(u32::try_from(frac.len()).unwrap_or(6));
            whole
                .checked_mul(unit)
                .and_then(|w| w.checked_add(frac_val.checked_mul(unit)? / scale))
        }
        None => num.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)),
    };
    bytes.ok_or_else(|| "too large".to_string())
}

/// A memory limit: [`parse_size`], at least [`MIN_MEMORY`].
pub fn parse_memory(flag: &'static str, value: &str) -> Result<u64> {
    let bytes = parse_size(value).map_err(|reason| Error::invalid(flag, value, reason))?;
    if bytes < MIN_MEMORY {
        return Err(Error::invalid(
            flag,
            value,
            "the minimum memory limit is 6m",
        ));
    }
    Ok(bytes)
}

/// `--cpus N` as a CFS quota (microseconds per [`CPU_PERIOD_US`]).
pub fn parse_cpus(value: &str, host_cpus: usize) -> Result<u64> {
    let f: f64 = value.trim().parse().map_err(|_| {
        Error::invalid(
            "--cpus",
            value,
            "expected a number of CPUs such as 0.5 or 2",
        )
    })?;
    if !f.is_finite() || f < 0.01 {
        return Err(Error::invalid("--cpus", value, "must be at least 0.01"));
    }
    if f > host_cpus as f64 {
        return Err(Error::invalid(
            "--cpus",
            value,
            format!("this host has {host_cpus} CPUs"),
        ));
    }
    // In range [1000, host_cpus * 100000]: no truncation beyond rounding.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let quota = (f * CPU_PERIOD_US as f64).round() as u64;
    Ok(quota.max(1000))
}

/// `--pids-limit N`: a positive number of tasks.
pub fn parse_pids(value: &str) -> Result<i64> {
    match value.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::invalid(
            "--pids-limit",
            value,
            "expected a positive number of processes",
        )),
    }
}

/// `--cpu-shares N` (cgroup v1 shares, 2..262144; converted to a weight on v2).
pub fn parse_cpu_shares(value: &str) -> Result<u64> {
    match value.trim().parse::<u64>() {
        Ok(n) if (cpu::SHARES_MIN..=cpu::SHARES_MAX).contains(&n) => Ok(n),
        _ => Err(Error::invalid(
            "--cpu-shares",
            value,
            "expected a number from 2 to 262144 (1024 is the default weight)",
        )),
    }
}

/// `--cpu-weight N` (cgroup v2 weight, 1..10000) as the v1 shares it is
/// kept as ([`cpu::weight_to_shares`]; on v2 it converts back exactly).
pub fn parse_cpu_weight(value: &str) -> Result<u64> {
    match value.trim().parse::<u64>() {
        Ok(n) if (cpu::WEIGHT_MIN..=cpu::WEIGHT_MAX).contains(&n) => Ok(cpu::weight_to_shares(n)),
        _ => Err(Error::invalid(
            "--cpu-weight",
            value,
            "expected a number from 1 to 10000 (100 is the default weight)",
        )),
    }
}

/// `--cpuset-cpus LIST` / `--cpuset-mems LIST`: a list such as `0-2,4`
/// of online CPUs (or memory nodes), in the kernel's format.
pub fn parse_cpuset(flag: &'static str, value: &str) -> Result<String> {
    let (online, what) = if flag == "--cpuset-mems" {
        (cpuset::online_mems(), "memory node")
    } else {
        let online = cpuset::online_cpus().map_err(|e| Error::invalid(flag, value, e))?;
        (online, "CPU")
    };
    cpuset::check(value, &online, what).map_err(|e| Error::invalid(flag, value, e))
}

/// `--blkio-weight N`: 10..1000.
pub fn parse_blkio_weight(value: &str) -> Result<u16> {
    let bad = || {
        Error::invalid(
            "--blkio-weight",
            value,
            "expected a number from 10 to 1000 (500 is the default weight)",
        )
    };
    let w = value.trim().parse::<u16>().map_err(|_| bad())?;
    blkio::check_weight(w).map_err(|_| bad())?;
    Ok(w)
}

/// `--device-read-bps DEV:RATE` and its siblings: a block device node
/// (resolved to its numbers now) and a rate, bytes per second as a size
/// (`1m`, `512k`) or operations per second.
pub fn parse_io_limit(limit: IoLimit, value: &str) -> Result<Throttle> {
    let flag = limit.flag();
    let example = if limit.is_bps() {
        "expected DEVICE:RATE, e.g. /dev/sda:1m"
    } else {
        "expected DEVICE:IOPS, e.g. /dev/sda:100"
    };
    let (dev, rate) = value
        .rsplit_once(':')
        .filter(|(d, r)| !d.is_empty() && !r.is_empty())
        .ok_or_else(|| Error::invalid(flag, value, example))?;
    let rate = if limit.is_bps() {
        parse_size(rate).map_err(|e| Error::invalid(flag, value, format!("rate: {e}")))?
    } else {
        rate.trim().parse::<u64>().map_err(|_| {
            Error::invalid(flag, value, "expected a number of operations per second")
        })?
    };
    if rate == 0 {
        return Err(Error::invalid(flag, value, "the rate must be above 0"));
    }
    let (major, minor) =
        blkio::device_numbers(Path::new(dev)).map_err(|e| Error::invalid(flag, value, e))?;
    Ok(Throttle {
        limit,
        major,
        minor,
        rate,
    })
}

/// `--memory-swap SIZE`: memory plus swap (Docker's meaning), at least
/// `--memory`, which it needs; -1 for unlimited swap.
pub fn parse_memory_swap(value: &str, memory: Option<u64>) -> Result<i64> {
    const FLAG: &str = "--memory-swap";
    if value.trim() == "-1" {
        return Ok(-1);
    }
    let bytes = parse_size(value).map_err(|e| Error::invalid(FLAG, value, e))?;
    let bytes = i64::try_from(bytes).map_err(|_| Error::invalid(FLAG, value, "too large"))?;
    let Some(memory) = memory else {
        return Err(Error::invalid(
            FLAG,
            value,
            "needs --memory (it is memory plus swap; -1 for unlimited swap)",
        ));
    };
    if u64::try_from(bytes).is_ok_and(|b| b < memory) {
        return Err(Error::invalid(
            FLAG,
            value,
            format!(
                "below --memory {} (it is memory plus swap: give at least the memory limit, \
                 or -1 for unlimited swap)",
                human_bytes(memory)
            ),
        ));
    }
    Ok(bytes)
}

/// `--memory-reservation SIZE`: a soft limit, at most `--memory`.
pub fn parse_memory_reservation(value: &str, memory: Option<u64>) -> Result<u64> {
    const FLAG: &str = "--memory-reservation";
    let bytes = parse_size(value).map_err(|e| Error::invalid(FLAG, value, e))?;
    if bytes == 0 {
        return Err(Error::invalid(FLAG, value, "must be above 0"));
    }
    if let Some(m) = memory.filter(|m| bytes > *m) {
        return Err(Error::invalid(
            FLAG,
            value,
            format!("above --memory {}", human_bytes(m)),
        ));
    }
    Ok(bytes)
}

/// Number of CPUs this process may run on.
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Formats bytes for messages: `32 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024 && v.is_multiple_of(1024) && i < UNITS.len() - 1 {
        v /= 1024;
        i += 1;
    }
    format!("{v} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("--memory", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("--memory", "64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_memory("--memory", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("--memory", "1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_memory("--memory", "8388608").unwrap(), 8 << 20);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("3.5G"), Ok(7 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size(".5k"), Ok(512));
        for bad in [
            "",
            "M",
            "12XB",
            "-1G",
            "1.G",
            "1..5G",
            "99999999999999999999G",
            "1e9",
            "1.1234567g",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn memory_bad() {
        for bad in ["12XB", "", "m", "-5m", "1k", "99999999999999t", "1.2.3m"] {
            let e = parse_memory("--memory", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --memory value"), "{bad}: {e}");
        }
        let e = parse_memory("--memory", "12XB").unwrap_err().to_string();
        assert!(e.contains("unknown unit \"XB\""), "{e}");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5", 2).unwrap(), 50_000);
        assert_eq!(parse_cpus("2", 2).unwrap(), 200_000);
        assert_eq!(parse_cpus("0.01", 2).unwrap(), 1000);
        for bad in ["-1", "0", "abc", "3", "NaN", "inf"] {
            assert!(parse_cpus(bad, 2).is_err(), "{bad}");
        }
        assert!(parse_cpus("-1", 2)
            .unwrap_err()
            .to_string()
            .contains("at least 0.01"));
    }

    #[test]
    fn pids_and_shares() {
        assert_eq!(parse_pids("20").unwrap(), 20);
        assert!(parse_pids("0").is_err());
        assert!(parse_pids("-1").is_err());
        assert!(parse_pids("many").is_err());
        assert_eq!(parse_cpu_shares("512").unwrap(), 512);
        assert!(parse_cpu_shares("1").is_err());
    }

    #[test]
    fn weights() {
        assert_eq!(parse_cpu_weight("100").unwrap(), 2598);
        assert_eq!(parse_cpu_weight("1").unwrap(), 2);
        assert_eq!(parse_cpu_weight("10000").unwrap(), 262_144);
        for bad in ["0", "10001", "-5", "x", ""] {
            let e = parse_cpu_weight(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --cpu-weight value"), "{e}");
        }
        assert_eq!(parse_blkio_weight("10").unwrap(), 10);
        assert_eq!(parse_blkio_weight("1000").unwrap(), 1000);
        for bad in ["9", "1001", "70000", "x"] {
            assert!(parse_blkio_weight(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpusets() {
        assert_eq!(parse_cpuset("--cpuset-cpus", "0").unwrap(), "0");
        assert_eq!(parse_cpuset("--cpuset-mems", "0").unwrap(), "0");
        let e = parse_cpuset("--cpuset-cpus", "9999")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid --cpuset-cpus value \"9999\": CPU 9999 is not online (online: "),
            "{e}"
        );
        let e = parse_cpuset("--cpuset-mems", "1-0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("range 1-0 goes backwards"), "{e}");
        assert!(parse_cpuset("--cpuset-cpus", "zero").is_err());
    }

    #[test]
    fn io_limits() {
        let e = parse_io_limit(IoLimit::WriteBps, "/dev/nonexistent-uvm:1m")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid --device-write-bps value \"/dev/nonexistent-uvm:1m\": no such device /dev/nonexistent-uvm"
        );
        let e = parse_io_limit(IoLimit::ReadIops, "/dev/null:10")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("/dev/null is not a block device"), "{e}");
        for bad in [
            "/dev/sda",
            ":1m",
            "/dev/sda:",
            "/dev/sda:0",
            "/dev/sda:fast",
        ] {
            assert!(parse_io_limit(IoLimit::ReadBps, bad).is_err(), "{bad}");
        }
        assert!(parse_io_limit(IoLimit::ReadIops, "/dev/sda:1m")
            .unwrap_err()
            .to_string()
            .contains("operations per second"));
        // A disk of this machine.
        if let Some(disk) = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
            .find(|p| Path::new(p).exists())
        {
            let t = parse_io_limit(IoLimit::WriteBps, &format!("{disk}:1.5m")).unwrap();
            assert_eq!(t.rate, 3 << 19);
            assert_eq!(t.limit, IoLimit::WriteBps);
            let t = parse_io_limit(IoLimit::WriteIops, &format!("{disk}:250")).unwrap();
            assert_eq!(t.rate, 250);
        }
    }

    #[test]
    fn swap_and_reservation() {
        let m = Some(64 << 20);
        assert_eq!(parse_memory_swap("128m", m).unwrap(), 128 << 20);
        assert_eq!(parse_memory_swap("64m", m).unwrap(), 64 << 20);
        assert_eq!(parse_memory_swap("-1", m).unwrap(), -1);
        assert_eq!(parse_memory_swap("-1", None).unwrap(), -1);
        let e = parse_memory_swap("32m", m).unwrap_err().to_string();
        assert!(e.contains("below --memory 64 MiB"), "{e}");
        let e = parse_memory_swap("1g", None).unwrap_err().to_string();
        assert!(e.contains("needs --memory"), "{e}");
        for bad in ["-2", "lots", "0x10"] {
            assert!(parse_memory_swap(bad, m).is_err(), "{bad}");
        }
        assert_eq!(parse_memory_reservation("32m", m).unwrap(), 32 << 20);
        assert_eq!(parse_memory_reservation("1g", None).unwrap(), 1 << 30);
        assert!(parse_memory_reservation("65m", m)
            .unwrap_err()
            .to_string()
            .contains("above --memory 64 MiB"));
        assert!(parse_memory_reservation("0", m).is_err());
        assert!(parse_memory_reservation("x", m).is_err());
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(32 << 20), "32 MiB");
        assert_eq!(human_bytes(1000), "1000 B");
    }
}
