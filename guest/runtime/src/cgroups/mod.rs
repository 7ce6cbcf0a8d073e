//! Resource limits and accounting with cgroups: one interface over cgroup v2
//! (the unified hierarchy, as in the uvm guest) and cgroup v1 (one hierarchy
//! per controller, as on hosts in "hybrid" mode).
//!
//! One module per controller says what its limits are on each version:
//! [`cpu`], [`cpuset`], [`memory`], [`blkio`] (v2's io), [`pids`] and
//! [`devices`] turn [`Resources`] into [`Write`]s with pure functions, so
//! both versions are testable on any host, and [`Cgroup`] applies them;
//! [`freezer`] pauses and resumes a cgroup.

pub mod blkio;
pub mod cpu;
pub mod cpuset;
pub mod devices;
pub mod freezer;
pub mod memory;
pub mod pids;

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use blkio::{IoLimit, Throttle};
pub use cpu::{shares_to_weight, weight_to_shares};

use super::device_filter;
use super::error::{Error, Result};

/// Where cgroup hierarchies are normally mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Limits to apply, as plain numbers (from flags or the bundle's config.json).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory limit in bytes (no swap beyond it unless `memory_swap` says).
    pub memory: Option<u64>,
    /// Memory plus swap in bytes (Docker's `--memory-swap`, the OCI
    /// spec's `memory.swap`); -1: unlimited swap.
    pub memory_swap: Option<i64>,
    /// Soft limit in bytes (v1 memory.soft_limit_in_bytes, v2 memory.low).
    pub memory_reservation: Option<u64>,
    /// v1 memory.swappiness, 0..100 (v2 has none).
    pub memory_swappiness: Option<u64>,
    /// v1 memory.oom_control: pause tasks at the limit instead of OOM-killing.
    pub oom_kill_disable: bool,
    /// CFS quota in microseconds per `cpu_period`.
    pub cpu_quota: Option<u64>,
    /// CFS period in microseconds (default 100000).
    pub cpu_period: Option<u64>,
    /// v1 cpu.shares (v2: converted to cpu.weight).
    pub cpu_shares: Option<u64>,
    /// CPUs and memory nodes, kernel lists such as `0-3,5`.
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Relative block I/O weight, 10..1000.
    pub blkio_weight: Option<u16>,
    /// Per-device block I/O rate limits.
    pub io_limits: Vec<Throttle>,
    /// Maximum number of tasks.
    pub pids: Option<i64>,
    /// Device access rules, (allow, "c 1:3 rwm"): the v1 devices controller's
    /// files, or an eBPF device program on v2.
    pub devices: Vec<(bool, String)>,
}

impl Resources {
    /// Whether any limit is set (device rules alone are not one).
    pub fn limits(&self) -> bool {
        self.memory.is_some()
            || self.memory_swap.is_some()
            || self.memory_reservation.is_some()
            || self.memory_swappiness.is_some()
            || self.oom_kill_disable
            || self.cpu_quota.is_some()
            || self.cpu_shares.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some()
            || self.blkio_weight.is_some()
            || !self.io_limits.is_empty()
            || self.pids.is_some()
    }

    /// Checks, before anything is created, what the kernel would refuse
    /// only once the cgroup exists (or take without a word): CPUs and
    /// memory nodes that are not online, block devices that do not exist
    /// or are partitions, a weight out of range, memory limits that
    /// contradict each other. The reason names the OCI spec's field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(c) = &self.cpuset_cpus {
            cpuset::check(c, &cpuset::online_cpus()?, "CPU")
                .map_err(|e| format!("cpu.cpus {c:?}: {e}"))?;
        }
        if let Some(m) = &self.cpuset_mems {
            cpuset::check(m, &cpuset::online_mems(), "memory node")
                .map_err(|e| format!("cpu.mems {m:?}: {e}"))?;
        }
        if let Some(w) = self.blkio_weight {
            blkio::check_weight(w).map_err(|e| format!("blockIO.weight {w}: {e}"))?;
        }
        for t in &self.io_limits {
            blkio::check_disk(t.major, t.minor)
                .map_err(|e| format!("blockIO throttle ({}): {e}", t.limit.flag()))?;
            if t.rate == 0 {
                return Err(format!(
                    "blockIO throttle ({}) on {}:{}: the rate must be above 0",
                    t.limit.flag(),
                    t.major,
                    t.minor
                ));
            }
        }
        let memory = self.memory.and_then(|m| i64::try_from(m).ok());
        match (self.memory_swap, memory) {
            (None | Some(-1), _) => {}
            (Some(s), _) if s < -1 || s == 0 => {
                return Err(format!(
                    "memory.swap {s}: expected -1 (unlimited) or a number of bytes"
                ))
            }
            (Some(_), None) => {
                return Err("memory.swap needs a memory limit (it is memory plus swap)".to_string())
            }
            (Some(s), Some(m)) if s < m => {
                return Err(format!(
                    "memory.swap {s} is below the memory limit {m} (it is memory plus swap)"
                ))
            }
            _ => {}
        }
        if let (Some(r), Some(m)) = (self.memory_reservation, self.memory) {
            if r > m {
                return Err(format!(
                    "memory.reservation {r} is above the memory limit {m}"
                ));
            }
        }
        Ok(())
    }
}

/// Which cgroup layout this host has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hierarchy {
    /// Unified hierarchy mounted at `root`.
    V2 { root: PathBuf },
    /// One mount per controller: (controller names, mount point).
    V1 { mounts: Vec<(Vec<String>, PathBuf)> },
}

/// The controllers the runtime uses on v1.
const V1_CONTROLLERS: [&str; 8] = [
    "memory", "cpu", "cpuacct", "cpuset", "blkio", "pids", "devices", "freezer",
];

/// cgroup2 filesystem magic (statfs f_type).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

impl Hierarchy {
    /// Detects the host's layout from `/sys/fs/cgroup`: pure v2 if it is a
    /// cgroup2 mount, otherwise the v1 controller mounts from mountinfo.
    pub fn detect() -> Result<Self> {
        let st = nix::sys::statfs::statfs(CGROUP_ROOT).map_err(|e| {
            Error::Cgroup(format!(
                "{CGROUP_ROOT} is not accessible ({e}): is cgroupfs mounted?"
            ))
        })?;
        #[allow(clippy::unnecessary_cast)]
        if st.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC {
            return Ok(Hierarchy::V2 {
                root: PathBuf::from(CGROUP_ROOT),
            });
        }
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::Cgroup(format!("reading /proc/self/mountinfo: {e}")))?;
        let mounts = parse_v1_mounts(&info);
        if mounts.is_empty() {
            return Err(Error::Cgroup(format!(
                "no cgroup v1 controllers and no cgroup2 at {CGROUP_ROOT}"
            )));
        }
        Ok(Hierarchy::V1 { mounts })
    }

    pub fn version(&self) -> u8 {
        match self {
            Hierarchy::V2 { .. } => 2,
            Hierarchy::V1 { .. } => 1,
        }
    }
}

/// The cgroup v1 mounts (controllers, mount point) in a mountinfo text.
pub fn parse_v1_mounts(mountinfo: &str) -> Vec<(Vec<String>, PathBuf)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // ... mount_point ... - fstype source super_options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let opts = r.nth(1).unwrap_or("");
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let controllers: Vec<String> = opts
            .split(',')
            .filter(|o| V1_CONTROLLERS.contains(o))
            .map(str::to_string)
            .collect();
        if !controllers.is_empty() && !out.iter().any(|(_, p)| p == Path::new(mount_point)) {
            out.push((controllers, PathBuf::from(mount_point)));
        }
    }
    out
}

/// What to do when none of a [`Write`]'s files exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMissing {
    /// The error opening the (first) file: it exists wherever its
    /// controller does.
    Fail,
    /// Nothing: a default the kernel may not support (swap accounting).
    Skip,
    /// This one-line error: a feature the kernel lacks.
    Explain(String),
}

/// One value for a controller's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: &'static str,
    /// (file, value) by preference: the first file that exists is written.
    pub choices: Vec<(&'static str, String)>,
    pub if_missing: IfMissing,
}

impl Write {
    pub fn new(controller: &'static str, file: &'static str, value: impl ToString) -> Write {
        Write {
            controller,
            choices: vec![(file, value.to_string())],
            if_missing: IfMissing::Fail,
        }
    }
    /// Another file (and its value) to write where the previous ones are missing.
    pub fn or(mut self, file: &'static str, value: impl ToString) -> Write {
        self.choices.push((file, value.to_string()));
        self
    }
    pub fn skip_if_missing(mut self) -> Write {
        self.if_missing = IfMissing::Skip;
        self
    }
    pub fn explain_if_missing(mut self, why: impl Into<String>) -> Write {
        self.if_missing = IfMissing::Explain(why.into());
        self
    }
    /// The preferred file.
    pub fn file(&self) -> &'static str {
        self.choices.first().map_or("", |c| c.0)
    }
    /// The preferred file's value.
    pub fn value(&self) -> &str {
        self.choices.first().map_or("", |c| c.1.as_str())
    }
}

/// What to write on v1, in order, controller by controller.
pub fn v1_limit_files(r: &Resources) -> Vec<Write> {
    [
        memory::v1(r),
        cpu::v1(r),
        cpuset::v1(r),
        blkio::v1(r),
        pids::v1(r),
        devices::v1(r),
    ]
    .concat()
}

/// What to write on v2, in order (device rules are an eBPF program there).
pub fn v2_limit_files(r: &Resources) -> Vec<Write> {
    [
        memory::v2(r),
        cpu::v2(r),
        cpuset::v2(r),
        blkio::v2(r),
        pids::v2(r),
    ]
    .concat()
}

/// Usage read back from a container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub memory_usage: Option<u64>,
    pub memory_max_usage: Option<u64>,
    pub memory_limit: Option<u64>,
    pub oom_kills: u64,
    pub cpu_usage_ns: Option<u64>,
    pub cpu_nr_periods: Option<u64>,
    pub cpu_nr_throttled: Option<u64>,
    pub cpu_throttled_ns: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_limit: Option<u64>,
    /// Forks refused because the pids limit was reached.
    pub pids_rejected: Option<u64>,
}

/// A value from a flat-keyed file (`key value` per line).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn limit_value(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v: u64 = t.parse().ok()?;
    // v1 "unlimited" is a huge page-aligned number.
    (v < (1u64 << 62)).then_some(v)
}

/// A container's cgroup (one directory per v1 hierarchy, or one on v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub version: u8,
    /// Path relative to each hierarchy root, e.g. `uvm/3fa9c0d1e2b4`.
    pub rel: PathBuf,
    /// Absolute directories: (controllers, path); one entry on v2 (controllers empty).
    pub dirs: Vec<(Vec<String>, PathBuf)>,
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::Cgroup(format!("opening {}: {e}", path.display())))?;
    f.write_all(value.as_bytes()).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EBUSY) => " (the limit is below current usage)",
            Some(libc::EINVAL) => " (value out of range for this kernel)",
            _ => "",
        };
        Error::Cgroup(format!(
            "writing {value:?} to {}: {e}{hint}",
            path.display()
        ))
    })
}

impl Cgroup {
    /// Creates the container's cgroup `rel` (e.g. `uvm/<id>`) and applies `res`.
    /// On error nothing is left behind.
    pub fn create(h: &Hierarchy, rel: &Path, res: &Resources) -> Result<Cgroup> {
        let cg = match h {
            Hierarchy::V2 { root } => {
                let mut needed: Vec<&str> = Vec::new();
                for w in v2_limit_files(res) {
                    if !needed.contains(&w.controller) {
                        needed.push(w.controller);
                    }
                }
                enable_v2_controllers(root, rel, &needed)?;
                // Memory and pids counted even without limits, as runc has
                // them (stats, `ctr task metrics`); best effort, since a
                // parent with processes of its own cannot delegate.
                let available =
                    fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                let accounting: Vec<&str> = ["memory", "pids"]
                    .into_iter()
                    .filter(|c| !needed.contains(c))
                    .filter(|c| available.split_whitespace().any(|a| a == *c))
                    .collect();
                let _ = enable_v2_controllers(root, rel, &accounting);
                let dir = root.join(rel);
                mkdir(&dir)?;
                Cgroup {
                    version: 2,
                    rel: rel.to_path_buf(),
                    dirs: vec![(Vec::new(), dir)],
                }
            }
            Hierarchy::V1 { mounts } => {
                let mut cg = Cgroup {
                    version: 1,
                    rel: rel.to_path_buf(),
                    dirs: Vec::new(),
                };
                for (ctrls, mp) in mounts {
                    let dir = mp.join(rel);
                    let made = mkdir(&dir).and_then(|()| {
                        if ctrls.iter().any(|c| c == "cpuset") {
                            cpuset::v1_inherit(mp, rel)?;
                        }
                        Ok(())
                    });
                    // Recorded first, so that destroy() takes it too.
                    cg.dirs.push((ctrls.clone(), dir));
                    if let Err(e) = made {
                        cg.destroy();
                        return Err(e);
                    }
                }
                cg
            }
        };
        if let Err(e) = cg.apply(h, res) {
            cg.destroy();
            return Err(e);
        }
        Ok(cg)
    }

    fn dir_for(&self, controller: &str) -> Option<&Path> {
        if self.version == 2 {
            return self.dirs.first().map(|(_, p)| p.as_path());
        }
        self.dirs
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(_, p)| p.as_path())
    }

    fn apply(&self, h: &Hierarchy, res: &Resources) -> Result<()> {
        // Checked on both versions, so a bad rule fails the same way everywhere.
        let device_rules = device_filter::parse_rules(&res.devices)?;
        let writes = match h {
            Hierarchy::V2 { .. } => v2_limit_files(res),
            Hierarchy::V1 { .. } => v1_limit_files(res),
        };
        for w in writes {
            let Some(dir) = self.dir_for(w.controller) else {
                return Err(Error::Cgroup(format!(
                    "the {} controller is not available on this host (needed for {})",
                    w.controller,
                    w.file()
                )));
            };
            match w.choices.iter().find(|(f, _)| dir.join(f).exists()) {
                Some((file, value)) => write_file(&dir.join(file), value)?,
                None => match w.if_missing {
                    IfMissing::Skip => {}
                    IfMissing::Explain(why) => return Err(Error::Cgroup(why)),
                    IfMissing::Fail => write_file(&dir.join(w.file()), w.value())?,
                },
            }
        }
        if self.version == 2 && !device_rules.is_empty() {
            if let Some((_, dir)) = self.dirs.first() {
                device_filter::restrict(dir, &device_rules)?;
            }
        }
        Ok(())
    }

    /// Moves process `pid` (0: the caller) into the cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        let pid = if pid == 0 {
            std::process::id().to_string()
        } else {
            pid.to_string()
        };
        for (_, dir) in &self.dirs {
            write_file(&dir.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    /// Process ids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let Some((_, dir)) = self.dirs.first() else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn read(&self, controller: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.dir_for(controller)?.join(file)).ok()
    }

    /// How many times the kernel's OOM killer killed a task in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        if self.version == 2 {
            self.read("memory", "memory.events")
                .and_then(|t| keyed(&t, "oom_kill"))
                .unwrap_or(0)
        } else {
            self.read("memory", "memory.oom_control")
                .and_then(|t| keyed(&t, "oom_kill"))
                .unwrap_or(0)
        }
    }

    /// Usage and limits.
    pub fn stats(&self) -> Stats {
        let num = |c: &str, f: &str| self.read(c, f).and_then(|t| t.trim().parse().ok());
        let mut s = Stats {
            oom_kills: self.oom_kills(),
            ..Stats::default()
        };
        if self.version == 2 {
            s.memory_usage = num("memory", "memory.current");
            s.memory_max_usage = num("memory", "memory.peak");
            s.memory_limit = self
                .read("memory", "memory.max")
                .and_then(|t| limit_value(&t));
            if let Some(t) = self.read("cpu", "cpu.stat") {
                s.cpu_usage_ns = keyed(&t, "usage_usec").map(|u| u * 1000);
                s.cpu_nr_periods = keyed(&t, "nr_periods");
                s.cpu_nr_throttled = keyed(&t, "nr_throttled");
                s.cpu_throttled_ns = keyed(&t, "throttled_usec").map(|u| u * 1000);
            }
        } else {
            s.memory_usage = num("memory", "memory.usage_in_bytes");
            s.memory_max_usage = num("memory", "memory.max_usage_in_bytes");
            s.memory_limit = self
                .read("memory", "memory.limit_in_bytes")
                .and_then(|t| limit_value(&t));
            s.cpu_usage_ns = num("cpuacct", "cpuacct.usage");
            if let Some(t) = self.read("cpu", "cpu.stat") {
                s.cpu_nr_periods = keyed(&t, "nr_periods");
                s.cpu_nr_throttled = keyed(&t, "nr_throttled");
                s.cpu_throttled_ns = keyed(&t, "throttled_time");
            }
        }
        s.pids_current = num("pids", "pids.current");
        s.pids_limit = self.read("pids", "pids.max").and_then(|t| limit_value(&t));
        s.pids_rejected = self
            .read("pids", "pids.events")
            .and_then(|t| keyed(&t, "max"));
        s
    }

    /// Kills what is left in the cgroup and removes its directories (retrying
    /// while exiting tasks drain). Best effort; returns whether all went.
    pub fn destroy(&self) -> bool {
        // A frozen v1 task does not die of SIGKILL until thawed.
        if self.paused() {
            let _ = self.thaw();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut all = true;
        for (_, dir) in &self.dirs {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        for pid in fs::read_to_string(dir.join("cgroup.procs"))
                            .unwrap_or_default()
                            .lines()
                            .filter_map(|l| l.trim().parse::<i32>().ok())
                        {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => {
                        all = false;
                        break;
                    }
                }
            }
        }
        all
    }

    /// Re-opens a container's cgroup from its recorded directories.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|(_, d)| d.exists())
    }
}

fn mkdir(dir: &Path) -> Result<()> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::Cgroup(format!("creating {}: {e}", dir.display()))),
    }
}

/// Enables `controllers` for the subtree from `root` down to the parent of
/// `rel` (v2 delivers a controller to a cgroup only if every ancestor's
/// `cgroup.subtree_control` has it).
fn enable_v2_controllers(root: &Path, rel: &Path, controllers: &[&str]) -> Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    for c in controllers {
        if !available.split_whitespace().any(|a| a == *c) {
            return Err(Error::Cgroup(format!(
                "the {c} controller is not available in the cgroup v2 hierarchy at {} \
                 (cgroup.controllers: {:?}); on a hybrid host it is bound to v1",
                root.display(),
                available.trim()
            )));
        }
    }
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let mut level = 0;
    loop {
        let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        let missing: Vec<String> = controllers
            .iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            write_file(&dir.join("cgroup.subtree_control"), &missing.join(" "))?;
        }
        let Some(next) = parents.get(level) else {
            break;
        };
        dir.push(next);
        mkdir(&dir)?;
        level += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_mounts_from_mountinfo() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
37 30 0:33 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
38 30 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
";
        let m = parse_v1_mounts(mi);
        assert_eq!(
            m,
            vec![
                (
                    vec!["cpu".to_string(), "cpuacct".to_string()],
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
                ),
                (
                    vec!["memory".into()],
                    PathBuf::from("/sys/fs/cgroup/memory")
                ),
                (vec!["pids".into()], PathBuf::from("/sys/fs/cgroup/pids")),
                (
                    vec!["freezer".into()],
                    PathBuf::from("/sys/fs/cgroup/freezer")
                ),
            ]
        );
    }

    fn res() -> Resources {
        Resources {
            memory: Some(32 << 20),
            cpu_quota: Some(50_000),
            cpu_shares: Some(512),
            cpuset_cpus: Some("0-1".into()),
            cpuset_mems: Some("0".into()),
            pids: Some(20),
            devices: vec![(false, "a".into()), (true, "c 1:3 rwm".into())],
            ..Resources::default()
        }
    }

    fn get(f: &[Write], file: &str) -> Option<String> {
        f.iter()
            .find(|w| w.file() == file)
            .map(|w| w.value().to_string())
    }

    #[test]
    fn v1_files() {
        let f = v1_limit_files(&res());
        let get = |name: &str| get(&f, name);
        assert_eq!(get("memory.limit_in_bytes").unwrap(), "33554432");
        assert_eq!(get("memory.memsw.limit_in_bytes").unwrap(), "33554432");
        assert_eq!(get("cpu.cfs_quota_us").unwrap(), "50000");
        assert_eq!(get("cpu.cfs_period_us").unwrap(), "100000");
        assert_eq!(get("cpu.shares").unwrap(), "512");
        assert_eq!(get("cpuset.cpus").unwrap(), "0-1");
        assert_eq!(get("cpuset.mems").unwrap(), "0");
        assert_eq!(get("pids.max").unwrap(), "20");
        // The period goes before the quota, the limit before memory+swap;
        // deny-all before allows.
        let pos = |name: &str| f.iter().position(|x| x.file() == name).unwrap();
        assert!(pos("cpu.cfs_period_us") < pos("cpu.cfs_quota_us"));
        assert!(pos("memory.limit_in_bytes") < pos("memory.memsw.limit_in_bytes"));
        assert!(pos("devices.deny") < pos("devices.allow"));
        assert!(v1_limit_files(&Resources::default()).is_empty());
        // Each write names its own controller's file.
        for w in &f {
            assert!(w.file().starts_with(w.controller), "{w:?}");
        }
    }

    #[test]
    fn v2_files() {
        let f = v2_limit_files(&res());
        let get = |name: &str| get(&f, name);
        assert_eq!(get("memory.max").unwrap(), "33554432");
        assert_eq!(get("memory.swap.max").unwrap(), "0");
        assert_eq!(get("cpu.max").unwrap(), "50000 100000");
        assert_eq!(get("cpu.weight").unwrap(), "20");
        assert_eq!(get("cpuset.cpus").unwrap(), "0-1");
        assert_eq!(get("cpuset.mems").unwrap(), "0");
        assert_eq!(get("pids.max").unwrap(), "20");
        // Devices are not a v2 file interface (that is eBPF).
        assert!(f.iter().all(|x| !x.file().starts_with("devices")));
        assert!(v2_limit_files(&Resources::default()).is_empty());
    }

    #[test]
    fn validation() {
        let ok = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(128 << 20),
            memory_reservation: Some(32 << 20),
            cpuset_cpus: Some("0".into()),
            cpuset_mems: Some("0".into()),
            blkio_weight: Some(500),
            ..Resources::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |r: Resources, want: &str| {
            let e = r.validate().unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        };
        bad(
            Resources {
                cpuset_cpus: Some("4096".into()),
                ..Resources::default()
            },
            "cpu.cpus \"4096\": CPU 4096 is not online",
        );
        bad(
            Resources {
                cpuset_mems: Some("0-x".into()),
                ..Resources::default()
            },
            "cpu.mems",
        );
        bad(
            Resources {
                blkio_weight: Some(5),
                ..Resources::default()
            },
            "blockIO.weight 5",
        );
        bad(
            Resources {
                io_limits: vec![Throttle {
                    limit: IoLimit::WriteBps,
                    major: 4095,
                    minor: 77,
                    rate: 1,
                }],
                ..Resources::default()
            },
            "no block device 4095:77",
        );
        bad(
            Resources {
                memory_swap: Some(1 << 30),
                ..Resources::default()
            },
            "needs a memory limit",
        );
        bad(
            Resources {
                memory: Some(64 << 20),
                memory_swap: Some(32 << 20),
                ..ok.clone()
            },
            "below the memory limit",
        );
        bad(
            Resources {
                memory_swap: Some(-2),
                ..ok.clone()
            },
            "expected -1",
        );
        bad(
            Resources {
                memory_reservation: Some(65 << 20),
                ..ok.clone()
            },
            "above the memory limit",
        );
        // Unlimited swap needs nothing else.
        assert_eq!(
            Resources {
                memory_swap: Some(-1),
                ..Resources::default()
            }
            .validate(),
            Ok(())
        );
    }

    /// The v2 code path end to end on a plain directory standing in for a
    /// cgroup2 mount (the files the kernel would show made empty
    /// beforehand): the controllers are enabled in every parent's
    /// subtree_control, and each limit lands in its file, the preferred
    /// one where there is a choice.
    #[test]
    fn v2_writes_on_a_stand_in_hierarchy() {
        let root = std::env::temp_dir().join(format!("uvm-v2-standin-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let rel = Path::new("uvm/c1");
        let files = [
            "cgroup.subtree_control",
            "cgroup.procs",
            "memory.max",
            "memory.swap.max",
            "memory.low",
            "cpu.max",
            "cpu.weight",
            "cpuset.cpus",
            "cpuset.mems",
            "io.weight",
            "io.max",
            "pids.max",
        ];
        for d in [root.clone(), root.join("uvm"), root.join(rel)] {
            fs::create_dir_all(&d).unwrap();
            for f in files {
                fs::write(d.join(f), "").unwrap();
            }
        }
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let h = Hierarchy::V2 { root: root.clone() };
        let r = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(96 << 20),
            memory_reservation: Some(16 << 20),
            cpu_shares: Some(weight_to_shares(250)),
            cpuset_cpus: Some("0".into()),
            cpuset_mems: Some("0".into()),
            blkio_weight: Some(1000),
            io_limits: vec![
                Throttle {
                    limit: IoLimit::WriteBps,
                    major: 7,
                    minor: 3,
                    rate: 1 << 20,
                },
                Throttle {
                    limit: IoLimit::WriteIops,
                    major: 7,
                    minor: 3,
                    rate: 50,
                },
            ],
            pids: Some(9),
            ..Resources::default()
        };
        let cg = Cgroup::create(&h, rel, &r).unwrap();
        assert_eq!(cg.dirs, [(Vec::new(), root.join(rel))]);
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        // Every controller the limits need, from the root down.
        for parent in ["", "uvm/"] {
            let enabled = read(&format!("{parent}cgroup.subtree_control"));
            let mut got: Vec<&str> = enabled.split_whitespace().collect();
            got.sort_unstable();
            assert_eq!(
                got,
                ["+cpu", "+cpuset", "+io", "+memory", "+pids"],
                "{parent}"
            );
        }
        for (file, want) in [
            ("memory.max", "67108864"),
            ("memory.swap.max", "33554432"),
            ("memory.low", "16777216"),
            ("cpu.weight", "250"),
            ("cpuset.cpus", "0"),
            ("cpuset.mems", "0"),
            // No io.bfq.weight here: io.weight, converted.
            ("io.weight", "10000"),
            ("io.max", "7:3 wbps=1048576 wiops=50"),
            ("pids.max", "9"),
        ] {
            assert_eq!(read(&format!("uvm/c1/{file}")), want, "{file}");
        }
        // With io.bfq.weight present, that one takes the weight as given.
        fs::write(root.join(rel).join("io.bfq.weight"), "").unwrap();
        fs::write(root.join(rel).join("io.weight"), "").unwrap();
        let r = Resources {
            blkio_weight: Some(300),
            ..Resources::default()
        };
        Cgroup::create(&h, rel, &r).unwrap();
        assert_eq!(read("uvm/c1/io.bfq.weight"), "300");
        assert_eq!(read("uvm/c1/io.weight"), "");
        // With neither, one line that says so.
        fs::remove_file(root.join(rel).join("io.bfq.weight")).unwrap();
        fs::remove_file(root.join(rel).join("io.weight")).unwrap();
        let e = Cgroup::create(&h, rel, &r).unwrap_err().to_string();
        assert!(e.contains("cannot weigh block I/O"), "{e}");
        assert_eq!(e.lines().count(), 1);
        // A controller the hierarchy lacks is named.
        fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let e = Cgroup::create(&h, rel, &r).unwrap_err().to_string();
        assert!(e.contains("the io controller is not available"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn keyed_files() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(t, "oom_kill"), Some(3));
        assert_eq!(keyed(t, "nope"), None);
        assert_eq!(limit_value("max\n"), None);
        assert_eq!(limit_value("9223372036854771712\n"), None);
        assert_eq!(limit_value("33554432\n"), Some(32 << 20));
    }

    /// Exercises the v2 code path on a scratch cgroup2 hierarchy: on a hybrid
    /// host the unified mount has no controllers, so limits must fail with a
    /// clear message and nothing left behind, while a limit-less cgroup can be
    /// created, joined, read and removed.
    #[test]
    fn v2_on_unified_hierarchy() {
        let root = PathBuf::from("/sys/fs/cgroup/unified");
        if !nix::unistd::geteuid().is_root() || !root.join("cgroup.procs").exists() {
            eprintln!("skipped: needs root and a cgroup2 at {}", root.display());
            return;
        }
        let h = Hierarchy::V2 { root: root.clone() };
        let rel = PathBuf::from(format!("uvm-unit-{}", std::process::id())).join("c1");
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap();
        if !controllers.contains("pids") {
            let err = Cgroup::create(
                &h,
                &rel,
                &Resources {
                    pids: Some(5),
                    ..Resources::default()
                },
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("pids controller is not available"), "{err}");
            assert!(!root.join(&rel).exists());
        }
        let cg = Cgroup::create(&h, &rel, &Resources::default()).unwrap();
        assert!(root.join(&rel).is_dir());
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        cg.add_pid(pid).unwrap();
        assert_eq!(cg.pids(), vec![pid]);
        let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(own.contains(&format!("0::/{}", rel.display())), "{own}");
        assert_eq!(cg.stats().oom_kills, 0);
        // destroy() kills what is left, then removes the directory.
        assert!(cg.destroy());
        assert!(!root.join(&rel).exists());
        let status = child.wait().unwrap();
        assert!(!status.success());
        fs::remove_dir(root.join(rel.parent().unwrap())).unwrap();
    }

    #[test]
    fn v1_create_limit_destroy() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let Ok(h @ Hierarchy::V1 { .. }) = Hierarchy::detect() else {
            eprintln!("skipped: host is not cgroup v1");
            return;
        };
        let rel = PathBuf::from(format!("uvm-unit-{}", std::process::id()));
        let cg = Cgroup::create(
            &h,
            &rel,
            &Resources {
                memory: Some(64 << 20),
                pids: Some(7),
                ..Resources::default()
            },
        )
        .unwrap();
        let s = cg.stats();
        assert_eq!(s.memory_limit, Some(64 << 20));
        assert_eq!(s.pids_limit, Some(7));
        assert_eq!(s.pids_current, Some(0));
        assert!(cg.destroy());
        assert!(!cg.exists());
        // A bad value is reported with the file and nothing is left behind.
        let err = Cgroup::create(
            &h,
            &rel,
            &Resources {
                cpu_quota: Some(5),
                ..Resources::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cpu.cfs_quota_us"), "{err}");
        assert!(!Path::new("/sys/fs/cgroup/cpu").join(&rel).exists());
    }
}
