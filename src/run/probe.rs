//! `uvm probe`: the isolation matrix. The same static probe binary runs at
//! each level through `uvm run` (so each level is exactly what a user
//! gets), told what the host looks like; its answers, with their
//! evidence, become one table (levels across, probes down) and JSON.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use uvm_probe::{Answer, HostFacts, PROBES};

use super::{image, Isolation};
use crate::error::Error;
use crate::guest_image;

/// Where the probe binary sits inside the probe's root folder.
const PROBE_IN_ROOTFS: &str = "/bin/uvm-probe";

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub select: crate::run::LevelSelection,
    /// Memory limit each level is given (the memory probe touches twice this)
    #[arg(long, default_value = "64m", value_name = "SIZE")]
    pub memory: String,
    /// Process limit (not at the vm level, where the VM is the bound)
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub pids_limit: u32,
    /// Processes the fork-bomb probe tries to hold at once
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub fork_max: u32,
    /// Also write every answer as JSON here
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// The probe's root folder: the default busybox root plus the probe, kept
/// in step with the probe binary uvm has (a new probe, a new image).
pub fn probe_rootfs(cache: &Path, probe: &Path) -> Result<PathBuf, Error> {
    let base = image::default_rootfs(cache)?;
    let dir = cache.join("rootfs-probe");
    let want = fs::read(probe).map_err(|e| Error::Io(format!("reading {}", probe.display()), e))?;
    let inside = dir.join(PROBE_IN_ROOTFS.trim_start_matches('/'));
    if fs::read(&inside).is_ok_and(|have| have == want) {
        return Ok(dir);
    }
    image::ensure_writable(cache)?;
    if !dir.exists() {
        let st = Command::new("cp")
            .arg("-a")
            .arg(&base)
            .arg(&dir)
            .status()
            .map_err(|e| Error::Io("copying the busybox root".into(), e))?;
        if !st.success() {
            return Err(Error::Cache(dir, std::io::Error::other("cp -a failed")));
        }
    }
    let tmp = inside.with_extension("new");
    fs::write(&tmp, &want)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        })
        .and_then(|()| fs::rename(&tmp, &inside))
        .map_err(|e| Error::Cache(dir.clone(), e))?;
    Ok(dir)
}

fn read_trim(p: &str) -> String {
    fs::read_to_string(p).unwrap_or_default().trim().to_string()
}

/// What the probe needs to know of the host, and the secret file planted
/// for it (removed when dropped).
struct Host {
    facts: HostFacts,
}

impl Host {
    fn new(memory: u64, fork_max: u32) -> Result<Host, Error> {
        let pid = std::process::id();
        let secret_path = format!("/tmp/uvm-probe-secret-{pid}");
        let secret = format!("{:016x}{:016x}", rand_u64(), rand_u64());
        fs::write(&secret_path, &secret)
            .map_err(|e| Error::Io(format!("planting {secret_path}"), e))?;
        let mut netifs: Vec<(String, String)> = fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lo")
                    .map(|n| {
                        let mac = read_trim(&format!("/sys/class/net/{n}/address"));
                        (n, mac)
                    })
                    .collect()
            })
            .unwrap_or_default();
        netifs.sort();
        Ok(Host {
            facts: HostFacts {
                pid: i32::try_from(pid).unwrap_or(0),
                comm: read_trim("/proc/self/comm"),
                hostname: read_trim("/proc/sys/kernel/hostname"),
                kernel_release: read_trim("/proc/sys/kernel/osrelease"),
                boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
                secret_path,
                secret,
                netifs,
                memory_limit: memory,
                fork_max,
            },
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.facts.secret_path);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b)
}

/// One level's answers, or why there are none.
pub type LevelResult = Result<Vec<Answer>, String>;

fn probe_level(
    level: Isolation,
    args: &ProbeArgs,
    probe: &Path,
    rootfs: &Path,
    facts: &HostFacts,
    cache: &Path,
) -> LevelResult {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let json = serde_json::to_string(facts).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(me);
    cmd.args(["run", "-i", level.name(), "--name"])
        .arg(format!(
            "probe-{}-{}",
            level.name().replace('+', "-"),
            std::process::id()
        ))
        .arg("--memory")
        .arg(&args.memory)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--timeout", "600"]);
    if level != Isolation::Vm {
        cmd.arg("--pids-limit").arg(args.pids_limit.to_string());
    }
    let program = if level == Isolation::Process {
        probe.to_string_lossy().into_owned()
    } else {
        cmd.arg("--rootfs").arg(rootfs);
        PROBE_IN_ROOTFS.to_string()
    };
    cmd.arg("--").arg(program).arg(json);
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('['));
    match line.map(serde_json::from_str::<Vec<Answer>>) {
        Some(Ok(a)) => Ok(a),
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "uvm run -i {level} exited {}: {}",
                out.status.code().unwrap_or(-1),
                err.lines().last().unwrap_or("no output").trim()
            ))
        }
    }
}

/// Runs the probe at each level; the table goes to stdout as it completes.
pub fn run(args: &ProbeArgs) -> Result<BTreeMap<String, LevelResult>, Error> {
    let levels = args.select.levels();
    let memory = uvm_runtime::limits::parse_memory("--memory", &args.memory)?;
    let cache = args.select.cache();
    let probe = guest_image::default_file("uvm-probe")?;
    let rootfs = probe_rootfs(&cache, &probe)?;
    let host = Host::new(memory, args.fork_max)?;
    let mut results = BTreeMap::new();
    for (i, level) in levels.iter().enumerate() {
        eprintln!("uvm probe: [{}/{}] {level} ...", i + 1, levels.len());
        let r = probe_level(*level, args, &probe, &rootfs, &host.facts, &cache);
        if let Err(e) = &r {
            eprintln!("uvm probe: {level}: {e}");
        }
        results.insert(level.name().to_string(), r);
    }
    print!("{}", table(&levels, &results));
    if let Some(path) = &args.json {
        let v: BTreeMap<&String, serde_json::Value> = results
            .iter()
            .map(|(k, r)| {
                (
                    k,
                    match r {
                        Ok(a) => serde_json::to_value(a).unwrap_or_default(),
                        Err(e) => serde_json::json!({ "error": e }),
                    },
                )
            })
            .collect();
        let text =
            serde_json::to_string_pretty(&serde_json::json!({ "host": host.facts, "levels": v }))
                .unwrap_or_default();
        fs::write(path, text).map_err(|e| Error::Io(format!("writing {}", path.display()), e))?;
    }
    Ok(results)
}

/// Levels across, probes down, then each answer's evidence.
pub fn table(levels: &[Isolation], results: &BTreeMap<String, LevelResult>) -> String {
    let cell = |level: &Isolation, probe: &str| -> (String, String) {
        match results.get(level.name()) {
            Some(Ok(answers)) => answers
                .iter()
                .find(|a| a.probe == probe)
                .map_or(("?".into(), String::new()), |a| {
                    (a.answer.clone(), a.evidence.clone())
                }),
            Some(Err(_)) => ("error".into(), String::new()),
            None => ("-".into(), String::new()),
        }
    };
    let w0 = PROBES.iter().map(|(_, t)| t.len()).max().unwrap_or(10);
    let widths: Vec<usize> = levels
        .iter()
        .map(|l| {
            PROBES
                .iter()
                .map(|(p, _)| cell(l, p).0.len())
                .chain([l.name().len()])
                .max()
                .unwrap_or(8)
        })
        .collect();
    let mut out = format!("{:<w0$}", "probe");
    for (l, w) in levels.iter().zip(&widths) {
        out.push_str(&format!("  {:<w$}", l.name()));
    }
    out.push('\n');
    for (p, title) in PROBES {
        out.push_str(&format!("{title:<w0$}"));
        for (l, w) in levels.iter().zip(&widths) {
            out.push_str(&format!("  {:<w$}", cell(l, p).0));
        }
        out.push('\n');
    }
    out.push_str("\nevidence:\n");
    for (p, title) in PROBES {
        out.push_str(&format!("  {title}\n"));
        for l in levels {
            out.push_str(&format!("    {:<13} {}\n", l.name(), cell(l, p).1));
        }
    }
    for l in levels {
        if let Some(Err(e)) = results.get(l.name()) {
            out.push_str(&format!("{}: {e}\n", l.name()));
        }
    }
    out
}

/// `uvm probe`: 0 when every level answered.
pub fn main(args: &ProbeArgs) -> i32 {
    match run(args) {
        Ok(r) if r.values().all(Result::is_ok) => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("uvm probe: {e}");
            crate::vmm::shutdown::EXIT_UVM_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_levels_across_and_probes_down() {
        let mut r = BTreeMap::new();
        r.insert(
            "process".to_string(),
            Ok(vec![Answer {
                probe: "host_pids".into(),
                answer: "yes".into(),
                evidence: "/proc/1 is uvm".into(),
            }]),
        );
        r.insert("vm".to_string(), Err("no KVM".to_string()));
        let t = table(&[Isolation::Process, Isolation::Vm], &r);
        let mut lines = t.lines();
        let head = lines.next().unwrap();
        assert!(head.starts_with("probe") && head.contains("process") && head.contains("vm"));
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("sees host PIDs") && row.contains("yes") && row.contains("error"),
            "{row}"
        );
        assert!(t.contains("/proc/1 is uvm") && t.contains("vm: no KVM"));
        // Every probe has a row (the process level lacks the others: "?").
        assert_eq!(
            PROBES
                .iter()
                .filter(|(_, title)| t.lines().any(|l| l.starts_with(title)))
                .count(),
            PROBES.len()
        );
    }
}
