//! OCI hooks: each runs with the container's state as JSON on its stdin,
//! its own arguments and environment, and an optional timeout.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

/// Runs `hooks` in order; the first failure stops them and is returned.
pub fn run_all(hooks: &[Hook], state: &[u8], stage: &'static str) -> Result<()> {
    for h in hooks {
        run_one(h, state).map_err(|msg| Error::Hook {
            stage,
            path: h.path().clone(),
            msg,
        })?;
    }
    Ok(())
}

fn run_one(h: &Hook, state: &[u8]) -> std::result::Result<(), String> {
    let mut cmd = Command::new(h.path());
    if let Some((arg0, rest)) = h.args().as_deref().unwrap_or_default().split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for e in h.env().as_deref().unwrap_or_default() {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is no error.
        let _ = stdin.write_all(state);
    }
    let limit = h
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .map(Duration::from_secs);
    let t = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(s) => break s,
            None if limit.is_some_and(|l| t.elapsed() >= l) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "timed out after {}s",
                    limit.unwrap_or_default().as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("failed ({status})"))
    }
}
