//! memory: the limit (`--memory`), memory plus swap (`--memory-swap`,
//! Docker's and the OCI spec's meaning) and the soft limit
//! (`--memory-reservation`). v1: memory.limit_in_bytes,
//! memory.memsw.limit_in_bytes, memory.soft_limit_in_bytes; v2:
//! memory.max, memory.swap.max (swap alone: memory+swap minus memory),
//! memory.low.
//!
//! Without a swap setting a limit means no swap beyond it. The swap files
//! exist only where the kernel accounts swap: where they are missing, "no
//! swap" and "unlimited swap" are quietly left to the kernel (as runc
//! does), and a bounded amount of swap is an error.

use super::{Resources, Write};

/// The one-line error when a bounded swap cannot be set.
fn no_swap_accounting(file: &str) -> String {
    format!(
        "this kernel does not account swap ({file} is missing; boot it with swapaccount=1 \
         or CONFIG_MEMCG_SWAP): run without --memory-swap (memory.swap), or with -1"
    )
}

/// memory+swap to write and whether the file must exist: `None` without
/// a limit (swap alone is nothing to enforce); -1 is unlimited.
fn memsw(r: &Resources) -> Option<(i64, bool)> {
    let memory = i64::try_from(r.memory?).ok()?;
    match r.memory_swap {
        None => Some((memory, false)),
        Some(-1) => Some((-1, false)),
        // Bounded: only "no swap" (== memory) may go unenforced.
        Some(s) => Some((s, s != memory)),
    }
}

pub fn v1(r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(m) = r.memory {
        out.push(Write::new("memory", "memory.limit_in_bytes", m));
    }
    if let Some((value, required)) = memsw(r) {
        // After the limit: the kernel wants memsw >= limit.
        let w = Write::new("memory", "memory.memsw.limit_in_bytes", value);
        out.push(if required {
            w.explain_if_missing(no_swap_accounting("memory.memsw.limit_in_bytes"))
        } else {
            w.skip_if_missing()
        });
    }
    if let Some(res) = r.memory_reservation {
        out.push(Write::new("memory", "memory.soft_limit_in_bytes", res));
    }
    if let Some(sw) = r.memory_swappiness {
        out.push(Write::new("memory", "memory.swappiness", sw));
    }
    if r.oom_kill_disable {
        out.push(Write::new("memory", "memory.oom_control", 1));
    }
    out
}

pub fn v2(r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(m) = r.memory {
        out.push(Write::new("memory", "memory.max", m));
    }
    let swap = match memsw(r) {
        Some((-1, _)) => Some(("max".to_string(), false)),
        Some((s, required)) => {
            let m = r.memory.and_then(|m| i64::try_from(m).ok()).unwrap_or(0);
            Some(((s - m).max(0).to_string(), required))
        }
        None => None,
    };
    if let Some((value, required)) = swap {
        let w = Write::new("memory", "memory.swap.max", value);
        out.push(if required {
            w.explain_if_missing(no_swap_accounting("memory.swap.max"))
        } else {
            w.skip_if_missing()
        });
    }
    if let Some(res) = r.memory_reservation {
        out.push(Write::new("memory", "memory.low", res));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::IfMissing;
    use super::*;

    fn files(w: &[Write]) -> Vec<(&str, &str, bool)> {
        w.iter()
            .map(|w| (w.file(), w.value(), w.if_missing == IfMissing::Skip))
            .collect()
    }

    #[test]
    fn limit_alone_means_no_swap() {
        let r = Resources {
            memory: Some(64 << 20),
            ..Resources::default()
        };
        assert_eq!(
            files(&v1(&r)),
            [
                ("memory.limit_in_bytes", "67108864", false),
                ("memory.memsw.limit_in_bytes", "67108864", true)
            ]
        );
        assert_eq!(
            files(&v2(&r)),
            [
                ("memory.max", "67108864", false),
                ("memory.swap.max", "0", true)
            ]
        );
    }

    #[test]
    fn swap_and_reservation() {
        let r = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(96 << 20),
            memory_reservation: Some(32 << 20),
            ..Resources::default()
        };
        assert_eq!(
            files(&v1(&r)),
            [
                ("memory.limit_in_bytes", "67108864", false),
                ("memory.memsw.limit_in_bytes", "100663296", false),
                ("memory.soft_limit_in_bytes", "33554432", false)
            ]
        );
        let v2w = v2(&r);
        assert_eq!(
            files(&v2w),
            [
                ("memory.max", "67108864", false),
                // Swap alone: 96 MiB - 64 MiB.
                ("memory.swap.max", "33554432", false),
                ("memory.low", "33554432", false)
            ]
        );
        match &v2w[1].if_missing {
            IfMissing::Explain(e) => assert!(e.contains("does not account swap"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Unlimited swap.
        let r = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            ..Resources::default()
        };
        assert_eq!(
            files(&v1(&r))[1],
            ("memory.memsw.limit_in_bytes", "-1", true)
        );
        assert_eq!(files(&v2(&r))[1], ("memory.swap.max", "max", true));
        // Swap equal to the limit: no swap, as without a setting.
        let r = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(64 << 20),
            ..Resources::default()
        };
        assert_eq!(files(&v2(&r))[1], ("memory.swap.max", "0", true));
        assert!(v1(&Resources::default()).is_empty());
        assert!(v2(&Resources::default()).is_empty());
    }
}
