//! freezer: pausing and resuming every process of a cgroup
//! (`uvm container pause` / `resume`). v1: the freezer controller's
//! freezer.state, written FROZEN and read back until it says FROZEN (it
//! says FREEZING while tasks are on their way, and a task forked meanwhile
//! can keep it there: the write is repeated, with a short thaw now and
//! then); v2: cgroup.freeze, done when cgroup.events says `frozen 1`.
//! Either way a freeze that does not complete in [`FREEZE_TIMEOUT`] is
//! undone and reported.
//!
//! A frozen v1 task does not even die of SIGKILL until thawed, so whoever
//! kills a paused container thaws it after the signal.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{keyed, write_file, Cgroup};
use crate::error::{Error, Result};

/// How long a freeze may take.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::Cgroup(format!("reading {}: {e}", path.display())))
}

/// Where a cgroup's freezer is: (v1 freezer.state) or (v2 cgroup.freeze).
enum Freezer<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

impl Cgroup {
    fn freezer(&self) -> Option<Freezer<'_>> {
        let dir = self.dir_for("freezer")?;
        Some(if self.version == 2 {
            Freezer::V2(dir)
        } else {
            Freezer::V1(dir)
        })
    }

    fn no_freezer(&self) -> Error {
        Error::Cgroup(
            "the freezer controller is not available on this host (cgroup v1 without \
             a freezer hierarchy): a container cannot be paused here"
                .into(),
        )
    }

    /// Whether a freeze was asked for (frozen, or freezing).
    pub fn paused(&self) -> bool {
        match self.freezer() {
            Some(Freezer::V1(dir)) => {
                read(&dir.join("freezer.state")).is_ok_and(|s| !s.is_empty() && s != "THAWED")
            }
            Some(Freezer::V2(dir)) => read(&dir.join("cgroup.freeze")).is_ok_and(|s| s == "1"),
            None => false,
        }
    }

    /// Freezes every process of the cgroup; returns once all are frozen.
    pub fn freeze(&self) -> Result<()> {
        self.freeze_within(FREEZE_TIMEOUT)
    }

    fn freeze_within(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        match self.freezer().ok_or_else(|| self.no_freezer())? {
            Freezer::V1(dir) => {
                let state = dir.join("freezer.state");
                for round in 1u32.. {
                    write_file(&state, "FROZEN")?;
                    if read(&state)? == "FROZEN" {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    if round % 50 == 0 {
                        // Tasks that keep appearing can hold it in FREEZING:
                        // a short thaw gives the next attempt a clean start.
                        write_file(&state, "THAWED")?;
                        std::thread::sleep(Duration::from_millis(10));
                    } else {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(10));
                    }
                }
                let _ = write_file(&state, "THAWED");
                Err(Error::Cgroup(format!(
                    "{} stayed FREEZING for {} s (a process keeps forking or is stuck in \
                     the kernel): the container was left running",
                    state.display(),
                    timeout.as_secs()
                )))
            }
            Freezer::V2(dir) => {
                write_file(&dir.join("cgroup.freeze"), "1")?;
                let events = dir.join("cgroup.events");
                loop {
                    if keyed(&read(&events)?, "frozen") == Some(1) {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                let _ = write_file(&dir.join("cgroup.freeze"), "0");
                Err(Error::Cgroup(format!(
                    "{} did not report frozen within {} s: the container was left running",
                    events.display(),
                    timeout.as_secs()
                )))
            }
        }
    }

    /// Lets the cgroup's processes run again (immediate on both versions).
    pub fn thaw(&self) -> Result<()> {
        match self.freezer().ok_or_else(|| self.no_freezer())? {
            Freezer::V1(dir) => write_file(&dir.join("freezer.state"), "THAWED"),
            Freezer::V2(dir) => write_file(&dir.join("cgroup.freeze"), "0"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("uvm-freezer-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// v2's files, in a plain directory standing in for the container's
    /// cgroup: the freeze is asked in cgroup.freeze and read back from
    /// cgroup.events.
    #[test]
    fn v2_files() {
        let dir = scratch("v2");
        let cg = Cgroup {
            version: 2,
            rel: "uvm/c".into(),
            dirs: vec![(Vec::new(), dir.clone())],
        };
        fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(!cg.paused());
        // Never reported frozen: undone, with the reason.
        let e = cg
            .freeze_within(Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not report frozen"), "{e}");
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "0\n"
        );
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        cg.freeze().unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "1\n"
        );
        assert!(cg.paused());
        cg.thaw().unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "0\n"
        );
        assert!(!cg.paused());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// v1 without a freezer hierarchy: a clear refusal, and never paused.
    #[test]
    fn v1_without_freezer() {
        let dir = scratch("v1");
        let cg = Cgroup {
            version: 1,
            rel: "uvm/c".into(),
            dirs: vec![(vec!["memory".into()], dir.clone())],
        };
        assert!(!cg.paused());
        let e = cg.freeze().unwrap_err().to_string();
        assert!(e.contains("cannot be paused here"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A real v1 freezer: a busy child is frozen (its CPU time stops) and
    /// thawed.
    #[test]
    fn v1_freeze_and_thaw() {
        let mount = Path::new("/sys/fs/cgroup/freezer");
        if !nix::unistd::geteuid().is_root() || !mount.join("tasks").exists() {
            eprintln!("skipped: needs root and a v1 freezer hierarchy");
            return;
        }
        let dir = mount.join(format!("uvm-unit-freezer-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let cg = Cgroup {
            version: 1,
            rel: dir.strip_prefix(mount).unwrap().into(),
            dirs: vec![(vec!["freezer".into()], dir.clone())],
        };
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        cg.add_pid(pid).unwrap();
        let ticks = || {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
                .split_whitespace()
                .collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        };
        cg.freeze().unwrap();
        assert!(cg.paused());
        assert_eq!(read(&dir.join("freezer.state")).unwrap(), "FROZEN");
        let t0 = ticks();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(ticks(), t0, "a frozen task used CPU");
        cg.thaw().unwrap();
        assert!(!cg.paused());
        std::thread::sleep(Duration::from_millis(300));
        assert!(ticks() > t0, "a thawed task did not run");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(cg.destroy());
    }
}
