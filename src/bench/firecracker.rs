//! Firecracker beside uvm and QEMU in `uvm bench boot|io`: a binary the
//! user has (`--firecracker PATH`; none ships with uvm), checked before
//! anything starts, then run without its API socket (`--no-api
//! --config-file`) from a JSON config the bench writes to a folder of its
//! own. Its serial console (and its log) come on its stdout, as QEMU's do,
//! so the benches read both the same way.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Error;

/// `firecracker --version` prints `Firecracker v1.14.0` (then a blank line).
const VERSION_PREFIX: &str = "Firecracker v";
/// How long `--version` may take before the binary counts as broken: a
/// program that is not Firecracker might wait for input or never end.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A Firecracker binary that said it is one.
#[derive(Debug, Clone)]
pub struct Firecracker {
    pub binary: PathBuf,
    /// What `--version` said, `Firecracker v1.14.0`.
    pub version: String,
}

fn refuse(path: &Path, why: impl Into<String>) -> Error {
    Error::Firecracker {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// The version line in `--version`'s output, if it is Firecracker's.
pub fn parse_version(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(VERSION_PREFIX) && l.len() > VERSION_PREFIX.len())
}

/// Checks that `path` is an executable file that answers `--version` as
/// Firecracker does, within a few seconds.
pub fn check(path: &Path) -> Result<Firecracker, Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| refuse(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(refuse(path, "not a file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(refuse(path, "not executable"));
    }
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| refuse(path, format!("cannot run it: {e}")))?;
    let until = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(refuse(
                    path,
                    format!(
                        "`--version` did not answer within {} s: not Firecracker",
                        VERSION_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    match parse_version(&out) {
        Some(v) if status.success() => Ok(Firecracker {
            binary: path.to_path_buf(),
            version: v.to_string(),
        }),
        _ => {
            let said = out.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            Err(refuse(
                path,
                format!("not Firecracker (`--version` said {said:?}; {status})"),
            ))
        }
    }
}

/// One VM as Firecracker's config file describes it.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub boot_args: String,
    pub mem: u64,
    pub vcpus: u32,
    /// A raw image, read-write, as the guest's first disk.
    pub disk: Option<PathBuf>,
    /// A tap the bench made, and the guest's MAC on it.
    pub tap: Option<(String, String)>,
}

impl VmConfig {
    /// The config file: Firecracker takes the same sections its API has.
    /// The disk uses the host's page cache and honours the guest's flushes
    /// (`Writeback`), as uvm's does; the default (`Unsafe`) ignores them.
    pub fn json(&self) -> serde_json::Value {
        let drives: Vec<serde_json::Value> = self
            .disk
            .iter()
            .map(|d| {
                serde_json::json!({
                    "drive_id": "vda",
                    "path_on_host": d,
                    "is_root_device": false,
                    "is_read_only": false,
                    "cache_type": "Writeback",
                })
            })
            .collect();
        let nics: Vec<serde_json::Value> = self
            .tap
            .iter()
            .map(|(tap, mac)| {
                serde_json::json!({
                    "iface_id": "eth0",
                    "host_dev_name": tap,
                    "guest_mac": mac,
                })
            })
            .collect();
        serde_json::json!({
            "boot-source": {
                "kernel_image_path": self.kernel,
                "initrd_path": self.initrd,
                "boot_args": self.boot_args,
            },
            "drives": drives,
            "network-interfaces": nics,
            "machine-config": {
                "vcpu_count": self.vcpus,
                "mem_size_mib": self.mem >> 20,
                "smt": false,
            },
        })
    }
}

/// A folder of the bench's own holding Firecracker's config, removed when
/// dropped.
#[derive(Debug)]
pub struct Prepared {
    dir: PathBuf,
    binary: PathBuf,
}

impl Firecracker {
    /// Writes `config` to a fresh folder under the system's temp folder.
    pub fn prepare(&self, config: &VmConfig) -> Result<Prepared, Error> {
        let base = std::env::temp_dir();
        let dir = (0..100)
            .map(|n| base.join(format!("uvm-bench-fc-{}-{n}", std::process::id())))
            .find(|d| std::fs::create_dir(d).is_ok())
            .ok_or_else(|| {
                Error::Io(
                    format!(
                        "making a folder for Firecracker's config in {}",
                        base.display()
                    ),
                    std::io::Error::last_os_error(),
                )
            })?;
        let prepared = Prepared {
            dir,
            binary: self.binary.clone(),
        };
        let file = prepared.config_file();
        std::fs::write(&file, format!("{:#}\n", config.json()))
            .map_err(|e| Error::Io(format!("writing {}", file.display()), e))?;
        Ok(prepared)
    }
}

impl Prepared {
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Firecracker with no API socket, booting the config at once.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--no-api")
            .arg("--config-file")
            .arg(self.config_file());
        c
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initramfs".into(),
            boot_args: "console=ttyS0 uvm.cmd=x".into(),
            mem: 256 << 20,
            vcpus: 2,
            disk: Some("/tmp/d.img".into()),
            tap: Some(("uvmbio7".into(), "52:54:00:12:34:56".into())),
        }
    }

    #[test]
    fn the_config_firecracker_boots_from() {
        let fc = Firecracker {
            binary: "/opt/fc/firecracker".into(),
            version: "Firecracker v1.14.0".into(),
        };
        let p = fc.prepare(&config()).unwrap();
        let file = p.config_file();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(written["boot-source"]["kernel_image_path"], "/k/vmlinuz");
        assert_eq!(written["boot-source"]["initrd_path"], "/k/initramfs");
        assert_eq!(
            written["boot-source"]["boot_args"],
            "console=ttyS0 uvm.cmd=x"
        );
        assert_eq!(written["machine-config"]["vcpu_count"], 2);
        assert_eq!(written["machine-config"]["mem_size_mib"], 256);
        let drives = written["drives"].as_array().unwrap();
        assert_eq!(drives.len(), 1);
        assert_eq!(drives[0]["path_on_host"], "/tmp/d.img");
        assert_eq!(drives[0]["is_root_device"], false);
        assert_eq!(drives[0]["is_read_only"], false);
        assert_eq!(drives[0]["cache_type"], "Writeback");
        let nics = written["network-interfaces"].as_array().unwrap();
        assert_eq!(nics[0]["host_dev_name"], "uvmbio7");
        assert_eq!(nics[0]["guest_mac"], "52:54:00:12:34:56");
        let args: Vec<String> = p
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["--no-api", "--config-file", file.to_str().unwrap()]);
        assert_eq!(p.command().get_program(), "/opt/fc/firecracker");
        // The folder is the bench's own: gone with the VM.
        let dir = file.parent().unwrap().to_path_buf();
        drop(p);
        assert!(!dir.exists());

        // The boot bench's VM: no disk, no NIC.
        let bare = VmConfig {
            disk: None,
            tap: None,
            ..config()
        }
        .json();
        assert_eq!(bare["drives"], serde_json::json!([]));
        assert_eq!(bare["network-interfaces"], serde_json::json!([]));
    }

    /// Firecracker's stdout as the benches see it: its log lines (the first
    /// and last here are from v1.17.0-dev) around the guest's serial
    /// console, whose lines end in `\r`.
    const STDOUT: &str = "\
2026-12-07T18:32:19.145576018 [anonymous-instance:main] Running Firecracker v1.17.0-dev
2026-12-07T18:32:19.280133561 [anonymous-instance:main] Successfully started microvm that was configured from one single json
[    0.000000] Linux version 6.1.0-57-cloud-amd64\r
uvm-init: ready after 3.512 s (init started at 2.840 s, modules took 0.283 s)\r
uvm-bench disk write bytes=268435456 t0=3.61 t1=5.02 rc=0\r
uvm-bench done\r
2026-12-07T18:32:26.001000000 [anonymous-instance:main] Vmm is stopping.
";

    /// From `/proc/PID/smaps` of that Firecracker with 256 MiB of guest RAM:
    /// its binary, its guest RAM (one anonymous mapping of exactly that
    /// size) and libc.
    const SMAPS: &str = "\
560b6fa22000-560b6fc73000 r-xp 0007a000 fe:00 6188219                    /work/ext/firecracker/build/cargo_target/release/firecracker
Rss:                1804 kB
7f238b1ff000-7f238b200000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f238b200000-7f239b200000 rw-p 00000000 00:00 0 
Rss:               51316 kB
7f239b34b000-7f239b4a1000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1044 kB
";

    #[test]
    fn its_stdout_and_memory_read_as_the_benches_expect() {
        let ready: Vec<_> = STDOUT
            .lines()
            .filter_map(crate::bench::boot::parse_ready)
            .collect();
        assert_eq!(
            ready,
            [crate::bench::boot::ReadyLine {
                ready: 3.512,
                init_start: 2.84,
                modules: 0.283
            }]
        );
        let bench_lines: Vec<_> = STDOUT
            .lines()
            .filter_map(crate::bench::io::parse_guest_line)
            .collect();
        assert_eq!(bench_lines.len(), 2, "the log lines are not the guest's");
        assert!(bench_lines.iter().all(Result::is_ok), "{bench_lines:?}");
        assert_eq!(
            crate::bench::rss_outside_guest_ram(SMAPS, 256 << 20),
            1804 + 1044
        );
    }

    #[test]
    fn firecracker_is_told_by_its_version_line() {
        assert_eq!(
            parse_version("Firecracker v1.14.0\n\n"),
            Some("Firecracker v1.14.0")
        );
        assert_eq!(
            parse_version("Firecracker v1.15.0-dev\n"),
            Some("Firecracker v1.15.0-dev")
        );
        assert_eq!(parse_version("echo (GNU coreutils) 9.1\n"), None);
        assert_eq!(parse_version("Firecracker v\n"), None);
        // What v1.17.0-dev prints: its log says it is leaving.
        assert_eq!(
            parse_version("Firecracker v1.17.0-dev\n\n2026-12-07T18:32:07.908587830 [anonymous-instance:main] Firecracker exiting successfully. exit_code=0\n"),
            Some("Firecracker v1.17.0-dev")
        );
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn binaries_that_are_not_firecracker_are_refused() {
        let missing = check(Path::new("/nonexistent/firecracker")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("--firecracker /nonexistent/firecracker: "),
            "{missing}"
        );
        assert!(check(Path::new("/tmp"))
            .unwrap_err()
            .to_string()
            .ends_with("not a file"));
        let echo = check(Path::new("/bin/echo")).unwrap_err().to_string();
        assert!(echo.contains("not Firecracker"), "{echo}");
        assert!(!echo.contains('\n'), "{echo}");
    }
}
