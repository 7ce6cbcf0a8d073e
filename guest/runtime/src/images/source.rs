//! What `uvm image import` reads from: an OCI layout or `docker save`
//! output, as a directory or as an (uncompressed) tar file. A tar file is
//! indexed once and its members are read in place, never extracted, so a
//! member's path cannot write anything; a path leaving the archive's root
//! (`..`, or a symlink to one) is refused all the same.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::image_error;
use super::layer::clean_path;
use crate::error::{Error, Result};

/// The largest JSON document (index, manifest, config) read into memory.
const MAX_JSON: u64 = 16 << 20;

enum Member {
    File { offset: u64, size: u64 },
    Link(PathBuf),
}

/// An image layout directory or an indexed archive.
pub struct Source(Kind);

enum Kind {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        members: HashMap<PathBuf, Member>,
    },
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        let meta = path
            .metadata()
            .map_err(|e| Error::io(format!("{}", path.display()), e))?;
        if meta.is_dir() {
            let dir = path
                .canonicalize()
                .map_err(|e| Error::io(format!("{}", path.display()), e))?;
            return Ok(Source(Kind::Dir(dir)));
        }
        let f = File::open(path).map_err(|e| Error::io(format!("{}", path.display()), e))?;
        // The tar crate's message quotes the bad header's bytes: not useful.
        let not_tar = |_: std::io::Error| {
            image_error(format!(
                "{}: not a tar archive or an image layout directory",
                path.display()
            ))
        };
        let mut ar = tar::Archive::new(f);
        let mut members = HashMap::new();
        for entry in ar.entries().map_err(not_tar)? {
            let entry = entry.map_err(not_tar)?;
            let Some(rel) = clean_path(&entry.path().map_err(not_tar)?)? else {
                continue;
            };
            let kind = entry.header().entry_type();
            let m = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let to = entry.link_name().map_err(not_tar)?.unwrap_or_default();
                let to = match kind.is_symlink() {
                    true => rel.parent().unwrap_or(Path::new("")).join(to),
                    false => to.into_owned(),
                };
                Member::Link(to)
            } else {
                continue;
            };
            members.insert(rel, m);
        }
        if members.is_empty() {
            return Err(image_error(format!(
                "{}: not a tar archive or an image layout directory (no files in it)",
                path.display()
            )));
        }
        Ok(Source(Kind::Tar {
            path: path.to_path_buf(),
            members,
        }))
    }

    pub fn exists(&self, rel: &str) -> bool {
        match &self.0 {
            Kind::Dir(d) => d.join(rel).exists(),
            Kind::Tar { members, .. } => members.contains_key(Path::new(rel)),
        }
    }

    /// A member's contents and size.
    pub fn reader(&self, rel: &str) -> Result<(Box<dyn Read>, u64)> {
        let missing = || image_error(format!("{rel} is missing from the image"));
        match &self.0 {
            Kind::Dir(dir) => {
                let p = dir.join(rel);
                let real = p.canonicalize().map_err(|_| missing())?;
                if !real.starts_with(dir) {
                    return Err(image_error(format!(
                        "{rel} leads out of the layout directory"
                    )));
                }
                let f = File::open(&real).map_err(|e| Error::io(format!("{}", p.display()), e))?;
                let size = f
                    .metadata()
                    .map_err(|e| Error::io(format!("{}", p.display()), e))?
                    .len();
                Ok((Box::new(f), size))
            }
            Kind::Tar { path, members } => {
                let mut at = clean_path(Path::new(rel))?.ok_or_else(missing)?;
                for _ in 0..16 {
                    match members.get(&at).ok_or_else(missing)? {
                        Member::File { offset, size } => {
                            let mut f = File::open(path)
                                .map_err(|e| Error::io(format!("{}", path.display()), e))?;
                            f.seek(SeekFrom::Start(*offset))
                                .map_err(|e| Error::io(format!("{}", path.display()), e))?;
                            return Ok((Box::new(f.take(*size)), *size));
                        }
                        Member::Link(to) => {
                            at = normalize(to).ok_or_else(|| {
                                image_error(format!("{rel} links out of the archive"))
                            })?
                        }
                    }
                }
                Err(image_error(format!("{rel}: too many levels of links")))
            }
        }
    }

    /// A JSON member, whole.
    pub fn read_json(&self, rel: &str) -> Result<Vec<u8>> {
        let (r, size) = self.reader(rel)?;
        if size > MAX_JSON {
            return Err(image_error(format!("{rel}: {size} bytes is too large")));
        }
        let mut data = Vec::new();
        r.take(MAX_JSON)
            .read_to_end(&mut data)
            .map_err(|e| Error::io(format!("reading {rel}"), e))?;
        Ok(data)
    }
}

/// `a/./b/../c` as `a/c`; `None` if it climbs above the root.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            // The guard pops: `..` climbs one level, or out of the root.
            Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        assert_eq!(
            normalize(Path::new("a/../b/./c")),
            Some(PathBuf::from("b/c"))
        );
        assert_eq!(normalize(Path::new("a/../../etc")), None);
    }
}
