//! A sandbox's VMM: `uvm sandbox-vmm NAME`, started detached by
//! [`super::create`]. It joins the sandbox's cgroup, makes the share's
//! mount, takes the network lease, and boots the default guest into its
//! agent with the share and a vsock device whose socket is in the
//! sandbox's folder; it runs until the guest powers off (`rm`) or it is
//! killed. Like `uvm boot`, it is under its seccomp filters from the
//! moment the VM runs, so what is left when it ends (the share's mounts,
//! the cgroup, the folder) is removed by `rm` or `uvm gc`, not by it.

use super::{lease_name, share, Sandbox, SandboxConfig, GUEST_SHARE, SHARE_TAG};
use crate::error::Error;
use crate::run::net::NetLease;
use crate::vmm::linux::{LinuxVmConfig, Output, DEFAULT_CMDLINE};
use crate::vmm::virtio::{FsSpec, NetSpec, VsockSpec};
use crate::{guest_image, vmm};

/// The guest's vsock context id (one VM per socket: any id above 2).
const CID: u64 = 3;

/// Runs sandbox `name`'s VM; returns the VMM's exit status.
pub fn main(name: &str) -> i32 {
    match serve(name) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uvm sandbox: {e}");
            crate::vmm::shutdown::EXIT_UVM_ERROR
        }
    }
}

/// The sandbox's VM without its network (which needs the lease): the
/// default guest booting into its agent, the share, the vsock socket.
pub fn config(sb: &Sandbox, cfg: &SandboxConfig) -> Result<LinuxVmConfig, Error> {
    Ok(LinuxVmConfig {
        kernel: guest_image::default_file(guest_image::KERNEL)?,
        initrd: Some(guest_image::default_file(guest_image::INITRD)?),
        cmdline: vec![
            DEFAULT_CMDLINE.to_string(),
            format!("uvm.hostname={}", cfg.name),
            format!(
                "{}={}",
                uvm_protocol::AGENT_PARAM,
                uvm_agent_api::AGENT_PORT
            ),
            // The user's fragment, empty, comes last in a config's
            // command line.
            String::new(),
        ],
        vcpus: cfg.vcpus,
        mem_size: cfg.mem,
        timeout: None,
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: Some(VsockSpec {
            cid: CID,
            uds: sb.path("vsock.sock"),
        }),
        shares: vec![FsSpec {
            dir: sb.path("shared"),
            tag: SHARE_TAG.into(),
            // Each container writes to its overlay in the guest.
            read_only: true,
            guest_path: GUEST_SHARE.into(),
        }],
        // The devices' account goes to the sandbox's log when the VMM
        // ends: what a stuck guest was waiting for.
        verbose: true,
        seccomp: true,
        console: Output::File(sb.path("console.log")),
    })
}

fn serve(name: &str) -> Result<i32, Error> {
    let sb = Sandbox::open(name)?;
    if let Some(cg) = sb.cgroup() {
        cg.add_pid(0)?;
    }
    let cfg = sb.config()?;
    share::prepare(&sb.path("shared"))?;
    let mut vm_cfg = config(&sb, &cfg)?;
    let mut lease = None;
    if cfg.bridge {
        let mut l = NetLease::take(
            &lease_name(name),
            &cfg.publish,
            &format!("uvm sandbox {name}"),
        )?;
        // Releasing runs nft and netlink, which the VMM's filters forbid.
        l.release_from_helper()?;
        // Before the user's fragment, which stays last.
        let at = vm_cfg.cmdline.len().saturating_sub(1);
        vm_cfg.cmdline.insert(at, l.ip_param("eth0"));
        vm_cfg.nets.push(NetSpec {
            tap: l.tap().to_string(),
            mac: None,
            bridge: true,
            rx_rate_limit: Default::default(),
            tx_rate_limit: Default::default(),
        });
        let net = serde_json::json!({
            "ip": l.net().ip, "gateway": l.net().gateway, "prefix": l.net().prefix,
            "bridge": l.net().bridge, "tap": l.tap(), "publish": cfg.publish,
        });
        std::fs::write(sb.path("net.json"), net.to_string())
            .map_err(|e| Error::Io(format!("writing {}", sb.path("net.json").display()), e))?;
        lease = Some(l);
    }
    vm_cfg.validate()?;
    let vm = vmm::linux::build(&vm_cfg)?;
    if let Some(l) = &lease {
        l.attach()?;
    }
    vmm::shutdown::stop_on_signals(vm.shutdown(), vm_cfg.seccomp)?;
    let outcome = vm.run(None)?;
    let (code, message) = outcome.exit();
    if let Some(m) = message {
        eprintln!("uvm sandbox: {m}");
    }
    drop(lease);
    Ok(code)
}
