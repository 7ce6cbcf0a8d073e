//! Building a minimal root filesystem: busybox (with a link per applet) and
//! chosen host binaries with the shared libraries and ELF interpreter they
//! need, found by reading their ELF headers (no `ldd`, which runs the binary's
//! loader).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{Error, Result};

/// Where the loader looks for libraries (Debian multiarch first).
const LIB_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What an ELF file needs at run time.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfDeps {
    pub interpreter: Option<PathBuf>,
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn usize_at(b: &[u8], o: usize) -> Option<usize> {
    usize::try_from(u64_at(b, o)?).ok()
}
fn cstr_at(b: &[u8], o: usize) -> Option<String> {
    let s = b.get(o..)?;
    let end = s.iter().position(|c| *c == 0)?;
    String::from_utf8(s[..end].to_vec()).ok()
}

/// Reads the interpreter, DT_NEEDED and DT_RUNPATH/DT_RPATH of a 64-bit
/// little-endian ELF image. `None` if it is not one.
pub fn elf_deps(b: &[u8]) -> Option<ElfDeps> {
    if b.get(0..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let phoff = usize_at(b, 0x20)?;
    let phentsize = usize::from(u16_at(b, 0x36)?);
    let phnum = usize::from(u16_at(b, 0x38)?);
    let mut deps = ElfDeps::default();
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let typ = u32_at(b, ph)?;
        let offset = usize_at(b, ph + 8)?;
        let vaddr = u64_at(b, ph + 16)?;
        let filesz = usize_at(b, ph + 32)?;
        match typ {
            1 => loads.push((vaddr, offset, filesz)),
            2 => dynamic = Some((offset, filesz)),
            3 => deps.interpreter = cstr_at(b, offset).map(PathBuf::from),
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Some(deps);
    };
    let to_offset = |addr: u64| {
        loads.iter().find_map(|(va, off, sz)| {
            let rel = usize::try_from(addr.checked_sub(*va)?).ok()?;
            (rel < *sz).then_some(off + rel)
        })
    };
    let mut strtab = None;
    let mut needed = Vec::new();
    let mut runpath = Vec::new();
    let mut o = dyn_off;
    while o + 16 <= dyn_off + dyn_size {
        let tag = u64_at(b, o)?;
        let val = u64_at(b, o + 8)?;
        match tag {
            0 => break,
            1 => needed.push(val),
            5 => strtab = to_offset(val),
            15 | 29 => runpath.push(val),
            _ => {}
        }
        o += 16;
    }
    let strtab = strtab?;
    let name = |v: u64| cstr_at(b, strtab + usize::try_from(v).ok()?);
    deps.needed = needed.into_iter().filter_map(name).collect();
    deps.runpath = runpath
        .into_iter()
        .filter_map(name)
        .flat_map(|r| r.split(':').map(str::to_string).collect::<Vec<_>>())
        .collect();
    Some(deps)
}

/// The host files `binary` needs (itself, its interpreter, its libraries,
/// transitively).
pub fn closure(binary: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut todo = vec![binary.to_path_buf()];
    while let Some(file) = todo.pop() {
        if !out.insert(file.clone()) {
            continue;
        }
        let data =
            fs::read(&file).map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
        let Some(deps) = elf_deps(&data) else {
            continue; // a script or data file
        };
        if let Some(i) = deps.interpreter {
            todo.push(i);
        }
        let origin = file.parent().map(Path::to_path_buf).unwrap_or_default();
        for lib in deps.needed {
            let dirs = deps
                .runpath
                .iter()
                .map(|r| PathBuf::from(r.replace("$ORIGIN", &origin.display().to_string())))
                .chain(LIB_DIRS.iter().map(PathBuf::from));
            let found = dirs
                .map(|d| d.join(&lib))
                .find(|p| p.exists())
                .ok_or_else(|| {
                    Error::Setup(format!(
                        "{} needs {lib}, which is not in {}",
                        file.display(),
                        LIB_DIRS.join(", ")
                    ))
                })?;
            todo.push(found);
        }
    }
    Ok(out)
}

fn copy_into(root: &Path, host: &Path) -> Result<PathBuf> {
    let rel = host.strip_prefix("/").unwrap_or(host);
    let dest = root.join(rel);
    if let Some(p) = dest.parent() {
        fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    }
    let _ = fs::remove_file(&dest);
    fs::copy(host, &dest).map_err(|e| {
        Error::io(
            format!("copying {} to {}", host.display(), dest.display()),
            e,
        )
    })?;
    Ok(dest)
}

fn find_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Builds (or refreshes) a rootfs in `dir`: busybox with its applets, the
/// `with` binaries and their libraries, base directories and /etc files.
/// Returns the files copied from the host.
pub fn build_rootfs(dir: &Path, busybox: Option<&Path>, with: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let busybox = match busybox {
        Some(b) => b.to_path_buf(),
        None => find_busybox().ok_or_else(|| {
            Error::Setup("busybox not found: install busybox-static (apt-get install busybox-static) or pass --busybox".into())
        })?,
    };
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root",
        "var/tmp", "run", "home",
    ] {
        fs::create_dir_all(dir.join(d))
            .map_err(|e| Error::io(format!("creating {}", dir.join(d).display()), e))?;
    }
    for (d, mode) in [("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700)] {
        let _ = fs::set_permissions(dir.join(d), fs::Permissions::from_mode(mode));
    }
    let mut copied = Vec::new();
    for f in closure(&busybox)? {
        let dest = if f == busybox {
            let d = dir.join("bin/busybox");
            let _ = fs::remove_file(&d);
            fs::copy(&f, &d).map_err(|e| Error::io(format!("copying {}", f.display()), e))?;
            d
        } else {
            copy_into(dir, &f)?
        };
        copied.push(dest);
    }
    let out = Command::new(&busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| Error::io(format!("running {} --list-full", busybox.display()), e))?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = dir.join(applet);
        if link.symlink_metadata().is_ok() || applet == "bin/busybox" {
            continue;
        }
        if let Some(p) = link.parent() {
            let _ = fs::create_dir_all(p);
        }
        let _ = symlink("/bin/busybox", &link);
    }
    for bin in with {
        let host = if bin.is_absolute() {
            bin.clone()
        } else {
            which(bin)
                .ok_or_else(|| Error::Setup(format!("{} not found in PATH", bin.display())))?
        };
        for f in closure(&host)? {
            copied.push(copy_into(dir, &f)?);
        }
    }
    let etc = |name: &str, text: &str| -> Result<()> {
        let p = dir.join("etc").join(name);
        if p.exists() {
            return Ok(());
        }
        fs::write(&p, text).map_err(|e| Error::io(format!("writing {}", p.display()), e))
    };
    etc(
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    etc("group", "root:x:0:\nnogroup:x:65534:\n")?;
    etc("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")?;
    etc("resolv.conf", "")?;
    Ok(copied)
}

fn which(name: &Path) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_of_a_dynamic_binary() {
        let data = fs::read("/bin/ls").unwrap();
        let d = elf_deps(&data).unwrap();
        assert!(d
            .interpreter
            .unwrap()
            .to_string_lossy()
            .contains("ld-linux"));
        assert!(
            d.needed.iter().any(|n| n.starts_with("libc.so")),
            "{:?}",
            d.needed
        );
        let c = closure(Path::new("/bin/ls")).unwrap();
        assert!(c.iter().any(|p| p.to_string_lossy().contains("libc.so")));
        assert!(elf_deps(b"#!/bin/sh\n").is_none());
    }

    #[test]
    fn static_busybox_has_no_deps() {
        let Some(bb) = find_busybox() else {
            return;
        };
        let c = closure(&bb).unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
    }
}
