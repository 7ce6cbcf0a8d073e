//! Container images: `uvm image import` of an OCI image layout or a
//! `docker save` archive into a store where each layer is unpacked once
//! ([`store`]), and what `uvm container run --image` takes from it: the
//! layers as overlay lower directories, the config's defaults.
//!
//! - [`source`]: reading a layout directory or archive (never extracting it);
//! - [`config`]: indexes, manifests and image configs;
//! - [`import`]: verifying documents and blobs against their digests;
//! - [`layer`]: unpacking a layer safely, whiteouts as overlayfs wants them;
//! - [`store`]: layers, records, names, removal;
//! - [`run`]: an image's config as a container's spec;
//! - [`cli`]: `uvm image ...`.

pub mod cli;
pub mod config;
pub mod digest;
pub mod import;
pub mod layer;
pub mod run;
pub mod source;
pub mod store;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;

pub use store::{default_store, Store};

/// An image a container runs on, as its state records it: `uvm image rm`
/// refuses an image a running container uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUse {
    /// The image's id (`sha256:...`).
    pub id: String,
    /// Layer directories below the top one (the rootfs), top first.
    pub lowers: Vec<PathBuf>,
}

/// An image error, kept to one line (tar errors quote header bytes).
pub(crate) fn image_error(msg: impl Into<String>) -> Error {
    Error::Image(msg.into().replace(|c: char| c.is_control(), " "))
}
