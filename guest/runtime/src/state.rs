//! Container state on disk: `ROOT/containers/NAME/state.json` (+ the final
//! `config.json`, and the rootfs mount point). A name is claimed atomically
//! by renaming a filled temporary directory into place.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::cgroups::Cgroup;
use super::error::{Error, Result};
use super::spec::{NetConfig, NetMode};

/// Default state root (a tmpfs on most hosts: state does not survive reboot,
/// nor should it).
pub const DEFAULT_ROOT: &str = "/run/uvm";

/// The runtime's directories.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            root: default_root(),
        }
    }
}

/// Where state lives by default: [`DEFAULT_ROOT`] for root; rootless, the
/// user's runtime directory (`$XDG_RUNTIME_DIR/uvm`), else `/tmp/uvm-UID`.
pub fn default_root() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from(DEFAULT_ROOT);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("uvm"),
        None => PathBuf::from(format!("/tmp/uvm-{uid}")),
    }
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn container(&self, name: &str) -> PathBuf {
        self.containers().join(name)
    }
    /// Upper and work directories of a container's overlay.
    pub fn overlay(&self, name: &str, id: &str) -> PathBuf {
        self.root.join("overlay").join(format!("{name}-{id}"))
    }
    /// Creates the state root. Without root it is private (0700) and must
    /// be a directory of the caller's own, not a symlink: in a shared place
    /// such as /tmp another user could have made it first. Root's stays
    /// searchable: with --userns the container's root, an unprivileged host
    /// user, reaches its overlay and mount point through it.
    pub fn ensure_root(&self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let uid = nix::unistd::geteuid();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(if uid.is_root() { 0o755 } else { 0o700 })
            .create(&self.root)
            .map_err(|e| Error::io(format!("creating {}", self.root.display()), e))?;
        if uid.is_root() {
            return Ok(());
        }
        let meta = fs::symlink_metadata(&self.root)
            .map_err(|e| Error::io(format!("checking {}", self.root.display()), e))?;
        if !meta.is_dir() || meta.uid() != uid.as_raw() || meta.mode() & 0o022 != 0 {
            return Err(Error::Rootless(format!(
                "state directory {} is not a private directory of uid {uid} \
                 (owner {}, mode {:o}): remove it or pass --root",
                self.root.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    }

    /// The IPv4 forwarding value found before the first bridge turned it
    /// on, restored when the last bridge goes. One per network namespace
    /// (named by its inode), since runtimes in several share a state root.
    pub fn forward_saved(&self) -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        let ns = fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        self.root.join(format!("ip_forward.saved.{ns}"))
    }

    fn net_lock(&self) -> PathBuf {
        self.root.join("net.lock")
    }

    /// Takes the lock that serializes address allocation and nftables changes.
    pub fn lock_net(&self) -> Result<Flock<fs::File>> {
        fs::create_dir_all(&self.root)
            .map_err(|e| Error::io(format!("creating {}", self.root.display()), e))?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.net_lock())
            .map_err(|e| Error::io(format!("opening {}", self.net_lock().display()), e))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::sys("locking the network state", e))
    }
}

/// What the runtime knows about a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub name: String,
    pub id: String,
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// The `uvm container run` process supervising the container.
    pub runtime_pid: i32,
    pub runtime_start: u64,
    /// The container's PID 1, as the host sees it.
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    pub cgroup: Option<Cgroup>,
    pub net_mode: NetMode,
    pub net: Option<NetConfig>,
    /// Registration, veth or macvlan of its own network namespace.
    #[serde(default)]
    pub netns: crate::netns::NetnsSetup,
    /// Overlay upper/work directory (removed at exit unless `keep`).
    pub overlay: Option<PathBuf>,
    pub keep: bool,
    /// The image it runs on (`--image`), whose layers are its lower dirs.
    #[serde(default)]
    pub image: Option<crate::images::ImageUse>,
}

/// Start time of a process (clock ticks since boot, field 22 of
/// /proc/PID/stat): with the pid, it names a process unambiguously.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive, not a zombie, and started at `start`.
pub fn proc_alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut f = stat[close + 2..].split_whitespace();
    let state = f.next();
    let st = f.nth(18).and_then(|s| s.parse::<u64>().ok());
    state != Some("Z") && st == Some(start)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random hex id (16 characters).
pub fn new_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // Never expected on Linux; fall back to time and pid.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (u64::try_from(t & u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id()))
            .to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    fs::rename(&tmp, path)
}

impl State {
    pub fn dir(&self, paths: &Paths) -> PathBuf {
        paths.container(&self.name)
    }

    /// The socket a detached container's PID 1 waits on until started
    /// (present: the container is created, not yet started).
    pub fn gate(&self, paths: &Paths) -> PathBuf {
        self.dir(paths).join("start.sock")
    }

    /// Saves the state (atomically replacing the previous one).
    pub fn save(&self, paths: &Paths) -> Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(|e| Error::State {
            name: self.name.clone(),
            msg: e.to_string(),
        })?;
        let path = self.dir(paths).join("state.json");
        write_atomic(&path, &data).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    pub fn load(paths: &Paths, name: &str) -> Result<State> {
        let path = paths.container(name).join("state.json");
        let data = fs::read(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::NoSuchContainer(name.to_string())
            } else {
                Error::io(format!("reading {}", path.display()), e)
            }
        })?;
        serde_json::from_slice(&data).map_err(|e| Error::State {
            name: name.to_string(),
            msg: format!("{}: {e}", path.display()),
        })
    }

    /// Claims `self.name`: fails with [`Error::NameInUse`] if a container of
    /// that name exists. `extra` files are written alongside state.json.
    pub fn claim(&self, paths: &Paths, extra: &[(&str, &[u8])]) -> Result<()> {
        let containers = paths.containers();
        fs::create_dir_all(&containers)
            .map_err(|e| Error::io(format!("creating {}", containers.display()), e))?;
        let tmp = containers.join(format!(".new-{}", self.id));
        fs::create_dir(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let fill = || -> std::io::Result<()> {
            let data = serde_json::to_vec_pretty(self)?;
            fs::write(tmp.join("state.json"), data)?;
            for (file, data) in extra {
                fs::write(tmp.join(file), data)?;
            }
            fs::create_dir(tmp.join("rootfs"))
        };
        if let Err(e) = fill() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::io(format!("writing {}", tmp.display()), e));
        }
        match fs::rename(&tmp, self.dir(paths)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) {
                    Err(Error::NameInUse(self.name.clone()))
                } else {
                    Err(Error::io(
                        format!("creating {}", self.dir(paths).display()),
                        e,
                    ))
                }
            }
        }
    }

    /// Whether the supervising runtime process is still alive.
    pub fn runtime_alive(&self) -> bool {
        proc_alive(self.runtime_pid, self.runtime_start)
    }

    /// Whether the container's PID 1 is alive.
    pub fn running(&self) -> bool {
        match (self.pid, self.pid_start) {
            (Some(p), Some(s)) => proc_alive(p, s),
            _ => false,
        }
    }

    /// Whether the container's cgroup is frozen (`uvm container pause`).
    pub fn paused(&self) -> bool {
        self.cgroup.as_ref().is_some_and(Cgroup::paused)
    }

    /// "running", "paused", "creating" or "stale" (its runtime died: `gc`
    /// removes it).
    pub fn status(&self) -> &'static str {
        if !self.runtime_alive() {
            "stale"
        } else if self.running() {
            if self.paused() {
                "paused"
            } else {
                "running"
            }
        } else {
            "creating"
        }
    }
}

/// All containers under `paths` (name, state or the error reading it).
pub fn list(paths: &Paths) -> Vec<(String, Result<State>)> {
    let Ok(rd) = fs::read_dir(paths.containers()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let s = State::load(paths, &n);
            (n, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str) -> State {
        State {
            name: name.into(),
            id: new_id(),
            rootfs: "/".into(),
            args: vec!["true".into()],
            created: now(),
            runtime_pid: i32::try_from(std::process::id()).unwrap(),
            runtime_start: proc_start_time(i32::try_from(std::process::id()).unwrap()).unwrap(),
            pid: None,
            pid_start: None,
            cgroup: None,
            net_mode: NetMode::None,
            net: None,
            netns: Default::default(),
            overlay: None,
            keep: false,
            image: None,
        }
    }

    #[test]
    fn claim_is_exclusive_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("uvm-state-test-{}", new_id()));
        let paths = Paths::new(&dir);
        let s = state("c1");
        s.claim(&paths, &[("config.json", b"{}")]).unwrap();
        assert_eq!(State::load(&paths, "c1").unwrap(), s);
        assert!(paths.container("c1").join("config.json").exists());
        let e = state("c1").claim(&paths, &[]).unwrap_err();
        assert!(matches!(e, Error::NameInUse(_)), "{e}");
        assert!(s.runtime_alive());
        assert_eq!(s.status(), "creating");
        let names: Vec<String> = list(&paths).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["c1".to_string()]);
        assert!(matches!(
            State::load(&paths, "nope"),
            Err(Error::NoSuchContainer(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn start_times() {
        let me = i32::try_from(std::process::id()).unwrap();
        let t = proc_start_time(me).unwrap();
        assert!(proc_alive(me, t));
        assert!(!proc_alive(me, t + 1));
        assert!(!proc_alive(i32::MAX, t));
        assert_ne!(new_id(), new_id());
        assert_eq!(new_id().len(), 16);
    }
}
