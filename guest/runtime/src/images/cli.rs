//! `uvm image ...` (also `uvm container image ...`, and `uvm-container
//! image ...` in a guest).

use std::path::{Path, PathBuf};

use super::store::{default_store, Record, Store};
use crate::error::{Result, EXIT_RUNTIME_ERROR};
use crate::state::{self, Paths};

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Image store [default: $UVM_IMAGE_STORE, else /var/lib/uvm/images as
    /// root, else $XDG_DATA_HOME/uvm/images]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout or `docker save` output (a directory or
    /// an uncompressed tar); each layer is verified and unpacked once.
    Import {
        /// The layout directory or archive.
        path: PathBuf,
        /// Name the (single) image NAME[:TAG] instead of the names it carries.
        #[arg(long, value_name = "NAME[:TAG]")]
        name: Option<String>,
    },
    /// List images.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove images (refused while a container of this runtime uses
    /// one); layers no other image has go with them.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// An image's record and config, as JSON.
    Inspect { name: String },
}

fn human(bytes: u64) -> String {
    crate::limits::human_bytes(bytes)
}

fn print_table(images: &[Record]) {
    println!(
        "{:<32} {:<12} {:>6} {:>10} IMPORTED",
        "NAME", "ID", "LAYERS", "SIZE"
    );
    for r in images {
        let id = r.id.trim_start_matches("sha256:");
        let names = match r.names.is_empty() {
            true => vec!["<none>".to_string()],
            false => r.names.clone(),
        };
        for n in names {
            println!(
                "{:<32} {:<12} {:>6} {:>10} {}",
                n,
                &id[..12.min(id.len())],
                r.layers.len(),
                human(r.size),
                r.imported
            );
        }
    }
}

fn dispatch(args: ImageArgs, containers: &Paths) -> Result<i32> {
    let store = Store::new(args.store.unwrap_or_else(default_store));
    if matches!(
        args.command,
        ImageCommand::Ls { .. } | ImageCommand::Inspect { .. }
    ) {
        crate::quiet_on_closed_stdout();
    }
    match args.command {
        ImageCommand::Import { path, name } => {
            for r in store.import(&path, name.as_deref())? {
                let names = r.names.join(", ");
                println!("imported {} {names}", r.id);
            }
        }
        ImageCommand::Ls { json } => {
            let images = store.images()?;
            match json {
                true => println!("{}", serde_json::to_string(&images).unwrap_or_default()),
                false => print_table(&images),
            }
        }
        ImageCommand::Rm { names } => {
            let in_use = |id: &str| in_use_by(containers, id);
            for n in names {
                let (r, layers) = store.remove(&n, &in_use)?;
                println!("removed {} ({} layers freed)", r.id, layers.len());
            }
        }
        ImageCommand::Inspect { name } => {
            let r = store.find(&name)?;
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            let dirs: Vec<String> = r
                .layers
                .iter()
                .filter_map(|l| super::digest::Digest::parse(l).ok())
                .map(|d| store.layer_dir(&d).display().to_string())
                .collect();
            v["layer_dirs"] = serde_json::Value::from(dirs);
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
    }
    Ok(0)
}

/// The container of the runtime at `containers` that runs on image `id`.
fn in_use_by(containers: &Paths, id: &str) -> Option<String> {
    state::list(containers)
        .into_iter()
        .filter_map(|(_, s)| s.ok())
        .find(|s| {
            s.image.as_ref().is_some_and(|i| i.id == id) && (s.runtime_alive() || s.running())
        })
        .map(|s| s.name)
}

/// Runs a `uvm image` command; `containers` is the container state root
/// whose containers hold images in use. Errors are one line, status 125.
pub fn main(args: ImageArgs, containers: Option<&Path>) -> i32 {
    let paths = Paths::new(containers.map_or_else(state::default_root, Path::to_path_buf));
    match dispatch(args, &paths) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uvm image: {e}");
            EXIT_RUNTIME_ERROR
        }
    }
}
