//! uvm's error type: every variant is a one-line message a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open kernel {0}: {1}")]
    KernelOpen(PathBuf, std::io::Error),
    #[error("{0} is not a bootable x86_64 kernel (bzImage or ELF vmlinux): {1}")]
    KernelFormat(PathBuf, String),
    #[error("cannot read initramfs {0}: {1}")]
    InitrdOpen(PathBuf, std::io::Error),
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM under the kernel's limit: give the VM more memory (--mem)")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("--mem {}: a guest needs at least {} MiB", human(*size), min >> 20)]
    MemoryTooSmall { size: u64, min: u64 },
    #[error("--mem {}: more than this host can give ({})", human(*size), human(*available))]
    MemoryTooLarge { size: u64, available: u64 },
    #[error("--vcpus {0}: must be between 1 and {1}")]
    Vcpus(u32, u32),
    #[error("cannot allocate guest memory: {0}")]
    GuestMemory(vm_memory::mmap::FromRangesError),
    #[error("cannot open /dev/kvm: {0} (is KVM available? see `uvm check`)")]
    KvmOpen(kvm_ioctls::Error),
    #[error("{0}")]
    HostCannotBoot(String),
    #[error("KVM {0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("boot setup: {0}")]
    BootSetup(&'static str),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] crate::acpi::AcpiError),
    #[error("device setup: {0}")]
    Device(String),
    #[error("{0}")]
    Virtio(#[from] uvm_devices::virtio::Error),
    #[error("default guest {0} not found: run `make guest` (or pass --kernel and --initrd)")]
    DefaultGuestMissing(PathBuf),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A thread could not put itself under its seccomp filter (a kernel
    /// without seccomp, say).
    #[error("cannot install the {0} seccomp filter: {1} (--no-seccomp runs without filters)")]
    Seccomp(&'static str, seccompiler::Error),
    /// `--firecracker PATH` that is not a Firecracker binary the bench can run.
    #[error("--firecracker {}: {why}", path.display())]
    Firecracker { path: PathBuf, why: String },
    /// A flag or value on uvm's command line that cannot be used.
    #[error("{0}")]
    Usage(String),
    #[error("the {level} level cannot honour {flag}: {why}")]
    Unsupported {
        level: &'static str,
        flag: String,
        why: String,
    },
    #[error("cache folder {0} is not writable ({1}): pass --cache-dir DIR or set UVM_CACHE_DIR")]
    Cache(PathBuf, std::io::Error),
    #[error("root image for {0}: {1}")]
    RootImage(PathBuf, String),
    #[error("{0}")]
    Container(#[from] uvm_runtime::error::Error),
    #[error("{0}")]
    Agent(String),
    /// The workload's command could not run; `status` is what a shell
    /// gives for that (127: not found, 126: not executable).
    #[error("{msg}")]
    NoCommand { status: i32, msg: String },
}

/// 512M, 3.5G, 1536K: sizes the way the user typed them.
pub fn human(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit {
            let whole = bytes / unit;
            let tenths = (bytes % unit) * 10 / unit;
            return if tenths == 0 {
                format!("{whole}{name}")
            } else {
                format!("{whole}.{tenths}{name}")
            };
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512 << 20), "512M");
        assert_eq!(human(7 << 29), "3.5G");
        assert_eq!(human(1000), "1000");
    }

    #[test]
    fn memory_errors_are_one_line_and_actionable() {
        let e = Error::MemoryTooSmall {
            size: 1 << 20,
            min: 64 << 20,
        };
        assert_eq!(e.to_string(), "--mem 1M: a guest needs at least 64 MiB");
        let e = Error::MemoryTooLarge {
            size: 1 << 40,
            available: 24 << 30,
        };
        assert_eq!(
            e.to_string(),
            "--mem 1T: more than this host can give (24G)"
        );
    }
}
