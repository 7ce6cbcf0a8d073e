//! cpu: the CFS quota (`--cpus`) and the relative weight (`--cpu-shares`,
//! `--cpu-weight`). v1: cpu.cfs_period_us, cpu.cfs_quota_us, cpu.shares;
//! v2: cpu.max, cpu.weight. The weight is kept as v1 shares (the OCI
//! spec's `cpu.shares`) and converted for v2 with the formula runc and
//! crun document; a v2 weight given by the user is turned into shares
//! with the inverse, rounded up so that it converts back to itself.

use super::{Resources, Write};

/// cpu.shares range (v1).
pub const SHARES_MIN: u64 = 2;
pub const SHARES_MAX: u64 = 262_144;
/// cpu.weight range (v2).
pub const WEIGHT_MIN: u64 = 1;
pub const WEIGHT_MAX: u64 = 10_000;

/// cpu.shares (2..262144) to cpu.weight (1..10000):
/// `weight = 1 + ((shares - 2) * 9999) / 262142`.
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(SHARES_MIN, SHARES_MAX);
    1 + ((s - 2) * 9999) / 262_142
}

/// cpu.weight (1..10000) to cpu.shares (2..262144), the inverse of
/// [`shares_to_weight`]: `shares = 2 + ((weight - 1) * 262142) / 9999`,
/// rounded up, so `shares_to_weight(weight_to_shares(w)) == w` for every
/// weight.
pub fn weight_to_shares(weight: u64) -> u64 {
    let w = weight.clamp(WEIGHT_MIN, WEIGHT_MAX);
    2 + ((w - 1) * 262_142).div_ceil(9999)
}

pub fn v1(r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(q) = r.cpu_quota {
        let period = r.cpu_period.unwrap_or(crate::limits::CPU_PERIOD_US);
        // The period first: a quota is checked against it.
        out.push(Write::new("cpu", "cpu.cfs_period_us", period));
        out.push(Write::new("cpu", "cpu.cfs_quota_us", q));
    }
    if let Some(s) = r.cpu_shares {
        out.push(Write::new("cpu", "cpu.shares", s));
    }
    out
}

pub fn v2(r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(q) = r.cpu_quota {
        let period = r.cpu_period.unwrap_or(crate::limits::CPU_PERIOD_US);
        out.push(Write::new("cpu", "cpu.max", format!("{q} {period}")));
    }
    if let Some(s) = r.cpu_shares {
        out.push(Write::new("cpu", "cpu.weight", shares_to_weight(s)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(20), 1);
        assert_eq!(shares_to_weight(80), 3);
        // Out of range: clamped.
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(1 << 40), 10000);
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10000), 262_144);
        assert_eq!(weight_to_shares(100), 2598);
        assert_eq!(weight_to_shares(0), 2);
        // Every weight survives the round trip through shares.
        for w in WEIGHT_MIN..=WEIGHT_MAX {
            assert_eq!(shares_to_weight(weight_to_shares(w)), w, "weight {w}");
        }
        // Shares map onto a monotonic weight.
        let mut last = 0;
        for s in (SHARES_MIN..=SHARES_MAX).step_by(97) {
            let w = shares_to_weight(s);
            assert!(w >= last && (WEIGHT_MIN..=WEIGHT_MAX).contains(&w));
            last = w;
        }
    }
}
