//! User namespaces: ID mappings (`--uidmap CTR:HOST:SIZE`), their checks,
//! the mappings a container gets (rootless or `--userns`), and writing them
//! for the child that has just created its namespace.
//!
//! Only a process in the parent user namespace may write a range mapping,
//! so the runtime writes `/proc/PID/uid_map` (and `setgroups`, `gid_map`)
//! while the child waits; without root the kernel accepts only the caller's
//! own uid and gid, each mapped alone, with setgroups denied.

use std::fs;
use std::path::Path;

use nix::unistd::{self, Gid, Pid, Uid};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

use super::error::{Error, Result};

/// `--userns` without `--uidmap`: container IDs 0-65535 on host IDs
/// 100000-165535 (the range `useradd` gives a first user in /etc/subuid).
pub const DEFAULT_HOST_BASE: u32 = 100_000;
pub const DEFAULT_SIZE: u32 = 65_536;

/// The kernel's limit on lines in a uid_map/gid_map.
const MAX_LINES: usize = 340;

/// One line of a uid_map or gid_map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl IdMap {
    /// Parses `CTR:HOST:SIZE`; `flag` names the option in errors.
    pub fn parse(flag: &'static str, s: &str) -> Result<IdMap> {
        let bad = |why: &str| Error::invalid(flag, s, why.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        let [c, h, n] = parts.as_slice() else {
            return Err(bad(
                "expected CONTAINER_ID:HOST_ID:SIZE, e.g. 0:100000:65536",
            ));
        };
        let num = |x: &str| {
            x.parse::<u32>()
                .map_err(|_| bad("IDs and size are numbers from 0 to 4294967294"))
        };
        let m = IdMap {
            container: num(c)?,
            host: num(h)?,
            size: num(n)?,
        };
        m.check(flag, s)?;
        Ok(m)
    }

    /// The last ID of a range may be at most 4294967294: (uid_t)-1 means
    /// "no change" to the kernel and can never be mapped.
    fn check(&self, flag: &'static str, value: &str) -> Result<()> {
        if self.size == 0 {
            return Err(Error::invalid(flag, value, "the size must be at least 1"));
        }
        let fits = |start: u32| start.checked_add(self.size).is_some();
        if !fits(self.container) || !fits(self.host) {
            return Err(Error::invalid(
                flag,
                value,
                "the range runs past the largest ID (4294967294)",
            ));
        }
        Ok(())
    }

    fn end(start: u32, size: u32) -> u64 {
        u64::from(start) + u64::from(size)
    }

    /// The host ID that container ID `id` maps to.
    pub fn to_host(maps: &[IdMap], id: u32) -> Option<u32> {
        maps.iter()
            .find(|m| id >= m.container && u64::from(id) < Self::end(m.container, m.size))
            .map(|m| m.host + (id - m.container))
    }

    pub fn to_oci(maps: &[IdMap]) -> Vec<LinuxIdMapping> {
        maps.iter()
            .filter_map(|m| {
                LinuxIdMappingBuilder::default()
                    .container_id(m.container)
                    .host_id(m.host)
                    .size(m.size)
                    .build()
                    .ok()
            })
            .collect()
    }

    pub fn from_oci(maps: &[LinuxIdMapping]) -> Vec<IdMap> {
        maps.iter()
            .map(|o| IdMap {
                container: o.container_id(),
                host: o.host_id(),
                size: o.size(),
            })
            .collect()
    }

    /// The text the kernel takes in /proc/PID/uid_map.
    pub fn text(maps: &[IdMap]) -> String {
        maps.iter()
            .map(|m| format!("{} {} {}\n", m.container, m.host, m.size))
            .collect()
    }
}

impl std::fmt::Display for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.container, self.host, self.size)
    }
}

/// A whole map: each range valid, no two overlapping on either side (the
/// kernel refuses both), not more lines than the kernel takes.
pub fn check_all(flag: &'static str, maps: &[IdMap]) -> Result<()> {
    let joined = || {
        maps.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    if maps.len() > MAX_LINES {
        return Err(Error::invalid(
            flag,
            &joined(),
            format!("at most {MAX_LINES} ranges"),
        ));
    }
    for m in maps {
        m.check(flag, &m.to_string())?;
    }
    let overlap = |a0: u32, b0: u32, a: &IdMap, b: &IdMap| {
        u64::from(a0) < IdMap::end(b0, b.size) && u64::from(b0) < IdMap::end(a0, a.size)
    };
    for (i, a) in maps.iter().enumerate() {
        for b in &maps[i + 1..] {
            let side = if overlap(a.container, b.container, a, b) {
                "container"
            } else if overlap(a.host, b.host, a, b) {
                "host"
            } else {
                continue;
            };
            return Err(Error::invalid(
                flag,
                &joined(),
                format!("ranges {a} and {b} overlap on the {side} side"),
            ));
        }
    }
    Ok(())
}

/// The caller's identity when it is not root: rootless mode.
pub fn rootless_ids() -> Option<(u32, u32)> {
    let euid = unistd::geteuid();
    (!euid.is_root()).then(|| (euid.as_raw(), unistd::getegid().as_raw()))
}

/// What was asked for: flags first, then the spec's mappings, then defaults.
#[derive(Debug, Default)]
pub struct Request<'a> {
    pub cli_uids: &'a [IdMap],
    pub cli_gids: &'a [IdMap],
    pub spec_uids: Vec<IdMap>,
    pub spec_gids: Vec<IdMap>,
    /// `Some((uid, gid))` when running without root.
    pub rootless: Option<(u32, u32)>,
}

/// The uid and gid maps a new user namespace gets. Without root the only
/// possible mapping is one container ID onto the caller's own ID (ranges
/// need newuidmap's set-uid help, which this runtime does not use).
pub fn mappings(r: &Request) -> Result<(Vec<IdMap>, Vec<IdMap>)> {
    let own = |host: u32| {
        vec![IdMap {
            container: 0,
            host,
            size: 1,
        }]
    };
    let range = || {
        vec![IdMap {
            container: 0,
            host: DEFAULT_HOST_BASE,
            size: DEFAULT_SIZE,
        }]
    };
    let uids = if !r.cli_uids.is_empty() {
        r.cli_uids.to_vec()
    } else if !r.spec_uids.is_empty() {
        r.spec_uids.clone()
    } else if let Some((uid, _)) = r.rootless {
        own(uid)
    } else {
        range()
    };
    let gids = if !r.cli_gids.is_empty() {
        r.cli_gids.to_vec()
    } else if !r.spec_gids.is_empty() {
        r.spec_gids.clone()
    } else if let Some((_, gid)) = r.rootless {
        own(gid)
    } else if !r.cli_uids.is_empty() {
        // As podman: --uidmap alone maps the groups the same way.
        r.cli_uids.to_vec()
    } else {
        range()
    };
    check_all("--uidmap", &uids)?;
    check_all("--gidmap", &gids)?;
    if let Some((uid, gid)) = r.rootless {
        for (flag, maps, id) in [("--uidmap", &uids, uid), ("--gidmap", &gids, gid)] {
            if !matches!(maps.as_slice(), [m] if m.host == id && m.size == 1) {
                return Err(Error::invalid(
                    flag,
                    &maps
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    format!("without root only your own ID can be mapped, alone: CTR:{id}:1"),
                ));
            }
        }
    }
    Ok((uids, gids))
}

fn write_proc(pid: Pid, file: &str, data: &str) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    fs::write(&path, data).map_err(|e| Error::io(format!("writing {path} ({})", data.trim()), e))
}

/// Writes the maps of `pid`'s new user namespace. Without root, setgroups
/// must be denied before a gid_map can be written.
pub fn write_maps(pid: Pid, uids: &[IdMap], gids: &[IdMap]) -> Result<()> {
    write_proc(pid, "uid_map", &IdMap::text(uids))?;
    if rootless_ids().is_some() {
        write_proc(pid, "setgroups", "deny")?;
    }
    write_proc(pid, "gid_map", &IdMap::text(gids))
}

/// Whether setgroups(2) is allowed in the caller's user namespace.
pub fn setgroups_allowed() -> bool {
    fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() != "deny")
}

/// In a new user namespace the creator's IDs are unmapped (unless they are
/// the mapped ones): become the container's root, so files made while
/// building the rootfs get a mapped owner (the kernel refuses unmapped ones).
pub fn become_root(uids: &[IdMap], gids: &[IdMap]) -> Result<()> {
    if IdMap::to_host(gids, 0).is_some() {
        let g = Gid::from_raw(0);
        unistd::setresgid(g, g, g).map_err(|e| Error::sys("setgid 0 in the user namespace", e))?;
    }
    if setgroups_allowed() {
        unistd::setgroups(&[]).map_err(|e| Error::sys("setgroups in the user namespace", e))?;
    }
    if IdMap::to_host(uids, 0).is_some() {
        let u = Uid::from_raw(0);
        unistd::setresuid(u, u, u).map_err(|e| Error::sys("setuid 0 in the user namespace", e))?;
    }
    Ok(())
}

/// Hands `dir` to the container's root (the mapped host IDs of 0), so the
/// container can write there: overlay upper and work directories.
pub fn chown_to_root(dir: &Path, uids: &[IdMap], gids: &[IdMap]) -> Result<()> {
    let uid = IdMap::to_host(uids, 0).map(Uid::from_raw);
    let gid = IdMap::to_host(gids, 0).map(Gid::from_raw);
    unistd::chown(dir, uid, gid).map_err(|e| Error::sys(format!("chown {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(container: u32, host: u32, size: u32) -> IdMap {
        IdMap {
            container,
            host,
            size,
        }
    }

    #[test]
    fn parse_and_reject() {
        assert_eq!(
            IdMap::parse("--uidmap", "0:100000:65536").unwrap(),
            m(0, 100_000, 65_536)
        );
        assert_eq!(
            IdMap::parse("--uidmap", "0:4294967293:1").unwrap(),
            m(0, 4_294_967_293, 1)
        );
        for (bad, why) in [
            ("", "expected CONTAINER_ID:HOST_ID:SIZE"),
            ("0:1", "expected CONTAINER_ID:HOST_ID:SIZE"),
            ("0:1:2:3", "expected CONTAINER_ID:HOST_ID:SIZE"),
            ("a:1:1", "numbers"),
            ("-1:0:1", "numbers"),
            ("0:0:4294967296", "numbers"),
            ("0:100000:0", "at least 1"),
            ("0:4294967295:1", "past the largest ID"),
            ("4294967000:0:1000", "past the largest ID"),
            ("0:4294967000:1000", "past the largest ID"),
        ] {
            let e = IdMap::parse("--uidmap", bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with("invalid --uidmap value"), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn overlaps_are_refused_on_both_sides() {
        assert!(check_all("--uidmap", &[m(0, 1000, 1), m(1, 100_000, 65_535)]).is_ok());
        let e = check_all("--uidmap", &[m(0, 100_000, 10), m(5, 200_000, 10)]).unwrap_err();
        assert!(
            e.to_string().contains("overlap on the container side"),
            "{e}"
        );
        let e = check_all("--gidmap", &[m(0, 100_000, 10), m(10, 100_009, 10)]).unwrap_err();
        assert!(e.to_string().contains("overlap on the host side"), "{e}");
        let many: Vec<IdMap> = (0..341).map(|i| m(i, i, 1)).collect();
        assert!(check_all("--uidmap", &many).is_err());
    }

    #[test]
    fn mappings_defaults_and_rootless() {
        let (u, g) = mappings(&Request::default()).unwrap();
        assert_eq!(u, vec![m(0, 100_000, 65_536)]);
        assert_eq!(g, u);
        let cli = [m(0, 200_000, 1000)];
        let (u, g) = mappings(&Request {
            cli_uids: &cli,
            ..Request::default()
        })
        .unwrap();
        assert_eq!((u.as_slice(), g.as_slice()), (&cli[..], &cli[..]));
        let rootless = Request {
            rootless: Some((1000, 1001)),
            ..Request::default()
        };
        let (u, g) = mappings(&rootless).unwrap();
        assert_eq!((u, g), (vec![m(0, 1000, 1)], vec![m(0, 1001, 1)]));
        let ranged = [m(0, 100_000, 65_536)];
        let e = mappings(&Request {
            cli_uids: &ranged,
            rootless: Some((1000, 1000)),
            ..Request::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("only your own ID"), "{e}");
        assert_eq!(
            IdMap::text(&[m(0, 1000, 1), m(1, 5, 2)]),
            "0 1000 1\n1 5 2\n"
        );
        assert_eq!(IdMap::to_host(&[m(0, 1000, 1), m(1, 5, 2)], 2), Some(6));
        assert_eq!(IdMap::to_host(&[m(0, 1000, 1)], 1), None);
        let oci = IdMap::to_oci(&[m(1, 2, 3)]);
        assert_eq!(IdMap::from_oci(&oci), vec![m(1, 2, 3)]);
    }
}
