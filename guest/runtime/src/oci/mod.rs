//! The runtime behind runc's command line (`uvm oci`, or the uvm binary
//! invoked as [`RUNTIME_NAME`]), for callers that drive an OCI runtime:
//! containerd's runc shim, the OCI runtime-tools validation suite.
//!
//! runc's model: `create` builds the container (namespaces, cgroup,
//! rootfs) and exits, leaving PID 1 blocked before exec on a socket in the
//! state directory; `start`, from any process, lets it exec. There is no
//! daemon: the state under `--root` is all later commands see.
//! - [`cli`]: the commands and runc's global flags, errors and exit codes;
//! - [`state`]: the OCI state of a container, as `state` prints it;
//! - [`hooks`]: running the spec's hooks with the state on stdin;
//! - [`console`]: a terminal for `--console-socket`.
pub mod cli;
pub mod console;
pub mod hooks;
pub mod state;

/// The name under which the uvm binary behaves as `uvm oci` (a symlink
/// `uvm-runc` to it is what containerd's runc shim is given as its binary).
pub const RUNTIME_NAME: &str = "uvm-runc";

/// Default state root of `uvm oci` (apart from `uvm container`'s, whose
/// containers are supervised by a running process).
pub const DEFAULT_ROOT: &str = "/run/uvm-oci";

/// The OCI runtime spec version this runtime implements.
pub const OCI_VERSION: &str = "1.0.2";
