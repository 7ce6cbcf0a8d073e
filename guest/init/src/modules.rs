//! Loading kernel modules in dependency order, from the kernel's own
//! `modules.dep`: the init does what modprobe would, with no modprobe.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::kmod::{finit_module, ModuleInitFlags};

use super::InitError;

/// Modules to load at boot, one name per line (written by the image build).
pub const LIST: &str = "/etc/uvm/modules";

/// A module's name as the kernel knows it: file stem, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// name -> (path relative to the modules dir, dependency names)
pub fn parse_modules_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(module_name).collect();
            Some((module_name(module), (module.trim().to_string(), deps)))
        })
        .collect()
}

/// Orders `wanted` and everything they need so that each module comes after
/// its dependencies, each once.
pub fn load_order(
    deps: &HashMap<String, (String, Vec<String>)>,
    wanted: &[String],
) -> Result<Vec<String>, InitError> {
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        done: &mut HashSet<String>,
        in_progress: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), InitError> {
        if done.contains(name) {
            return Ok(());
        }
        let Some((path, needs)) = deps.get(name) else {
            return Err(InitError::Module {
                name: name.to_string(),
                why: "not in modules.dep".into(),
            });
        };
        if !in_progress.insert(name.to_string()) {
            return Err(InitError::Module {
                name: name.to_string(),
                why: "circular dependency in modules.dep".into(),
            });
        }
        for d in needs {
            visit(d, deps, done, in_progress, order)?;
        }
        in_progress.remove(name);
        done.insert(name.to_string());
        order.push(path.clone());
        Ok(())
    }
    let (mut done, mut in_progress, mut order) = (HashSet::new(), HashSet::new(), vec![]);
    for w in wanted {
        visit(
            &module_name(w),
            deps,
            &mut done,
            &mut in_progress,
            &mut order,
        )?;
    }
    Ok(order)
}

fn modules_dir() -> Result<PathBuf, InitError> {
    let release = nix::sys::utsname::uname()
        .map_err(|e| InitError::Io("uname".into(), e.into()))?
        .release()
        .to_string_lossy()
        .into_owned();
    Ok(PathBuf::from("/lib/modules").join(release))
}

/// Loads every module named in `list` (absent list: nothing to do).
pub fn load_listed(list: &Path) -> Result<(), InitError> {
    let Ok(text) = std::fs::read_to_string(list) else {
        return Ok(());
    };
    let wanted: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let dir = modules_dir()?;
    let dep_text = std::fs::read_to_string(dir.join("modules.dep"))
        .map_err(|e| InitError::Io(format!("{}/modules.dep", dir.display()), e))?;
    let deps = parse_modules_dep(&dep_text);
    for rel in load_order(&deps, &wanted)? {
        let path = dir.join(&rel);
        let file = File::open(&path).map_err(|e| InitError::Io(path.display().to_string(), e))?;
        match finit_module(&file, &CString::default(), ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => {
                return Err(InitError::Module {
                    name: module_name(&rel),
                    why: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/misc/pvpanic/pvpanic-mmio.ko:
";

    #[test]
    fn dependencies_first_each_once() {
        let deps = parse_modules_dep(DEP);
        let order = load_order(
            &deps,
            &[
                "virtio_mmio".into(),
                "virtio_blk".into(),
                "pvpanic-mmio".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/misc/pvpanic/pvpanic-mmio.ko",
            ]
        );
    }

    #[test]
    fn unknown_and_circular_modules_are_errors() {
        let deps = parse_modules_dep(DEP);
        assert!(load_order(&deps, &["nope".into()]).is_err());
        let circular = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        assert!(load_order(&circular, &["a".into()]).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(module_name("kernel/x/pvpanic-mmio.ko"), "pvpanic_mmio");
        assert_eq!(module_name("kernel/x/foo.ko.xz"), "foo");
    }
}
