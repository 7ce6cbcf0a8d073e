//! `uvm check`: what this host can do, and what to do about what it can't.

use std::fmt;
use std::path::Path;

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmFlavour {
    /// Intel VT-x: boots stock kernels.
    Vmx,
    /// AMD-V: boots stock kernels.
    Svm,
    /// `kvm_pvm`: KVM without hardware virtualisation, for PVM guest kernels only.
    Pvm,
    /// /dev/kvm exists but neither VMX nor SVM is visible.
    Unknown,
    /// No /dev/kvm.
    None,
}

impl fmt::Display for KvmFlavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvmFlavour::Vmx => "VMX (Intel VT-x)",
            KvmFlavour::Svm => "SVM (AMD-V)",
            KvmFlavour::Pvm => "PVM (kvm_pvm, no hardware virtualisation)",
            KvmFlavour::Unknown => "unknown (/dev/kvm without vmx/svm)",
            KvmFlavour::None => "none (no /dev/kvm)",
        })
    }
}

/// Reads the flavour from what the kernel exposes; `root` is "/" except in tests.
pub fn kvm_flavour_at(root: &Path) -> KvmFlavour {
    if root.join("sys/module/kvm_pvm").exists() {
        return KvmFlavour::Pvm;
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let has_kvm = root.join("dev/kvm").exists();
    match (has_kvm, flags.contains(&"vmx"), flags.contains(&"svm")) {
        (false, _, _) => KvmFlavour::None,
        (true, true, _) => KvmFlavour::Vmx,
        (true, _, true) => KvmFlavour::Svm,
        _ => KvmFlavour::Unknown,
    }
}

pub fn kvm_flavour() -> KvmFlavour {
    kvm_flavour_at(Path::new("/"))
}

const PVM_EXPLANATION: &str =
    "this host's /dev/kvm is PVM (kvm_pvm): it runs only PVM-enabled guest kernels \
and cannot boot a stock Linux kernel; run uvm on a VMX/SVM host, or inside the nested runner: \
tests/runner/kvm-runner -- uvm boot ...";

/// `uvm boot` refuses hosts that cannot run its guest, before KVM fails
/// obscurely halfway through the guest's boot.
pub fn ensure_can_boot_linux() -> Result<(), Error> {
    match kvm_flavour() {
        KvmFlavour::Vmx | KvmFlavour::Svm => Ok(()),
        KvmFlavour::Pvm => Err(Error::HostCannotBoot(PVM_EXPLANATION.into())),
        KvmFlavour::None => Err(Error::HostCannotBoot(
            "no /dev/kvm on this host: load kvm_intel or kvm_amd, or use tests/runner/kvm-runner"
                .into(),
        )),
        // Let KVM itself answer: some hosts hide the flags but work.
        KvmFlavour::Unknown => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    V2,
    Hybrid,
    V1,
    None,
}

pub fn cgroup_mode_from_mounts(mounts: &str) -> CgroupMode {
    let fstypes: Vec<(&str, &str)> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            Some((f.next()?, f.next()?))
        })
        .collect();
    let v2_root = fstypes
        .iter()
        .any(|(p, t)| *p == "/sys/fs/cgroup" && *t == "cgroup2");
    let v1 = fstypes.iter().any(|(_, t)| *t == "cgroup");
    let v2 = fstypes.iter().any(|(_, t)| *t == "cgroup2");
    match (v2_root, v1, v2) {
        (true, _, _) => CgroupMode::V2,
        (_, true, true) => CgroupMode::Hybrid,
        (_, true, false) => CgroupMode::V1,
        (_, false, true) => CgroupMode::V2,
        _ => CgroupMode::None,
    }
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

fn nested_runner() -> Option<std::path::PathBuf> {
    crate::guest_image::repo_file("tests/runner/kvm-runner").filter(|p| p.is_file())
}

/// Prints the report; returns whether `uvm boot` can run directly here.
pub fn report() -> bool {
    let flavour = kvm_flavour();
    let ok = |b: bool| if b { "yes" } else { "no" };
    println!("KVM:             {flavour}");
    let boots = matches!(flavour, KvmFlavour::Vmx | KvmFlavour::Svm);
    println!("boot Linux here: {}", ok(boots));
    let qemu = which("qemu-system-x86_64");
    let runner = nested_runner();
    println!(
        "nested runner:   {} (QEMU TCG with AMD SVM + NPT; qemu-system-x86_64 {}, runner {})",
        ok(qemu && runner.is_some()),
        if qemu {
            "found"
        } else {
            "missing: apt-get install qemu-system-x86"
        },
        runner.map_or("not found".into(), |p| p.display().to_string())
    );
    println!(
        "tun:             {}",
        ok(Path::new("/dev/net/tun").exists())
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let cg = cgroup_mode_from_mounts(&mounts);
    println!(
        "cgroups:         {}",
        match cg {
            CgroupMode::V2 => "v2 (unified)",
            CgroupMode::Hybrid => "v1 hybrid (v1 controllers, v2 mounted beside them)",
            CgroupMode::V1 => "v1",
            CgroupMode::None => "none mounted",
        }
    );
    let ns: Vec<String> = ["pid", "net", "mnt", "uts", "ipc", "user", "cgroup"]
        .iter()
        .map(|n| format!("{n}:{}", ok(Path::new("/proc/self/ns").join(n).exists())))
        .collect();
    println!("namespaces:      {}", ns.join(" "));
    println!();
    match flavour {
        KvmFlavour::Vmx | KvmFlavour::Svm => println!("uvm boot runs directly on this host."),
        KvmFlavour::Pvm => println!("uvm boot cannot run directly: {PVM_EXPLANATION}."),
        KvmFlavour::None => {
            println!("uvm boot cannot run: no KVM; the nested runner gives one (slowly).")
        }
        KvmFlavour::Unknown => {
            println!("uvm boot may run: KVM is present but its flavour is unclear.")
        }
    }
    println!(
        "containers here would use {}.",
        if cg == CgroupMode::V2 {
            "cgroup v2"
        } else {
            "cgroup v1 controllers"
        }
    );
    boots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(files: &[(&str, &str)]) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "uvm-check-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for (path, content) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        root
    }

    #[test]
    fn flavours() {
        let svm = fake_root(&[
            ("proc/cpuinfo", "flags\t\t: fpu svm sse\n"),
            ("dev/kvm", ""),
        ]);
        assert_eq!(kvm_flavour_at(&svm), KvmFlavour::Svm);
        let vmx = fake_root(&[("proc/cpuinfo", "flags\t\t: fpu vmx\n"), ("dev/kvm", "")]);
        assert_eq!(kvm_flavour_at(&vmx), KvmFlavour::Vmx);
        let pvm = fake_root(&[
            ("proc/cpuinfo", "flags\t\t: fpu\n"),
            ("dev/kvm", ""),
            ("sys/module/kvm_pvm/x", ""),
        ]);
        assert_eq!(kvm_flavour_at(&pvm), KvmFlavour::Pvm);
        let none = fake_root(&[("proc/cpuinfo", "flags\t\t: fpu svm\n")]);
        assert_eq!(kvm_flavour_at(&none), KvmFlavour::None);
        for r in [svm, vmx, pvm, none] {
            std::fs::remove_dir_all(r).unwrap();
        }
    }

    #[test]
    fn cgroup_modes() {
        let hybrid = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        assert_eq!(cgroup_mode_from_mounts(hybrid), CgroupMode::Hybrid);
        assert_eq!(
            cgroup_mode_from_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            CgroupMode::V2
        );
        assert_eq!(
            cgroup_mode_from_mounts("proc /proc proc rw 0 0\n"),
            CgroupMode::None
        );
    }

    #[test]
    fn this_host_is_reported_consistently() {
        // On these machines: PVM, and boot refuses with the explanation.
        if kvm_flavour() == KvmFlavour::Pvm {
            let e = ensure_can_boot_linux().unwrap_err().to_string();
            assert!(e.contains("PVM") && e.contains("kvm-runner"), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}
