//! The virtio-fs backends: one virtiofsd per shared folder, started before
//! the VM is built and stopped when it ends. uvm runs it as a separate
//! program (never linked: it pins its own rust-vmm versions) with its
//! socket in a folder of uvm's, and connects to it as the vhost-user
//! frontend.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::virtio::FsSpec;
use crate::error::Error;

/// Where the sockets and logs go (a tmpfs on every systemd host, and in
/// the nested runner; a Unix socket cannot live on 9p or most FUSE).
const RUNTIME_DIR: &str = "/run/uvm/virtiofsd";
/// How long virtiofsd may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The virtiofsd to run: `$UVM_VIRTIOFSD`, else the first found on PATH,
/// in cargo's bin folder (where `cargo install virtiofsd` puts it, which
/// a root shell's PATH often lacks) or where distributions put it.
pub fn binary() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("UVM_VIRTIOFSD") {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::Device(format!(
                "UVM_VIRTIOFSD={}: not an executable file",
                p.display()
            )))
        };
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("virtiofsd"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
    }) {
        candidates.push(PathBuf::from(home).join("bin/virtiofsd"));
    }
    candidates.push("/usr/libexec/virtiofsd".into());
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            Error::Device(
                "--fs needs virtiofsd, and there is none on PATH, in ~/.cargo/bin or /usr/libexec \
             (make setup installs it with cargo install virtiofsd; or set UVM_VIRTIOFSD)"
                    .into(),
            )
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Removes the folders of virtiofsd started by VMM `pid` (its socket, pid
/// file and log), which a VMM killed before it could stop them leaves.
pub fn remove_folders_of(pid: i32) {
    let prefix = format!("{pid}-");
    for e in std::fs::read_dir(RUNTIME_DIR)
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `uvm gc`'s part: the folders of virtiofsd whose VMM is gone.
pub fn gc() -> Vec<String> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(RUNTIME_DIR)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && std::fs::remove_dir_all(e.path()).is_ok()
        {
            removed.push(format!("virtiofsd folder {}", e.path().display()));
        }
    }
    removed
}

/// A running virtiofsd; dropping it stops it and removes its socket.
pub struct Virtiofsd {
    child: Child,
    tag: String,
    socket: PathBuf,
    log: PathBuf,
}

impl Virtiofsd {
    /// Starts virtiofsd on `spec`'s folder and connects to it.
    pub fn start(spec: &FsSpec, index: usize) -> Result<(Virtiofsd, UnixStream), Error> {
        let bin = binary()?;
        spec.check()?;
        // A folder per daemon: virtiofsd puts a pid file beside its socket.
        let dir = Path::new(RUNTIME_DIR).join(format!("{}-{index}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Io(format!("creating {}", dir.display()), e))?;
        let socket = dir.join("socket");
        let log = dir.join("log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| Error::Io(format!("creating {}", log.display()), e))?;
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", spec.dir.display()))
            // Answers in order (no thread pool): what the VMM relies on
            // to fail exactly the unanswered requests if it dies.
            .arg("--thread-pool-size=0")
            .arg("--cache=auto")
            .arg("--log-level=error");
        if spec.read_only {
            cmd.arg("--readonly");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| Error::Io(format!("starting {}", bin.display()), e))?;
        let mut d = Virtiofsd {
            child,
            tag: spec.tag.clone(),
            socket,
            log,
        };
        let stream = d.connect()?;
        Ok((d, stream))
    }

    /// Waits for the socket, then connects; a virtiofsd that exits first
    /// is an error with its own last words.
    fn connect(&mut self) -> Result<UnixStream, Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Device(format!(
                    "virtiofsd for --fs tag {} exited at start ({status}): {}",
                    self.tag,
                    self.last_words()
                )));
            }
            if self.socket.exists() {
                match UnixStream::connect(&self.socket) {
                    Ok(s) => return Ok(s),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(Error::Io(
                            format!("connecting to virtiofsd at {}", self.socket.display()),
                            e,
                        ))
                    }
                    Err(_) => {}
                }
            } else if Instant::now() >= deadline {
                return Err(Error::Device(format!(
                    "virtiofsd for --fs tag {} made no socket in {} s",
                    self.tag,
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last line virtiofsd logged, for a one-line error.
    fn last_words(&self) -> String {
        std::fs::read_to_string(&self.log)
            .ok()
            .and_then(|s| {
                s.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "(it said nothing)".into())
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        match self.child.try_wait() {
            Ok(Some(status)) => crate::say!(
                "uvm: virtiofsd for --fs tag {} ended while the VM ran ({status}); \
                 the guest's requests to that share failed with EIO from then on",
                self.tag
            ),
            _ => super::shutdown::stop_child(&mut self.child, Duration::from_secs(2)),
        }
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
