//! cpuset: the CPUs and memory nodes a container may use (`--cpuset-cpus`,
//! `--cpuset-mems`, the OCI spec's `cpu.cpus` and `cpu.mems`). v1:
//! cpuset.cpus and cpuset.mems, which a new v1 cgroup gets empty (and a
//! task cannot join a cgroup with an empty cpuset), so every directory
//! the runtime makes in the cpuset hierarchy first copies its parent's
//! ([`v1_inherit`]); v2: the same files, with the controller enabled in
//! the parents' cgroup.subtree_control.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::{write_file, Resources, Write};
use crate::error::{Error, Result};

/// Largest CPU or node number a list may name (the kernel's NR_CPUS
/// limit is 8192; this bounds what a range can make us allocate).
const MAX_ID: u32 = 65_535;

/// Parses a kernel list such as `0-3,5` into a set.
pub fn parse_list(s: &str) -> std::result::Result<BTreeSet<u32>, String> {
    let expected = || "expected a list such as 0-3,5".to_string();
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty list ({})", expected()));
    }
    let num = |n: &str| -> std::result::Result<u32, String> {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(expected());
        }
        match n.parse::<u32>() {
            Ok(v) if v <= MAX_ID => Ok(v),
            _ => Err(format!("{n} is too large (at most {MAX_ID})")),
        }
    };
    let mut set = BTreeSet::new();
    for part in t.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {part} goes backwards"));
                }
                set.extend(a..=b);
            }
            None => {
                set.insert(num(part)?);
            }
        }
    }
    Ok(set)
}

/// The kernel's list format of a set: `0-3,5`.
pub fn format_list(set: &BTreeSet<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The online CPUs (`/sys/devices/system/cpu/online`).
pub fn online_cpus() -> std::result::Result<BTreeSet<u32>, String> {
    let path = "/sys/devices/system/cpu/online";
    let text = fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    parse_list(&text).map_err(|e| format!("{path}: {e}"))
}

/// The online memory nodes (`/sys/devices/system/node/online`; a kernel
/// without NUMA has none of that, and node 0 only).
pub fn online_mems() -> BTreeSet<u32> {
    fs::read_to_string("/sys/devices/system/node/online")
        .ok()
        .and_then(|t| parse_list(&t).ok())
        .unwrap_or_else(|| BTreeSet::from([0]))
}

/// Checks `list` against `online` (`what`: "CPU" or "memory node"):
/// the list in the kernel's format, or why it cannot be used.
pub fn check(
    list: &str,
    online: &BTreeSet<u32>,
    what: &str,
) -> std::result::Result<String, String> {
    let set = parse_list(list)?;
    let missing: BTreeSet<u32> = set.difference(online).copied().collect();
    if !missing.is_empty() {
        let (noun, verb) = if missing.len() == 1 {
            (what.to_string(), "is")
        } else {
            (format!("{what}s"), "are")
        };
        return Err(format!(
            "{noun} {} {verb} not online (online: {})",
            format_list(&missing),
            format_list(online)
        ));
    }
    Ok(format_list(&set))
}

pub fn v1(r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(m) = &r.cpuset_mems {
        out.push(Write::new("cpuset", "cpuset.mems", m));
    }
    if let Some(c) = &r.cpuset_cpus {
        out.push(Write::new("cpuset", "cpuset.cpus", c));
    }
    out
}

pub fn v2(r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(m) = &r.cpuset_mems {
        out.push(Write::new("cpuset", "cpuset.mems", m));
    }
    if let Some(c) = &r.cpuset_cpus {
        out.push(Write::new("cpuset", "cpuset.cpus", c));
    }
    out
}

/// v1: gives each directory from `mount` down to `mount/rel` that has an
/// empty cpuset.cpus or cpuset.mems its parent's, so that tasks can join
/// the container's cgroup (the container's own lists are written after).
pub fn v1_inherit(mount: &Path, rel: &Path) -> Result<()> {
    let mut parent = mount.to_path_buf();
    for part in rel.components() {
        let dir = parent.join(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let read = |p: &Path| {
                fs::read_to_string(p)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| Error::Cgroup(format!("reading {}: {e}", p.display())))
            };
            if read(&dir.join(file))?.is_empty() {
                let theirs = read(&parent.join(file))?;
                write_file(&dir.join(file), &theirs)?;
            }
        }
        parent = dir;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(
            parse_list("0-3,5").unwrap(),
            BTreeSet::from([0, 1, 2, 3, 5])
        );
        assert_eq!(parse_list(" 1\n").unwrap(), BTreeSet::from([1]));
        assert_eq!(parse_list("2,0,1").unwrap(), BTreeSet::from([0, 1, 2]));
        for bad in [
            "",
            " ",
            "a",
            "1-",
            "-1",
            "3-1",
            "1,,2",
            "0-3:2",
            "1 2",
            "99999999999",
            "70000",
            "0-4294967295",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_list("3-1").unwrap_err().contains("backwards"));
        assert_eq!(
            format_list(&BTreeSet::from([0, 1, 2, 3, 5, 7, 8])),
            "0-3,5,7-8"
        );
        assert_eq!(format_list(&BTreeSet::from([4])), "4");
        assert_eq!(format_list(&BTreeSet::new()), "");
    }

    #[test]
    fn checked_against_online() {
        let online = BTreeSet::from([0, 1]);
        assert_eq!(check("1", &online, "CPU").unwrap(), "1");
        assert_eq!(check("0,1", &online, "CPU").unwrap(), "0-1");
        assert_eq!(
            check("7", &online, "CPU").unwrap_err(),
            "CPU 7 is not online (online: 0-1)"
        );
        assert_eq!(
            check("0-5", &online, "memory node").unwrap_err(),
            "memory nodes 2-5 are not online (online: 0-1)"
        );
        assert!(check("x", &online, "CPU").is_err());
        // This machine's own lists parse.
        assert!(!online_cpus().unwrap().is_empty());
        assert!(online_mems().contains(&0));
    }

    /// The ancestors' empty lists are filled from the top down (a plain
    /// directory standing in for a v1 cpuset mount).
    #[test]
    fn inherit_fills_empty_ancestors() {
        let root = std::env::temp_dir().join(format!("uvm-cpuset-{}", std::process::id()));
        let rel = Path::new("uvm/c1");
        let _ = fs::remove_dir_all(&root);
        for d in [root.clone(), root.join("uvm"), root.join(rel)] {
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cpuset.cpus"), "").unwrap();
            fs::write(d.join("cpuset.mems"), "").unwrap();
        }
        fs::write(root.join("cpuset.cpus"), "0-3\n").unwrap();
        fs::write(root.join("cpuset.mems"), "0\n").unwrap();
        // A parent already set keeps its own.
        fs::write(root.join("uvm/cpuset.cpus"), "1-2\n").unwrap();
        v1_inherit(&root, rel).unwrap();
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("uvm/cpuset.cpus"), "1-2\n");
        assert_eq!(read("uvm/cpuset.mems"), "0");
        assert_eq!(read("uvm/c1/cpuset.cpus"), "1-2");
        assert_eq!(read("uvm/c1/cpuset.mems"), "0");
        fs::remove_dir_all(&root).unwrap();
    }
}
