//! containerd-shim-uvm-v2: containerd's shim v2 (task API v2, what
//! containerd 1.6 speaks) for `--runtime io.containerd.uvm.v2`. One uvm
//! sandbox (a microVM with the guest agent) per pod; each container of the
//! pod is made in it through the agent, its root the bundle's rootfs as
//! containerd mounted it, reaching the guest over the sandbox's virtio-fs
//! share. The shim is one process per pod, as containerd's own shims are:
//! `start` starts it (or finds it, for a pod's later containers) and
//! prints its socket; containerd then drives the task API on that socket.

mod task;

use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, Shim, StartOpts};

/// The runtime's name as containerd knows it.
const RUNTIME: &str = "io.containerd.uvm.v2";
/// CRI's annotation naming the pod a container belongs to.
const POD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

struct UvmShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

/// The pod a bundle's container belongs to: CRI's sandbox id, else the
/// container is a pod of its own (what `ctr run` makes).
fn pod_of(bundle: &std::path::Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|spec| {
            spec["annotations"][POD_ANNOTATION]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| id.to_string())
}

impl Shim for UvmShim {
    type T = task::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        UvmShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// containerd runs `start` in the bundle: one shim per pod, so a pod's
    /// second container gets the first one's socket.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let cwd = std::env::current_dir().map_err(|e| containerd_shim::Error::IoError {
            context: "the bundle".into(),
            err: e,
        })?;
        let pod = pod_of(&cwd, &opts.id);
        let (_, address) = containerd_shim::spawn(opts, &pod, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd runs `delete` in the bundle when the shim died under a
    /// task: the pod's sandbox goes (VMM, virtiofsd, socket, folder), and
    /// the rootfs mount.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let cwd = std::env::current_dir().unwrap_or_default();
        task::remove_leftovers(&cwd, &pod_of(&cwd, &self.id), &self.id);
        let mut r = DeleteResponse::new();
        r.exit_status = 128 + libc::SIGKILL as u32;
        r.exited_at = Some(containerd_shim::util::timestamp()?).into();
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        task::Service::new(self.namespace.clone(), publisher, self.exit.clone())
    }
}

fn main() {
    uvm_protocol::abort_on_panic();
    // The sandbox's VMM is this binary again (uvm's library starts
    // `current_exe sandbox-vmm NAME`), so the shim needs no uvm on PATH.
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == uvm::sandbox::VMM_COMMAND {
        std::process::exit(uvm::sandbox::vmm::main(&args[2]));
    }
    let config = Config {
        // The shim's children are the sandbox's VMM, which it waits for
        // itself; the crate's reaper would take their statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    };
    containerd_shim::run::<UvmShim>(RUNTIME, Some(config));
}
