//! The vm levels. `vm`: the root folder becomes the guest's root disk (a
//! private copy of its cached ext4 image) and the workload runs under
//! uvm-init. `vm+container`: the same image, read-only, is the lower layer
//! of a container that the guest's own `uvm-container` runs with the
//! limits (cgroup v2 there). Either way the guest's agent runs the workload,
//! its stdin, stdout and stderr are uvm's own over vsock, and the console
//! goes into a log.

use std::path::{Path, PathBuf};

use super::net::NetLease;
use super::{container, image, refuse, Isolation, WorkloadSpec};
use crate::agent::{workload, ProcessSpec};
use crate::error::Error;
use crate::vmm::linux::{LinuxVmConfig, Output, DEFAULT_CMDLINE};
use crate::vmm::virtio::{DiskSpec, FsSpec, NetSpec};
use crate::{check, guest_image, vmm};
use uvm_runtime::spec::{PortMap, Volume};
use uvm_runtime::state;

/// Guest RAM added to `--memory` for the guest's own kernel, init and the
/// initramfs held in RAM (17 MB, copied once into a tmpfs).
pub const GUEST_OVERHEAD: u64 = 128 << 20;
/// What a workload gets without `--memory`.
pub const DEFAULT_WORKLOAD_MEMORY: u64 = 256 << 20;

/// Where the guest's `uvm-container` finds the image at vm+container.
const GUEST_ROOTFS: &str = "/mnt/rootfs";

/// The subnet of the guest's container bridge at vm+container.
const GUEST_SUBNET: &str = "10.89.0.0/16";

/// At vm+container: waits for the image's disk (virtio_blk probes
/// asynchronously), mounts it read-only and runs the container runtime.
const MOUNT_AND_RUN: &str = r#"i=0
while [ ! -b /dev/vda ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done
mkdir -p /mnt/rootfs && mount -t ext4 -o ro /dev/vda /mnt/rootfs || { echo "uvm: cannot mount the root image in the guest" >&2; exit 125; }
exec "$@""#;

fn check_flags(level: Isolation, spec: &WorkloadSpec) -> Result<u32, Error> {
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

/// The VM's folder under the state root: its private disk, console log and
/// vsock socket.
pub struct RunDir(PathBuf);

/// Where the VMs' folders are.
fn vm_dirs() -> PathBuf {
    state::default_root().join("vm")
}

/// Whether the uvm that made VM folder `dir` is gone (its `owner` file
/// names its pid and start time).
fn owner_gone(dir: &Path) -> bool {
    let owner = std::fs::read_to_string(dir.join("owner")).unwrap_or_default();
    let mut w = owner
        .split_whitespace()
        .filter_map(|x| x.parse::<u64>().ok());
    match (w.next(), w.next()) {
        (Some(pid), Some(start)) => {
            !i32::try_from(pid).is_ok_and(|pid| state::proc_alive(pid, start))
        }
        // Being written right now, or left by a crash before it was:
        // only old ones count as gone.
        _ => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 60),
    }
}

impl RunDir {
    pub fn create(name: &str) -> Result<RunDir, Error> {
        let dir = vm_dirs().join(name);
        if dir.exists() {
            if !owner_gone(&dir) {
                return Err(Error::Usage(format!(
                    "a VM named {name} is already running (its folder is {})",
                    dir.display()
                )));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Io(format!("creating {}", dir.display()), e))?;
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let start = state::proc_start_time(me).unwrap_or(0);
        std::fs::write(dir.join("owner"), format!("{me} {start}\n"))
            .map_err(|e| Error::Io(format!("writing {}/owner", dir.display()), e))?;
        Ok(RunDir(dir))
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

/// Removes the folders of VMs whose uvm died; returns what was removed.
pub fn gc() -> Vec<String> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(vm_dirs()).into_iter().flatten().flatten() {
        let dir = e.path();
        if owner_gone(&dir) && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(format!("VM folder {}", dir.display()));
        }
    }
    removed
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// At vm+container the host publishes HOST to the guest's CTR port, and the
/// guest's runtime publishes that same port on to its container.
fn second_hop(spec: &WorkloadSpec) -> Result<WorkloadSpec, Error> {
    let mut inner = spec.clone();
    inner.publish = spec
        .publish
        .iter()
        .map(|p| {
            let m = p.parse::<PortMap>()?;
            let proto = if p.ends_with("/udp") { "/udp" } else { "" };
            Ok(format!("{c}:{c}{proto}", c = m.container))
        })
        .collect::<Result<_, Error>>()?;
    Ok(inner)
}

/// `-v` at the vm levels: each host folder becomes a virtio-fs share. At
/// vm the guest's init mounts it where the workload wants it; at
/// vm+container it mounts it under /mnt and the guest's runtime binds it
/// on into the container (returned: those `-v` flags).
fn shares(level: Isolation, spec: &WorkloadSpec) -> Result<(Vec<FsSpec>, Vec<String>), Error> {
    let mut shares = Vec::new();
    let mut inner = Vec::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let vol: Volume = v.parse()?;
        if !vol.host.is_dir() {
            return Err(refuse(
                level,
                "-v",
                &format!("{v}: a VM is given folders (over virtio-fs), not single files"),
            ));
        }
        let tag = format!("vol{i}");
        let container = vol.container.to_string_lossy().into_owned();
        let guest_path = match level {
            Isolation::Vm => container.clone(),
            _ => format!("/mnt/{tag}"),
        };
        if level != Isolation::Vm {
            let ro = if vol.read_only { ":ro" } else { "" };
            inner.push(format!("{guest_path}:{container}{ro}"));
        }
        shares.push(FsSpec {
            dir: vol.host,
            tag,
            read_only: vol.read_only,
            guest_path,
        });
    }
    Ok((shares, inner))
}

/// The last lines of the console log, for a guest that failed.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log)
        .unwrap_or_default()
        .replace('\r', "");
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn run(level: Isolation, spec: &WorkloadSpec) -> Result<i32, Error> {
    let vcpus = check_flags(level, spec)?;
    let (shares, inner_volumes) = shares(level, spec)?;
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
    let lease = if spec.bridged() {
        let mut l = NetLease::take(&spec.name, &spec.publish, &format!("uvm run -i {level}"))?;
        if spec.seccomp {
            l.release_from_helper()?;
        }
        Some(l)
    } else {
        None
    };
    if let Some(l) = &lease {
        cmdline.push(l.ip_param("eth0"));
    }
    let (disk, process) = match level {
        Isolation::Vm => {
            let private = dir.path("root.ext4");
            image::private_copy(&img, &private)?;
            let process = ProcessSpec {
                args: spec.argv.clone(),
                env: spec.env.clone(),
                cwd: spec.workdir.clone(),
                user: spec.user,
            };
            let disk = DiskSpec {
                path: private,
                read_only: false,
                id: None,
                root: true,
                rate_limit: Default::default(),
            };
            (disk, process)
        }
        _ => {
            let mut argv: Vec<String> = vec![
                "sh".into(),
                "-c".into(),
                MOUNT_AND_RUN.into(),
                "sh".into(),
                "uvm-container".into(),
            ];
            // The guest's own bridge must not overlap the host's subnet
            // that its eth0 is on.
            argv.extend(["--subnet".to_string(), GUEST_SUBNET.to_string()]);
            let mut inner = second_hop(spec)?;
            inner.volumes = inner_volumes;
            argv.extend(container::runtime_args(&inner, GUEST_ROOTFS));
            let disk = DiskSpec {
                path: img.clone(),
                read_only: true,
                id: Some("rootfs".into()),
                root: false,
                rate_limit: Default::default(),
            };
            (disk, ProcessSpec::new(argv))
        }
    };
    // The user's fragment comes last in a config's command line.
    cmdline.push(String::new());
    let console_log = dir.path("console.log");
    let mut cfg = LinuxVmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline,
        vcpus,
        mem_size: spec.memory.unwrap_or(DEFAULT_WORKLOAD_MEMORY) + GUEST_OVERHEAD,
        timeout: spec.timeout,
        disks: vec![disk],
        nets: lease
            .iter()
            .map(|l| NetSpec {
                tap: l.tap().to_string(),
                mac: None,
                bridge: true,
                rx_rate_limit: Default::default(),
                tx_rate_limit: Default::default(),
            })
            .collect(),
        vsock: None,
        shares,
        verbose: spec.verbose,
        seccomp: spec.seccomp,
        console: if spec.verbose {
            Output::Stderr
        } else {
            Output::File(console_log.clone())
        },
    };
    // The workload and its stdio travel over vsock to the guest's agent.
    let uds = workload::prepare(&mut cfg, &dir.path("vsock.sock"));
    cfg.validate()?;
    let vm = vmm::linux::build(&cfg)?;
    // The VMM has made the tap: onto the bridge with it before the guest runs.
    if let Some(l) = &lease {
        l.attach()?;
    }
    let shutdown = vm.shutdown();
    vmm::shutdown::stop_on_signals(shutdown.clone(), cfg.seccomp)?;
    workload::drive(uds, process, shutdown.clone(), cfg.seccomp)?;
    vmm::shutdown::hard_deadline(cfg.timeout, cfg.seccomp)?;
    let outcome = vm.run(cfg.timeout)?;
    let (code, message) = outcome.exit();
    if let Some(m) = message {
        eprintln!("uvm run: {m}");
    }
    if !spec.verbose {
        if let Some(t) = workload::failure_tail(&outcome, &shutdown, &console_log) {
            eprintln!("uvm run: the guest's console ended with:\n{t}");
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(publish: &[&str]) -> WorkloadSpec {
        let mut a = super::super::WorkloadArgs::new(vec!["true".into()]);
        a.flags.name = Some("t".into());
        a.flags.publish = publish.iter().map(|p| p.to_string()).collect();
        a.to_spec().unwrap()
    }

    #[test]
    fn the_second_hop_publishes_the_container_port_as_is() {
        let s = spec(&["8080:80", "5353:53/udp"]);
        assert!(s.bridged(), "-p implies bridge");
        assert_eq!(second_hop(&s).unwrap().publish, ["80:80", "53:53/udp"]);
        assert!(second_hop(&spec(&[])).unwrap().publish.is_empty());
    }
}
