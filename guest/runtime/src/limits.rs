//! Parsing of resource-limit flags (`--memory`, `--cpus`, `--pids-limit`,
//! `--cpu-shares`) into the numbers the cgroup layer writes.

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
        Ok(n) if (2..=262_144).contains(&n) => Ok(n),
        _ => Err(Error::invalid(
            "--cpu-shares",
            value,
            "expected a number from 2 to 262144 (1024 is the default weight)",
        )),
    }
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
    fn human() {
        assert_eq!(human_bytes(32 << 20), "32 MiB");
        assert_eq!(human_bytes(1000), "1000 B");
    }
}
