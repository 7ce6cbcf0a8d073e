//! Unpacking one layer (a tar stream) into its own directory of the store,
//! as overlayfs wants a lower layer: a whiteout `.wh.NAME` becomes a 0/0
//! character device NAME, an opaque marker `.wh..wh..opq` the
//! `trusted.overlay.opaque=y` xattr on its directory (and its
//! `user.overlay.opaque` twin, for overlays mounted with `userxattr`). Nothing is written
//! outside `dest`: a path with `..`, or one that would pass through a
//! symlink (a link to `/etc` followed by `link/passwd`), is refused.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::image_error;
use crate::error::{Error, Result};

/// Prefix of a whiteout entry's name.
const WHITEOUT: &str = ".wh.";
/// The entry that makes its directory opaque.
const OPAQUE: &str = ".wh..wh..opq";

/// `rel` made relative (a leading `/` or `./` dropped), refused if any
/// component is `..`. `None` for the archive's root itself.
pub fn clean_path(rel: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(image_error(format!(
                    "entry {} leaves the archive's root ('..')",
                    rel.display()
                )))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Makes the directories above `rel` in `dest` (0755), refusing to go
/// through anything that is not a real directory.
fn parent_dirs(dest: &Path, rel: &Path) -> Result<()> {
    let mut p = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        p.push(c);
        match p.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(image_error(format!(
                    "entry {} goes through {}, which is not a directory (a symlink would lead out of the layer)",
                    rel.display(),
                    p.strip_prefix(dest).unwrap_or(&p).display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?,
            Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }
    Ok(())
}

/// Removes what is at `p` (a later entry replaces an earlier one), unless
/// both are directories.
fn clear(p: &Path, keep_dir: bool) -> Result<()> {
    let r = match p.symlink_metadata() {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() && keep_dir => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
    };
    r.map_err(|e| Error::io(format!("replacing {}", p.display()), e))
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<()> {
    let path = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| image_error(format!("{}: NUL in path", p.display())))?;
    let key = CString::new(name).map_err(|_| image_error(format!("xattr {name:?}: NUL")))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // value pointer and length describe a live slice.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(Error::io(
            format!("setting {name} on {}", p.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn mknod_at(p: &Path, kind: SFlag, mode: u32, major: u64, minor: u64) -> Result<()> {
    mknod(
        p,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        nix::sys::stat::makedev(major, minor),
    )
    .map_err(|e| Error::sys(format!("creating {}", p.display()), e))
}

/// Extended attributes a layer may carry. `trusted.overlay.*` would steer
/// overlayfs itself (redirects, metacopy, opaque), and the rest of
/// `trusted.*` and `security.*` (SELinux labels) are the host's business:
/// only file capabilities and `user.*` are kept.
fn xattr_allowed(key: &str) -> bool {
    key == "security.capability" || key.starts_with("user.")
}

/// What [`unpack`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    pub opaque: u64,
}

/// Unpacks the tar stream `r` into `dest` (an empty directory).
pub fn unpack(r: impl Read, dest: &Path) -> Result<Unpacked> {
    let mut ar = tar::Archive::new(r);
    let mut n = Unpacked::default();
    let bad = |e: io::Error| image_error(format!("not a valid tar stream: {e}"));
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let Some(rel) = clean_path(&raw)? else {
            continue;
        };
        parent_dirs(dest, &rel)?;
        let target = dest.join(&rel);
        let name = rel.file_name().map(|f| f.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        if name == OPAQUE {
            // The directory itself (dest or a made parent) exists by now.
            let dir = target.parent().unwrap_or(dest);
            // The user.* twin is what an overlay mounted with `userxattr`
            // (a container with --userns) reads.
            set_xattr(dir, "trusted.overlay.opaque", b"y")?;
            set_xattr(dir, "user.overlay.opaque", b"y")?;
            n.opaque += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.starts_with(WHITEOUT) {
                continue; // aufs' other metadata (.wh..wh.plnk, ...)
            }
            let p = target.with_file_name(hidden);
            clear(&p, false)?;
            mknod_at(&p, SFlag::S_IFCHR, 0, 0, 0)?;
            n.whiteouts += 1;
            continue;
        }
        let h = entry.header();
        let kind = h.entry_type();
        let mode = h.mode().map_err(bad)?;
        let (uid, gid) = (h.uid().map_err(bad)?, h.gid().map_err(bad)?);
        let mtime = h.mtime().map_err(bad)?;
        clear(&target, kind.is_dir())?;
        let made = |e: io::Error| Error::io(format!("creating {}", target.display()), e);
        match kind {
            tar::EntryType::Directory => {
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(made)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(made)?;
                n.bytes += io::copy(&mut entry, &mut f).map_err(made)?;
            }
            tar::EntryType::Symlink => {
                let to = entry.link_name().map_err(bad)?.ok_or_else(|| {
                    image_error(format!("symlink {} has no target", rel.display()))
                })?;
                std::os::unix::fs::symlink(&to, &target).map_err(made)?;
            }
            tar::EntryType::Link => {
                let to = entry.link_name().map_err(bad)?.ok_or_else(|| {
                    image_error(format!("hard link {} has no target", rel.display()))
                })?;
                let Some(to) = clean_path(&to)? else {
                    return Err(image_error(format!(
                        "hard link {} to the root",
                        rel.display()
                    )));
                };
                parent_dirs(dest, &to)?;
                fs::hard_link(dest.join(&to), &target).map_err(|e| {
                    image_error(format!(
                        "hard link {} to {}: {e}",
                        rel.display(),
                        to.display()
                    ))
                })?;
                n.files += 1;
                continue; // shares the target's inode and metadata
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let k = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = h.device_major().map_err(bad)?.unwrap_or(0);
                let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
                mknod_at(&target, k, mode, major.into(), minor.into())?;
            }
            // pax/GNU headers are folded into the next entry by the tar
            // crate; anything else (sparse files, volume labels) is refused
            // rather than half-unpacked.
            tar::EntryType::XGlobalHeader => continue,
            other => {
                return Err(image_error(format!(
                    "entry {}: unsupported tar entry type {other:?}",
                    rel.display()
                )))
            }
        }
        let owner = |e: io::Error| Error::io(format!("setting owner of {}", target.display()), e);
        let uid = u32::try_from(uid).map_err(|_| image_error(format!("uid {uid} too large")))?;
        let gid = u32::try_from(gid).map_err(|_| image_error(format!("gid {gid} too large")))?;
        std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(owner)?;
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                let key = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr."));
                if let Some(key) = key.filter(|k| xattr_allowed(k)) {
                    set_xattr(&target, key, ext.value_bytes())?;
                }
            }
        }
        if !kind.is_symlink() {
            // After chown, which clears setuid bits.
            fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(owner)?;
        }
        let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
        let _ = utimensat(None, &target, &t, &t, UtimensatFlags::NoFollowSymlink);
        n.files += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            clean_path(Path::new("./a/b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(
            clean_path(Path::new("/etc/x")).unwrap(),
            Some(PathBuf::from("etc/x"))
        );
        assert_eq!(clean_path(Path::new("./")).unwrap(), None);
        assert!(xattr_allowed("security.capability") && xattr_allowed("user.x"));
        assert!(!xattr_allowed("trusted.overlay.redirect") && !xattr_allowed("security.selinux"));
        for bad in ["../x", "a/../../x", "a/.."] {
            let e = clean_path(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains("leaves the archive's root"), "{e}");
        }
    }
}
