//! The vm levels. `vm`: the root folder becomes the guest's root disk (a
//! private copy of its cached ext4 image) and the workload runs under
//! uvm-init. `vm+container`: the same image, read-only, is the lower layer
//! of a container that the guest's own `uvm-container` runs with the
//! limits (cgroup v2 there). Either way the workload's output comes out of
//! a second UART onto stdout, the console into a log.

use std::path::{Path, PathBuf};

use uvm_guest::protocol;

use super::{container, image, refuse, Isolation, Net, WorkloadSpec};
use crate::error::Error;
use crate::vmm::linux::{LinuxVmConfig, Output, DEFAULT_CMDLINE};
use crate::vmm::shutdown::{Outcome, EXIT_GUEST_CRASHED};
use crate::vmm::virtio::DiskSpec;
use crate::{check, guest_image, vmm};

/// Guest RAM added to `--memory` for the guest's own kernel, init and the
/// initramfs held in RAM (17 MB, copied once into a tmpfs).
pub const GUEST_OVERHEAD: u64 = 128 << 20;
/// What a workload gets without `--memory`.
pub const DEFAULT_WORKLOAD_MEMORY: u64 = 256 << 20;

/// Where the guest's `uvm-container` finds the image at vm+container.
const GUEST_ROOTFS: &str = "/mnt/rootfs";

/// At vm+container: waits for the image's disk (virtio_blk probes
/// asynchronously), mounts it read-only and runs the container runtime.
const MOUNT_AND_RUN: &str = r#"i=0
while [ ! -b /dev/vda ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done
mkdir -p /mnt/rootfs && mount -t ext4 -o ro /dev/vda /mnt/rootfs || { echo "uvm: cannot mount the root image in the guest" >&2; exit 125; }
exec "$@""#;

fn check_flags(level: Isolation, spec: &WorkloadSpec) -> Result<u32, Error> {
    if !spec.volumes.is_empty() {
        return Err(refuse(
            level,
            "-v",
            "host folders reach a VM over virtio-fs, which uvm does not have yet",
        ));
    }
    if spec.net == Net::Bridge || !spec.publish.is_empty() {
        return Err(refuse(
            level,
            "--net bridge / -p",
            "VM networking is not wired into uvm run yet",
        ));
    }
    if level == Isolation::Vm && spec.pids_limit.is_some() {
        return Err(refuse(
            level,
            "--pids-limit",
            "a VM bounds memory and vCPUs, not processes (use vm+container)",
        ));
    }
    let vcpus = match &spec.cpus {
        None => 1,
        Some((given, f)) if level == Isolation::Vm && f.fract() != 0.0 => {
            return Err(refuse(
                level,
                "--cpus",
                &format!("{given}: a VM has whole vCPUs (use vm+container for a fraction)"),
            ));
        }
        // Rounded up: a fraction at vm+container is the container's quota.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some((_, f)) => f.ceil().max(1.0) as u32,
    };
    if let Some(h) = &spec.hostname {
        if h.is_empty() || h.len() > 64 || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Usage(format!(
                "--hostname {h:?}: 1 to 64 characters, no spaces"
            )));
        }
    }
    Ok(vcpus)
}

/// The VM's folder under the state root: its private disk and console log.
struct RunDir(PathBuf);

impl RunDir {
    fn create(name: &str) -> Result<RunDir, Error> {
        let dir = uvm_guest::container::state::default_root()
            .join("vm")
            .join(name);
        if dir.exists() {
            return Err(Error::Usage(format!(
                "a VM named {name} is already running ({} exists; remove it if that VM is gone)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Io(format!("creating {}", dir.display()), e))?;
        Ok(RunDir(dir))
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines of the console log, for a guest that failed.
fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log)
        .unwrap_or_default()
        .replace('\r', "");
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn run(level: Isolation, spec: &WorkloadSpec) -> Result<i32, Error> {
    let vcpus = check_flags(level, spec)?;
    let kernel = guest_image::default_file(guest_image::KERNEL)?;
    let initrd = guest_image::default_file(guest_image::INITRD)?;
    check::ensure_can_boot_linux()?;
    let rootfs = match &spec.rootfs {
        Some(r) => r.clone(),
        None => image::default_rootfs(&spec.cache_dir)?,
    };
    let img = image::root_image(&rootfs, &spec.cache_dir)?;
    let dir = RunDir::create(&spec.name)?;
    let hostname = spec.hostname.clone().unwrap_or_else(|| spec.name.clone());
    let mut cmdline = vec![
        DEFAULT_CMDLINE.to_string(),
        format!("uvm.hostname={hostname}"),
    ];
    let disk = match level {
        Isolation::Vm => {
            let private = dir.path("root.ext4");
            image::private_copy(&img, &private)?;
            cmdline.push(protocol::encode_command(&spec.argv));
            if !spec.env.is_empty() {
                cmdline.push(protocol::encode_list(protocol::ENV_PARAM, &spec.env));
            }
            if let Some(w) = &spec.workdir {
                cmdline.push(protocol::encode_list(
                    protocol::CWD_PARAM,
                    std::slice::from_ref(w),
                ));
            }
            if let Some((u, g)) = spec.user {
                cmdline.push(format!("{}={u}:{g}", protocol::USER_PARAM));
            }
            DiskSpec {
                path: private,
                read_only: false,
                id: None,
                root: true,
            }
        }
        _ => {
            let mut argv: Vec<String> = vec![
                "sh".into(),
                "-c".into(),
                MOUNT_AND_RUN.into(),
                "sh".into(),
                "uvm-container".into(),
            ];
            argv.extend(container::runtime_args(spec, GUEST_ROOTFS));
            cmdline.push(protocol::encode_command(&argv));
            DiskSpec {
                path: img.clone(),
                read_only: true,
                id: Some("rootfs".into()),
                root: false,
            }
        }
    };
    // The user's fragment comes last in a config's command line.
    cmdline.push(String::new());
    let console_log = dir.path("console.log");
    let cfg = LinuxVmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline,
        vcpus,
        mem_size: spec.memory.unwrap_or(DEFAULT_WORKLOAD_MEMORY) + GUEST_OVERHEAD,
        timeout: spec.timeout,
        disks: vec![disk],
        nets: Vec::new(),
        verbose: spec.verbose,
        console: if spec.verbose {
            Output::Stderr
        } else {
            Output::File(console_log.clone())
        },
        workload_output: Some(Output::Stdout),
    };
    cfg.validate()?;
    let vm = vmm::linux::build(&cfg)?;
    vmm::shutdown::stop_on_signals(vm.shutdown())?;
    let outcome = vm.run(cfg.timeout)?;
    let (code, message) = outcome.exit();
    if let Some(m) = message {
        eprintln!("uvm run: {m}");
    }
    let crashed = code == EXIT_GUEST_CRASHED && outcome != Outcome::Timeout;
    if crashed && !spec.verbose {
        eprintln!(
            "uvm run: the guest's console ended with:\n{}",
            tail(&console_log, 15)
        );
    }
    Ok(code)
}
