//! `uvm container ...`: the runtime's command line (placeholder until the runtime lands).

#[derive(Debug, clap::Args)]
pub struct ContainerArgs {
    #[command(subcommand)]
    pub command: ContainerCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ContainerCommand {
    /// Run a command in a new container.
    Run,
}

/// Runs a `uvm container` command and returns the process exit status.
pub fn main(args: ContainerArgs) -> i32 {
    let _ = args;
    eprintln!("uvm container: not implemented yet");
    125
}
