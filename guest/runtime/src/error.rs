//! The runtime's one error type.

use std::io;
use std::path::PathBuf;

/// Exit status of `uvm container` when the runtime itself failed (as docker/runc).
pub const EXIT_RUNTIME_ERROR: i32 = 125;
/// Exit status when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit status when the command was not found in the container.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Everything that can go wrong creating, running or managing a container.
/// Each message is one line saying what failed and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rootfs {0} does not exist or is not a directory (build one with `uvm container mkrootfs DIR`)")]
    RootfsMissing(PathBuf),
    #[error("bundle {path}: {msg}")]
    Bundle { path: PathBuf, msg: String },
    #[error("invalid {flag} value {value:?}: {reason}")]
    InvalidArgument {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("container name {0:?} is already in use: pick another --name, or stop it with `uvm container kill {0}`")]
    NameInUse(String),
    #[error("container with id {0:?} exists")]
    IdInUse(String),
    #[error("container {0:?} does not exist")]
    NoSuchId(String),
    #[error("{stage} hook {path}: {msg}")]
    Hook {
        stage: &'static str,
        path: PathBuf,
        msg: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("no such container {0:?} (see `uvm container ps`)")]
    NoSuchContainer(String),
    #[error("container {0:?} is not running")]
    NotRunning(String),
    #[error("container {0:?} is not in the created state (it was started, or it stopped)")]
    NotCreated(String),
    #[error("container {0:?} is still running: kill it first, or delete it with --force")]
    StillRunning(String),
    #[error("container {0:?} is paused: resume it first with `uvm container resume {0}`")]
    Paused(String),
    #[error("container {0:?} is already paused")]
    AlreadyPaused(String),
    #[error("container {0:?} is not paused")]
    NotPaused(String),
    #[error("{0}: command not found in the container")]
    CommandNotFound(String),
    #[error("{cmd}: cannot execute: {reason}")]
    NotExecutable { cmd: String, reason: String },
    #[error("container set-up failed: {0}")]
    Setup(String),
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("network: {0}")]
    Netlink(#[from] crate::netlink::Error),
    #[error("network: {0}")]
    Network(String),
    #[error("nftables: {0}")]
    Nft(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("capabilities: {0}")]
    Capabilities(String),
    #[error("state of container {name:?}: {msg}")]
    State { name: String, msg: String },
    /// An image that cannot be imported, found or removed.
    #[error("{0}")]
    Image(String),
    #[error("this command needs root (the runtime creates namespaces, cgroups and mounts)")]
    NotRoot,
    /// Something a rootless container cannot have (and what to do instead).
    #[error("rootless: {0}")]
    Rootless(String),
}

impl Error {
    /// The exit status `uvm container` uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CommandNotFound(_) => EXIT_NOT_FOUND,
            Error::NotExecutable { .. } => EXIT_NOT_EXECUTABLE,
            _ => EXIT_RUNTIME_ERROR,
        }
    }

    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            flag,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
