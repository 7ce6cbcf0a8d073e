//! The guest's multi-call binary: the agent, and under the name
//! `uvm-container` the container runtime's command line, so the initramfs
//! carries the runtime once.

use clap::Parser;

/// uvm's container runtime.
#[derive(Parser)]
#[command(name = "uvm-container", version)]
struct ContainerCli {
    #[command(flatten)]
    args: uvm_runtime::cli::ContainerArgs,
}

fn main() {
    uvm_protocol::abort_on_panic();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if name == "uvm-container" {
        std::process::exit(uvm_runtime::cli::main(ContainerCli::parse().args));
    }
    uvm_agent::main()
}
