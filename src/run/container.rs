//! The container level: uvm's own runtime on the host. The same argument
//! list also runs the workload at the vm+container level, where the
//! guest's `uvm-container` takes it, so both levels get one translation.

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::{image, wait_with_timeout, WorkloadSpec};
use crate::error::Error;

/// `run ...` arguments of the container runtime for `spec` on `rootfs`.
pub fn runtime_args(spec: &WorkloadSpec, rootfs: &str) -> Vec<String> {
    runtime_args_from(spec, "--rootfs", rootfs)
}

/// The same on `source`, a `--rootfs DIR` or an `--image NAME`.
fn runtime_args_from(spec: &WorkloadSpec, flag: &str, source: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), flag.into(), source.into()];
    let mut push = |flag: &str, v: String| {
        a.push(flag.into());
        a.push(v);
    };
    push("--name", spec.name.clone());
    push(
        "--hostname",
        spec.hostname.clone().unwrap_or_else(|| spec.name.clone()),
    );
    push(
        "--net",
        if spec.bridged() { "bridge" } else { "none" }.into(),
    );
    for e in &spec.env {
        push("-e", e.clone());
    }
    if let Some(w) = &spec.workdir {
        push("--workdir", w.clone());
    }
    if let Some((u, g)) = spec.user {
        push("--user", format!("{u}:{g}"));
    }
    if let Some(m) = spec.memory {
        push("--memory", m.to_string());
    }
    if let Some((c, _)) = &spec.cpus {
        push("--cpus", c.clone());
    }
    if let Some(p) = spec.pids_limit {
        push("--pids-limit", p.to_string());
    }
    for p in &spec.publish {
        push("-p", p.clone());
    }
    for v in &spec.volumes {
        push("-v", v.clone());
    }
    a.push("--".into());
    a.extend(spec.argv.iter().cloned());
    a
}

pub fn run(spec: &WorkloadSpec) -> Result<i32, Error> {
    let args = match (&spec.image, &spec.rootfs) {
        (Some(i), _) => runtime_args_from(spec, "--image", i),
        (None, Some(r)) => runtime_args(spec, &r.to_string_lossy()),
        (None, None) => runtime_args(
            spec,
            &image::default_rootfs(&spec.cache_dir)?.to_string_lossy(),
        ),
    };
    let me =
        std::env::current_exe().map_err(|e| Error::Io("finding uvm's own binary".into(), e))?;
    let mut cmd = Command::new(&me);
    cmd.arg("container").args(args);
    // SAFETY: the closure runs in the forked child before exec and makes
    // one prctl(2) call, which is async-signal-safe; it allocates nothing.
    unsafe {
        // If uvm itself is killed, its runtime goes too, so that `uvm gc`
        // finds a container without a runtime and removes it.
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Io(format!("starting {}", me.display()), e))?;
    let name = spec.name.clone();
    // The runtime cleans up after its container: kill the container and
    // let the runtime see it die.
    wait_with_timeout(&mut child, spec.timeout, "container", move || {
        let _ = Command::new(&me)
            .args(["container", "kill", "--signal", "KILL", &name])
            .stderr(std::process::Stdio::null())
            .status();
    })
}
