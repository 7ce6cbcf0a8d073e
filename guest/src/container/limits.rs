//! Parsing of resource-limit flags (`--memory`, `--cpus`, `--pids-limit`,
//! `--cpu-shares`) into the numbers the cgroup layer writes.

use super::error::{Error, Result};

/// Smallest memory limit accepted (as docker): below this the runtime itself
/// and a shell cannot start.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// CFS period used for `--cpus` (100 ms, as docker and runc).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Parses a memory size: a number with an optional unit b, k, m, g, t
/// (powers of 1024; `kb`, `KiB`, `M`... accepted), e.g. `512m`, `1.5g`.
pub fn parse_memory(flag: &'static str, value: &str) -> Result<u64> {
    let s = value.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(Error::invalid(
            flag,
            value,
            "expected a size such as 64m, 512m or 2g",
        ));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(Error::invalid(
                flag,
                value,
                format!("unknown unit {unit:?} (use b, k, m, g or t, e.g. 512m)"),
            ))
        }
    };
    let bytes = if num.contains('.') {
        let f: f64 = num
            .parse()
            .map_err(|_| Error::invalid(flag, value, "not a number"))?;
        let b = f * mult as f64;
        if !b.is_finite() || b >= u64::MAX as f64 {
            return Err(Error::invalid(flag, value, "too large"));
        }
        // Truncation to whole bytes is intended; b is finite, >= 0 and in range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let b = b as u64;
        b
    } else {
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(|| Error::invalid(flag, value, "too large"))?
    };
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
