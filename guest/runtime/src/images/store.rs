//! The image store: each layer unpacked once, under its diff id, and one
//! small record per image naming its layers.
//!
//! ```text
//! STORE/lock                 flock: imports and removals one at a time
//! STORE/layers/HEX/          a layer's files (an overlay lower directory)
//! STORE/layers/HEX.json      its size
//! STORE/images/HEX.json      an image (HEX: its config's digest, the id)
//! STORE/tmp/                 layers being unpacked (emptied under the lock)
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::config::{self, ImageConfig, RunConfig};
use super::digest::Digest;
use super::image_error;
use super::import;
use super::source::Source;
use crate::error::{Error, Result};

/// Default store for root.
pub const DEFAULT_STORE: &str = "/var/lib/uvm/images";

/// `$UVM_IMAGE_STORE`, else [`DEFAULT_STORE`] for root, else
/// `$XDG_DATA_HOME/uvm/images` (or `~/.local/share/uvm/images`).
pub fn default_store() -> PathBuf {
    if let Some(s) = std::env::var_os("UVM_IMAGE_STORE").filter(|s| !s.is_empty()) {
        return PathBuf::from(s);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(DEFAULT_STORE);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    data.unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("uvm/images")
}

/// An image in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `sha256:HEX` of the image config.
    pub id: String,
    pub names: Vec<String>,
    /// Diff ids, bottom layer first.
    pub layers: Vec<String>,
    /// Seconds since the epoch.
    pub imported: u64,
    /// Bytes of file content in its layers.
    pub size: u64,
    /// The image config as imported.
    pub config: serde_json::Value,
}

/// What a container needs of an image.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: String,
    /// Layer directories, top first (overlayfs' lowerdir order).
    pub layers: Vec<PathBuf>,
    pub run: RunConfig,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct LayerInfo {
    size: u64,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn layer_dir(&self, diff: &Digest) -> PathBuf {
        self.root.join("layers").join(diff.hex())
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The store's lock, its directories made; an exclusive holder also
    /// empties `tmp` (what a killed import left).
    fn lock(&self, exclusive: bool) -> Result<Flock<fs::File>> {
        for d in ["layers", "images", "tmp"] {
            let p = self.root.join(d);
            fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        let path = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let arg = match exclusive {
            true => FlockArg::LockExclusive,
            false => FlockArg::LockShared,
        };
        let lock =
            Flock::lock(f, arg).map_err(|(_, e)| Error::sys("locking the image store", e))?;
        if exclusive {
            self.clear_tmp();
        }
        Ok(lock)
    }

    fn clear_tmp(&self) {
        if let Ok(rd) = fs::read_dir(self.tmp()) {
            for e in rd.flatten() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Every image, oldest import first.
    pub fn images(&self) -> Result<Vec<Record>> {
        let dir = self.root.join("images");
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let data =
                    fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                let r: Record = serde_json::from_slice(&data)
                    .map_err(|e| image_error(format!("{}: {e}", p.display())))?;
                out.push(r);
            }
        }
        out.sort_by(|a, b| (a.imported, &a.id).cmp(&(b.imported, &b.id)));
        Ok(out)
    }

    /// The image called `name` (`NAME[:TAG]`), or whose id is `name`
    /// (`sha256:HEX`, or a prefix of HEX of 6 digits or more).
    pub fn find(&self, name: &str) -> Result<Record> {
        let images = self.images()?;
        let norm = config::normalize_name(name);
        if let Some(r) = images.iter().find(|r| r.names.contains(&norm)) {
            return Ok(r.clone());
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let by_id: Vec<&Record> = images
            .iter()
            .filter(|r| hex.len() >= 6 && r.id.trim_start_matches("sha256:").starts_with(hex))
            .collect();
        match by_id[..] {
            [r] => Ok(r.clone()),
            [] => Err(image_error(format!(
                "no image {name:?} in {} (see `uvm image ls`)",
                self.root.display()
            ))),
            _ => Err(image_error(format!(
                "{name:?} names more than one image: give more of the id"
            ))),
        }
    }

    /// What a container of `name` runs on.
    pub fn resolve(&self, name: &str) -> Result<Resolved> {
        // A store that was never made has no images (and is not made here).
        let _lock = match self.root.join("lock").exists() {
            true => Some(self.lock(false)?),
            false => None,
        };
        let r = self.find(name)?;
        let config = serde_json::to_vec(&r.config).map_err(|e| image_error(e.to_string()))?;
        let run = ImageConfig::parse(&config)?.run_config();
        let mut layers = Vec::new();
        for l in r.layers.iter().rev() {
            let dir = self.layer_dir(&Digest::parse(l)?);
            if !dir.is_dir() {
                return Err(image_error(format!(
                    "image {name}: layer {l} is missing from the store (import the image again)"
                )));
            }
            layers.push(dir);
        }
        if layers.is_empty() {
            return Err(image_error(format!("image {name} has no layers")));
        }
        Ok(Resolved {
            id: r.id,
            layers,
            run,
        })
    }

    /// Imports every image of the layout or archive at `path`; `name`
    /// (`NAME[:TAG]`) names the one image it holds.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Record>> {
        let name = name
            .map(|n| match config::valid_name(n) {
                true => Ok(config::normalize_name(n)),
                false => Err(Error::invalid("--name", n, "expected NAME[:TAG]")),
            })
            .transpose()?;
        let src = Source::open(path)?;
        let mut pending = import::plan(&src)?;
        if pending.is_empty() {
            return Err(image_error(format!("{}: no image in it", path.display())));
        }
        if let Some(n) = name {
            if pending.len() != 1 {
                return Err(image_error(format!(
                    "{} holds {} images: --name names one",
                    path.display(),
                    pending.len()
                )));
            }
            pending[0].names = vec![n];
        }
        let _lock = self.lock(true)?;
        let r = pending
            .iter()
            .map(|p| self.add(&src, p))
            .collect::<Result<Vec<_>>>();
        if r.is_err() {
            // Layers this import committed before failing.
            let _ = self.sweep_layers();
            self.clear_tmp();
        }
        r
    }

    fn add(&self, src: &Source, p: &import::Pending) -> Result<Record> {
        let diffs = p.config.diff_ids()?;
        let mut size = 0;
        for (blob, diff) in p.layers.iter().zip(&diffs) {
            let dir = self.layer_dir(diff);
            let info = dir.with_extension("json");
            if dir.is_dir() {
                size += fs::read(&info)
                    .ok()
                    .and_then(|d| serde_json::from_slice::<LayerInfo>(&d).ok())
                    .map_or(0, |i| i.size);
                continue;
            }
            let tmp = self.tmp().join(diff.hex());
            let bytes = import::unpack_layer(src, blob, diff, &tmp)
                .map_err(|e| image_error(format!("layer {diff}: {e}")))?;
            let data = serde_json::to_vec(&LayerInfo { size: bytes }).unwrap_or_default();
            fs::write(&info, data)
                .map_err(|e| Error::io(format!("writing {}", info.display()), e))?;
            fs::rename(&tmp, &dir)
                .map_err(|e| Error::io(format!("storing {}", dir.display()), e))?;
            size += bytes;
        }
        let config: serde_json::Value =
            serde_json::from_slice(&p.config_json).map_err(|e| image_error(e.to_string()))?;
        // A name moves to the image imported last.
        for mut other in self.images()? {
            if other.id != p.id.to_string() && other.names.iter().any(|n| p.names.contains(n)) {
                other.names.retain(|n| !p.names.contains(n));
                self.write(&other)?;
            }
        }
        let mut names = self
            .images()?
            .into_iter()
            .find(|r| r.id == p.id.to_string())
            .map(|r| r.names)
            .unwrap_or_default();
        for n in &p.names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let rec = Record {
            id: p.id.to_string(),
            names,
            layers: diffs.iter().map(Digest::to_string).collect(),
            imported: crate::state::now(),
            size,
            config,
        };
        self.write(&rec)?;
        Ok(rec)
    }

    fn write(&self, r: &Record) -> Result<()> {
        let path = self.record_path(&Digest::parse(&r.id)?);
        let tmp = path.with_extension("tmp");
        let data = serde_json::to_vec_pretty(r).map_err(|e| image_error(e.to_string()))?;
        fs::write(&tmp, data)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Removes image `name` unless `in_use` names a container using it;
    /// its layers go unless another image has them. Returns the record
    /// and the layers removed.
    pub fn remove(
        &self,
        name: &str,
        in_use: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Record, Vec<String>)> {
        let _lock = self.lock(true)?;
        let r = self.find(name)?;
        if let Some(c) = in_use(&r.id) {
            return Err(image_error(format!(
                "image {name} is in use by container {c}: stop it first"
            )));
        }
        let path = self.record_path(&Digest::parse(&r.id)?);
        fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        let gone = self.sweep_layers()?;
        Ok((r, gone))
    }

    /// Removes the layers no image names.
    fn sweep_layers(&self) -> Result<Vec<String>> {
        let used: BTreeSet<String> = self
            .images()?
            .into_iter()
            .flat_map(|r| r.layers)
            .filter_map(|l| Digest::parse(&l).ok())
            .map(|d| d.hex().to_string())
            .collect();
        let mut gone = Vec::new();
        let dir = self.root.join("layers");
        for e in fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".json").unwrap_or(&name);
            if used.contains(hex) {
                continue;
            }
            let p = e.path();
            let is_dir = p.is_dir();
            let r = match is_dir {
                true => fs::remove_dir_all(&p),
                false => fs::remove_file(&p),
            };
            r.map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
            if is_dir {
                gone.push(format!("sha256:{hex}"));
            }
        }
        Ok(gone)
    }
}
