//! What `uvm oci state` prints and hooks read: a container's OCI state.
//! The runtime's own state (`state.json`) knows the processes and cgroup;
//! `oci.json` beside it adds what only OCI callers care about.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{Paths, State};

/// What `create` records beside the runtime's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// RFC 3339, UTC.
    pub created: String,
}

const META: &str = "oci.json";

impl Meta {
    pub fn save(&self, dir: &Path) -> Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(|e| Error::Setup(e.to_string()))?;
        let path = dir.join(META);
        fs::write(&path, data).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    pub fn load(dir: &Path) -> Option<Meta> {
        serde_json::from_slice(&fs::read(dir.join(META)).ok()?).ok()
    }
}

/// A container's status as the OCI spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

/// The spec's state (hooks get it on stdin) plus runc's extra fields
/// (`state` prints them all).
#[derive(Debug, Clone, Serialize)]
pub struct OciState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// 0 once stopped (as runc).
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The status of `st`: created while PID 1 waits at its gate.
pub fn status(paths: &Paths, st: &State, meta: Option<&Meta>) -> Status {
    if meta.is_none() {
        return Status::Creating;
    }
    if !st.running() {
        return Status::Stopped;
    }
    if st.gate(paths).exists() {
        Status::Created
    } else if st.paused() {
        Status::Paused
    } else {
        Status::Running
    }
}

impl OciState {
    /// The state of `st` now (`status` overrides it for hooks run at a
    /// given point of the life cycle).
    pub fn of(paths: &Paths, st: &State, status_now: Option<Status>) -> OciState {
        let meta = Meta::load(&st.dir(paths));
        let status = status_now.unwrap_or_else(|| status(paths, st, meta.as_ref()));
        let meta = meta.unwrap_or(Meta {
            bundle: PathBuf::new(),
            annotations: HashMap::new(),
            created: String::new(),
        });
        OciState {
            oci_version: super::OCI_VERSION.into(),
            id: st.name.clone(),
            status,
            pid: match status {
                Status::Stopped => 0,
                _ => st.pid.unwrap_or(0),
            },
            bundle: meta.bundle,
            annotations: meta.annotations,
            rootfs: Some(st.rootfs.clone()),
            created: Some(meta.created),
            owner: Some(String::new()),
        }
    }

    /// The spec's fields only, as JSON (what hooks read).
    pub fn for_hooks(&self) -> Vec<u8> {
        let mut s = self.clone();
        s.rootfs = None;
        s.created = None;
        s.owner = None;
        serde_json::to_vec(&s).unwrap_or_default()
    }
}

/// `secs` since the epoch as RFC 3339 UTC (`2026-12-07T11:22:33Z`), with
/// `nanos` as a fraction when non-zero.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = match nanos {
        0 => String::new(),
        n => format!(".{n:09}"),
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now, as [`rfc3339`].
pub fn now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_642_553, 5), "2026-12-07T11:22:33.000000005Z");
    }
}
