//! `uvm-container`: the container runtime's command line on its own (the
//! same as `uvm container ...`), for the runtime's tests and for guests.

use clap::Parser;

/// uvm's container runtime.
#[derive(Parser)]
#[command(name = "uvm-container", version)]
struct Cli {
    #[command(flatten)]
    args: uvm_runtime::cli::ContainerArgs,
}

fn main() {
    std::process::exit(uvm_runtime::cli::main(Cli::parse().args));
}
