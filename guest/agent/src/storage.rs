//! Filesystems containers need (a block device holding their image),
//! mounted on first use and unmounted when the last user is removed.

use std::collections::HashMap;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use uvm_agent_api::agent::Storage;

use crate::AgentError;

#[derive(Default)]
pub struct Storages {
    /// mount point -> (what is mounted there, users)
    mounted: HashMap<String, (String, usize)>,
}

fn flags(options: &[String]) -> (MsFlags, String) {
    let mut f = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => f |= MsFlags::MS_RDONLY,
            "nosuid" => f |= MsFlags::MS_NOSUID,
            "nodev" => f |= MsFlags::MS_NODEV,
            "noexec" => f |= MsFlags::MS_NOEXEC,
            "rw" | "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    (f, data.join(","))
}

pub fn check(s: &Storage) -> Result<(), AgentError> {
    let bad = |why: &str| {
        Err(AgentError::Invalid(format!(
            "storage {}: {why}",
            s.mount_point
        )))
    };
    if !s.mount_point.starts_with('/') || s.mount_point.split('/').any(|c| c == "..") {
        return bad("the mount point must be an absolute path without ..");
    }
    if s.mount_point == "/" {
        return bad("cannot mount over the guest's root");
    }
    if !s.source.starts_with('/') {
        return bad("the source must be an absolute path (e.g. /dev/vdb)");
    }
    if s.fstype.is_empty() || s.fstype.contains(',') {
        return bad("the filesystem type is missing");
    }
    Ok(())
}

impl Storages {
    /// Mounts `s` unless the same source is mounted there already; counts
    /// a user either way.
    pub fn acquire(&mut self, s: &Storage) -> Result<(), AgentError> {
        check(s)?;
        if let Some((source, users)) = self.mounted.get_mut(&s.mount_point) {
            if *source != s.source {
                return Err(AgentError::Invalid(format!(
                    "storage {}: {} is mounted there already",
                    s.mount_point, source
                )));
            }
            *users += 1;
            return Ok(());
        }
        std::fs::create_dir_all(&s.mount_point)
            .map_err(|e| AgentError::Setup(format!("creating {}: {e}", s.mount_point)))?;
        // A device whose driver probes asynchronously may still be coming.
        let dev = Path::new(&s.source);
        for _ in 0..250 {
            if dev.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (f, data) = flags(&s.options);
        mount(
            Some(dev),
            Path::new(&s.mount_point),
            Some(s.fstype.as_str()),
            f,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|e| {
            AgentError::Setup(format!(
                "mounting {} ({}) on {}: {e}",
                s.source, s.fstype, s.mount_point
            ))
        })?;
        self.mounted
            .insert(s.mount_point.clone(), (s.source.clone(), 1));
        Ok(())
    }

    /// Drops a user of each mount point; unmounts those left with none.
    pub fn release(&mut self, mount_points: &[String]) {
        for mp in mount_points {
            let last = match self.mounted.get_mut(mp) {
                Some((_, users)) => {
                    *users -= 1;
                    *users == 0
                }
                None => false,
            };
            if last {
                self.mounted.remove(mp);
                if let Err(e) = umount2(Path::new(mp), MntFlags::MNT_DETACH) {
                    crate::log(&format!("unmounting {mp}: {e}"));
                }
                let _ = std::fs::remove_dir(mp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(src: &str, fs: &str, mp: &str) -> Storage {
        let mut s = Storage::new();
        s.source = src.into();
        s.fstype = fs.into();
        s.mount_point = mp.into();
        s
    }

    #[test]
    fn bad_storages_are_refused() {
        assert!(check(&storage("/dev/vdb", "ext4", "/run/images/a")).is_ok());
        for s in [
            storage("/dev/vdb", "ext4", "relative"),
            storage("/dev/vdb", "ext4", "/"),
            storage("/dev/vdb", "ext4", "/run/../etc"),
            storage("vdb", "ext4", "/mnt/x"),
            storage("/dev/vdb", "", "/mnt/x"),
        ] {
            assert!(check(&s).is_err(), "{s:?}");
        }
        let (f, data) = flags(&["ro".into(), "noload".into(), "nodev".into()]);
        assert_eq!(f, MsFlags::MS_RDONLY | MsFlags::MS_NODEV);
        assert_eq!(data, "noload");
    }
}
