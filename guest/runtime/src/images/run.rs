//! `uvm container run --image`: the spec a container of an image starts
//! from. The image config's Env, Entrypoint + Cmd, WorkingDir and User are
//! defaults; `-e`, the command after `--`, `--workdir` and `--user` win
//! (the command replaces Cmd, not the Entrypoint, as with Docker).

use std::path::PathBuf;

use oci_spec::runtime::Spec;

use super::store::{default_store, Store};
use super::{image_error, ImageUse};
use crate::error::{Error, Result};
use crate::spec::{self, RunOptions};

/// Room for overlayfs' whole option string in the one page mount(2)
/// copies, with the upper and work directories.
const MAX_LOWERDIR: usize = 3072;

/// `KEY=VALUE` entries of `add` replace those of `env` with the same key.
fn merge_env(env: &mut Vec<String>, add: &[String]) {
    for e in add {
        let key = e.split('=').next().unwrap_or(e);
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
}

/// The default spec with image `image`'s config applied, the top layer
/// (the overlay's first lower dir) and what the container's state records.
pub fn image_spec(image: &str, opts: &RunOptions, name: &str) -> Result<(Spec, PathBuf, ImageUse)> {
    let r = Store::new(default_store()).resolve(image)?;
    let len: usize = r.layers.iter().map(|l| l.as_os_str().len() + 1).sum();
    if len > MAX_LOWERDIR {
        return Err(image_error(format!(
            "image {image}: its {} layers' paths ({len} bytes) do not fit in one overlay mount",
            r.layers.len()
        )));
    }
    let top = r.layers[0].clone();
    let mut spec = spec::default_spec();
    if let Some(root) = spec.root_mut() {
        root.set_path(top.clone());
        root.set_readonly(Some(false));
    }
    spec.set_hostname(Some(name.to_string()));
    let p = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| Error::Setup("spec has no process".into()))?;
    let args = r.run.command(&opts.args);
    p.set_args((!args.is_empty()).then_some(args));
    let mut env = p.env().clone().unwrap_or_default();
    merge_env(&mut env, r.run.env.as_deref().unwrap_or_default());
    p.set_env(Some(env));
    if let Some(w) = r.run.working_dir.as_deref().filter(|w| !w.is_empty()) {
        p.set_cwd(PathBuf::from("/").join(w));
    }
    if let Some(u) = r.run.user.as_deref().filter(|u| !u.is_empty()) {
        if opts.user.is_none() {
            let user = spec::parse_user(u, &r.layers)
                .map_err(|e| image_error(format!("image {image}: User {u:?}: {e}")))?;
            p.set_user(user);
        }
    }
    let used = ImageUse {
        id: r.id,
        lowers: r.layers[1..].to_vec(),
    };
    Ok((spec, top, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merge() {
        let mut env = vec!["PATH=/bin".to_string(), "TERM=xterm".to_string()];
        merge_env(&mut env, &["PATH=/usr/bin".into(), "A=1".into()]);
        assert_eq!(env, ["TERM=xterm", "PATH=/usr/bin", "A=1"]);
    }
}
