//! uvm's container runtime, with the OCI runtime spec as its data model. The
//! host's `uvm container` and `uvm run` link it; guests run it as `uvm-container`.
//!
//! Layers, each usable and tested alone:
//! - [`spec`]: flags or a bundle's `config.json` to an OCI [`oci_spec::runtime::Spec`];
//! - [`process`]: namespaces, PID 1, the exec handshake, exit status;
//! - [`rootfs`]: overlay, mounts, devices, `pivot_root`, masked paths;
//! - [`cgroups`]: limits and accounting over cgroup v1 and v2 (device rules
//!   on v2 through [`device_filter`], an eBPF program);
//! - [`seccomp`] and capabilities (in [`process`]): privileges;
//! - [`userns`]: user namespaces, ID mappings, rootless use;
//! - [`netlink`]: links, addresses, routes and namespaces over rtnetlink;
//! - [`network`]: bridge, veth, addresses, nftables NAT and port publishing;
//! - [`netns`]: the other network patterns (a container's namespace
//!   registered in /run/netns, joined by another, linked by a direct veth
//!   or a macvlan) and [`firewall`], a container's own inbound rules;
//! - [`state`] and [`runtime`]: names, state on disk, run/exec/kill/ps/stats/gc;
//! - [`image`]: building a minimal rootfs;
//! - [`images`]: OCI and `docker save` images, their layer store;
//! - [`lifecycle`]: detached containers under a monitor (logs, stop,
//!   start, rm, inspect, restart policy) and [`tty`], `run -t`'s terminal;
//! - [`cli`]: `uvm container ...`;
//! - [`oci`]: the same runtime behind runc's command line (`uvm oci ...`).
pub mod cgroups;
pub mod cli;
pub mod device_filter;
pub mod error;
pub mod firewall;
pub mod image;
pub mod images;
pub mod lifecycle;
pub mod limits;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod oci;
pub mod process;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod tty;
pub mod userns;

#[doc(hidden)]
pub mod fuzzing;

pub use error::{Error, Result};
pub use runtime::{Container, ExecOptions, Exit, Runtime};
pub use spec::{NetMode, PortMap, RunOptions, Source, Volume};

/// For commands that only print (listings, inspect, logs): a reader that
/// goes away (`| head`) ends the process quietly, as it ends `ls` or
/// `cat`, instead of `println!` panicking on EPIPE (Rust ignores SIGPIPE).
/// Never for commands that keep pipes or sockets of their own (run, exec,
/// the VMM), where EPIPE is an error to handle.
pub fn quiet_on_closed_stdout() {
    // SAFETY: restoring a signal's default disposition installs no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
