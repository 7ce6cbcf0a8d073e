//! The body of the `cli_specs` cargo-fuzz target (`fuzz/`), here so that
//! the fuzzer and a stable test replaying its corpus call the same code.
//! Not an API: nothing in uvm calls this module.

use std::str::FromStr;
use std::time::{Duration, Instant};

use uvm_devices::rate_limiter::{RateLimiter, RateLimiterConfig};
use uvm_devices::virtio::block::ID_BYTES;
use uvm_runtime::limits::parse_size;

use crate::vmm::virtio::{DiskSpec, FsSpec, NetSpec, VsockSpec};

/// The first byte picks a parser, the text up to the next NUL is its
/// argument, and the bytes after it drive the rate limiter a disk or NIC
/// spec asked for, as the device would (requests of guest-chosen sizes at
/// fuzz-chosen times).
pub fn cli_specs(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (text, script) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let s = String::from_utf8_lossy(text);
    let s = s.as_ref();
    match which % 9 {
        0 => {
            if let Ok(n) = parse_size(s) {
                // The bytes as a plain number are the same size.
                assert_eq!(parse_size(&n.to_string()), Ok(n), "{s:?}");
            }
        }
        1 => {
            if let Ok(d) = DiskSpec::from_str(s) {
                assert!(!d.path.as_os_str().is_empty());
                assert!(d
                    .id
                    .as_ref()
                    .is_none_or(|id| (1..=ID_BYTES).contains(&id.len())));
                limiter(d.rate_limit, script);
            }
        }
        2 => {
            if let Ok(n) = NetSpec::from_str(s) {
                limiter(n.rx_rate_limit, script);
                limiter(n.tx_rate_limit, script);
            }
        }
        3 => {
            if let Ok(v) = VsockSpec::from_str(s) {
                assert!(v.cid >= 3 && v.cid < u64::from(u32::MAX));
            }
        }
        4 => {
            if let Ok(f) = FsSpec::from_str(s) {
                assert!(!f.tag.is_empty() && !f.dir.as_os_str().is_empty());
            }
        }
        5 => drop(uvm_runtime::PortMap::from_str(s)),
        6 => drop(uvm_runtime::Volume::from_str(s)),
        7 => drop(uvm_runtime::NetMode::from_str(s)),
        _ => drop(uvm_runtime::lifecycle::Tmpfs::from_str(s)),
    }
}

/// Requests through a limiter on a clock of the script's: whenever the
/// limiter says to wait, the same request must go through once that time
/// has passed (what the device's timer relies on).
fn limiter(cfg: RateLimiterConfig, script: &[u8]) {
    let Ok(Some(mut rl)) = RateLimiter::for_config(cfg) else {
        return;
    };
    let mut now = Instant::now();
    for step in script.chunks_exact(8) {
        let dt = u64::from(u16::from_le_bytes([step[0], step[1]])) << (step[2] & 31);
        let bytes = u64::from(u32::from_le_bytes([step[3], step[4], step[5], step[6]]));
        let ops = u64::from(step[7] & 3);
        let Some(t) = now.checked_add(Duration::from_nanos(dt)) else {
            return;
        };
        now = t;
        let wait = rl.consume_at(bytes, ops, now);
        if wait.is_zero() {
            continue;
        }
        let Some(later) = now.checked_add(wait) else {
            return;
        };
        now = later;
        assert_eq!(
            rl.consume_at(bytes, ops, now),
            Duration::ZERO,
            "{bytes} bytes, {ops} ops still wait after the wait the limiter gave ({wait:?}), {cfg:?}"
        );
    }
}
