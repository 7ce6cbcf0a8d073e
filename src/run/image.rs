//! The images `uvm run` makes and keeps: the default busybox root folder,
//! and, for the vm levels, an ext4 image of a root folder (`mkfs.ext4 -d`,
//! no root or loop device needed), cached under a key taken from the
//! folder's tree (paths, types, modes, owners, sizes, mtimes, link
//! targets), so that a changed folder gets a new image.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;

/// Creates `dir` (and parents) and checks that files can be made in it.
pub fn ensure_writable(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::Cache(dir.to_path_buf(), e))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| Error::Cache(dir.to_path_buf(), e))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// A unique scratch name beside `path`, renamed onto it when complete, so
/// that a killed build never leaves a half-made image under the real name.
fn scratch(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(s)
}

/// The default root folder: busybox and its applets, built once with the
/// runtime's own image builder.
pub fn default_rootfs(cache: &Path) -> Result<PathBuf, Error> {
    let dir = cache.join("rootfs-busybox");
    if dir.join("bin/busybox").exists() {
        return Ok(dir);
    }
    ensure_writable(cache)?;
    eprintln!(
        "uvm run: building the default busybox root in {}",
        dir.display()
    );
    let tmp = scratch(&dir);
    let _ = fs::remove_dir_all(&tmp);
    uvm_runtime::image::build_rootfs(&tmp, None, &[])?;
    match fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another run finished first: its copy is as good.
        Err(_) if dir.join("bin/busybox").exists() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(Error::Cache(cache.to_path_buf(), e)),
    }
}

/// 64-bit FNV-1a: small, stable across builds (std's hasher is not).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        self.0 = self.0.wrapping_mul(0x100_0000_01b3) ^ 0xff;
    }
}

/// What a folder holds, summed up: its key and the bytes and inodes an
/// image of it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSummary {
    pub key: String,
    pub bytes: u64,
    pub inodes: u64,
}

/// Changes when the way images are made changes, so cached ones are remade.
const IMAGE_FORMAT: &[u8] = b"uvm-root-image-2";

/// Room the workload has to write in its root image (the file is sparse:
/// free space costs no host disk).
pub const WRITABLE_ROOM: u64 = 256 << 20;

pub fn summarize(root: &Path) -> Result<TreeSummary, Error> {
    let mut h = Fnv::new();
    h.write(IMAGE_FORMAT);
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let mut entries: Vec<_> = fs::read_dir(&path)
            .map_err(|e| {
                Error::RootImage(
                    root.to_path_buf(),
                    format!("reading {}: {e}", path.display()),
                )
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for name in entries {
            let rel = rel.join(&name);
            let p = root.join(&rel);
            let m = fs::symlink_metadata(&p).map_err(|e| {
                Error::RootImage(root.to_path_buf(), format!("{}: {e}", p.display()))
            })?;
            inodes += 1;
            h.write(rel.as_os_str().as_encoded_bytes());
            h.write(&m.mode().to_le_bytes());
            h.write(&m.uid().to_le_bytes());
            h.write(&m.gid().to_le_bytes());
            h.write(&m.size().to_le_bytes());
            h.write(&m.mtime().to_le_bytes());
            h.write(&m.mtime_nsec().to_le_bytes());
            if m.file_type().is_symlink() {
                if let Ok(t) = fs::read_link(&p) {
                    h.write(t.as_os_str().as_encoded_bytes());
                }
            } else if m.is_dir() {
                stack.push(rel);
            } else {
                bytes += m.size().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(TreeSummary {
        key: format!("{:016x}", h.0),
        bytes,
        inodes,
    })
}

/// Size of an ext4 image for a tree: its data, an inode each, the
/// filesystem's own metadata, and [`WRITABLE_ROOM`] for the workload.
pub fn image_size(s: &TreeSummary) -> u64 {
    let need = s.bytes + s.inodes * 512 + (16 << 20);
    (need + need / 2 + WRITABLE_ROOM).div_ceil(1 << 20) << 20
}

/// The ext4 image of `rootfs`, made if the cache has none for its tree.
pub fn root_image(rootfs: &Path, cache: &Path) -> Result<PathBuf, Error> {
    let summary = summarize(rootfs)?;
    let dir = cache.join("images");
    let img = dir.join(format!("{}.ext4", summary.key));
    if img.exists() {
        return Ok(img);
    }
    ensure_writable(&dir)?;
    let size = image_size(&summary);
    eprintln!(
        "uvm run: making the root image of {} ({} files, {} MiB) ...",
        rootfs.display(),
        summary.inodes,
        size >> 20
    );
    let tmp = scratch(&img);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "uvmroot", "-d"])
        .arg(rootfs)
        .arg(&tmp)
        .arg(format!("{}M", size >> 20))
        .output()
        .map_err(|e| {
            Error::RootImage(
                rootfs.to_path_buf(),
                format!("running mkfs.ext4 ({e}): apt-get install e2fsprogs"),
            )
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::RootImage(
            rootfs.to_path_buf(),
            format!(
                "mkfs.ext4 failed: {}",
                err.lines().last().unwrap_or("").trim()
            ),
        ));
    }
    fs::rename(&tmp, &img).map_err(|e| Error::Cache(dir.clone(), e))?;
    eprintln!("uvm run: root image ready: {}", img.display());
    Ok(img)
}

/// A private, sparse copy of `img` for one VM, so that the cached image
/// stays as it was made.
pub fn private_copy(img: &Path, to: &Path) -> Result<(), Error> {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg("--reflink=auto")
        .arg(img)
        .arg(to)
        .status()
        .map_err(|e| Error::Io(format!("copying {}", img.display()), e))?;
    if !st.success() {
        return Err(Error::Io(
            format!("copying {} to {}", img.display(), to.display()),
            std::io::Error::other("cp failed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("uvm-image-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_key_follows_the_tree() {
        let d = tmpdir("key");
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(d.join("etc/a"), b"one").unwrap();
        let a = summarize(&d).unwrap();
        assert_eq!(a, summarize(&d).unwrap(), "stable");
        assert_eq!(a.inodes, 2);
        fs::write(d.join("etc/a"), b"three").unwrap();
        let b = summarize(&d).unwrap();
        assert_ne!(a.key, b.key, "a changed file changes the key");
        std::os::unix::fs::symlink("a", d.join("etc/l")).unwrap();
        let c = summarize(&d).unwrap();
        assert_ne!(b.key, c.key, "a new link changes the key");
        assert!(image_size(&c) >= WRITABLE_ROOM + (16 << 20));
        let _ = fs::remove_dir_all(&d);
        assert!(summarize(&d).is_err());
    }

    #[test]
    fn an_unwritable_cache_is_a_clear_error() {
        let e = ensure_writable(Path::new("/proc/uvm-cache")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("not writable") && s.contains("--cache-dir"),
            "{s}"
        );
    }
}
