//! What the isolation probe asks and answers. The host side (`uvm probe`)
//! tells the probe what the host looks like ([`HostFacts`]); the probe,
//! run at some isolation level, tries each thing and answers with
//! evidence ([`Answer`]). Both sides share these types.

use serde::{Deserialize, Serialize};

/// What only the host knows, handed to the probe on its command line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostFacts {
    /// A process of the host's (uvm itself) and its `comm`.
    pub pid: i32,
    pub comm: String,
    pub hostname: String,
    pub kernel_release: String,
    pub boot_id: String,
    /// A file the host planted outside every rootfs, and what it holds.
    pub secret_path: String,
    pub secret: String,
    /// The host's network interfaces (name, MAC), loopback left out.
    pub netifs: Vec<(String, String)>,
    /// The memory limit the level was given, bytes.
    pub memory_limit: u64,
    /// How many processes the fork-bomb probe tries to hold at once.
    pub fork_max: u32,
}

/// One probe's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answer {
    pub probe: String,
    /// Short: yes, no, or a value.
    pub answer: String,
    /// What was seen, so the answer can be checked.
    pub evidence: String,
}

/// The probes, in the order they run and are shown.
pub const PROBES: &[(&str, &str)] = &[
    ("host_pids", "sees host PIDs"),
    ("signal_host", "can signal a host process"),
    ("host_netifs", "sees host network interfaces"),
    ("own_hostname", "has its own hostname"),
    ("load_module", "can load a kernel module"),
    ("mknod_block", "can mknod a block device and read it"),
    ("mount", "can mount"),
    ("set_clock", "can change the clock"),
    ("host_file", "can read a host file outside its rootfs"),
    ("host_kernel", "runs on the host's kernel"),
    ("kcore_mem", "sees /proc/kcore or /dev/mem"),
    ("capabilities", "effective capabilities"),
    ("seccomp", "seccomp mode"),
    ("memory_limit", "memory limit visible and enforced"),
    ("fork_bomb", "what a fork bomb gets"),
];

/// The human title of a probe.
pub fn title(probe: &str) -> &'static str {
    PROBES
        .iter()
        .find(|(p, _)| *p == probe)
        .map_or("?", |(_, t)| t)
}
