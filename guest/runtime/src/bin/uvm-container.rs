//! `uvm-container`: the container runtime's command line on its own (the
//! same as `uvm container ...`), for the runtime's tests and for guests.
//! Invoked through a link named `uvm-runc`, it is `uvm oci ...` instead.

use clap::Parser;

/// uvm's container runtime.
#[derive(Parser)]
#[command(name = "uvm-container", version)]
struct Cli {
    #[command(flatten)]
    args: uvm_runtime::cli::ContainerArgs,
}

fn main() {
    uvm_protocol::abort_on_panic();
    use uvm_runtime::oci::cli::{invoked_as_runtime, OciCli};
    if std::env::args_os()
        .next()
        .is_some_and(|a| invoked_as_runtime(&a))
    {
        std::process::exit(uvm_runtime::oci::cli::main(OciCli::parse().args));
    }
    std::process::exit(uvm_runtime::cli::main(Cli::parse().args));
}
