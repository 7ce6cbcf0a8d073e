use clap::Parser;

use uvm::cli::{run_check, BenchArgs, BenchCommand, BootArgs, Cli, Command};
use uvm::error::Error;
use uvm::vmm::linux::Output;
use uvm::vmm::shutdown::{Outcome, EXIT_UVM_ERROR};
use uvm::{check, vmm};

fn boot(args: &BootArgs) -> Result<Outcome, Error> {
    let mut cfg = args.to_config()?;
    // From here on, nothing may outlast --timeout by much.
    vmm::shutdown::hard_deadline(cfg.timeout, cfg.seccomp)?;
    // Checked before the lease, so bad input changes nothing on the host.
    cfg.validate()?;
    check::ensure_can_boot_linux()?;
    // With a command, the guest's agent runs it: its stdio are uvm's, the
    // console goes to a log in the VM's folder (or stderr).
    let workload = match args.command.is_empty() {
        true => None,
        false => {
            let dir = uvm::run::vm::RunDir::create(&format!("boot-{}", std::process::id()))?;
            cfg.console = match args.console || args.verbose {
                true => Output::Stderr,
                false => Output::File(dir.path("console.log")),
            };
            let uds = uvm::agent::workload::prepare(&mut cfg, &dir.path("vsock.sock"));
            Some((dir, uds))
        }
    };
    let mut lease = uvm::run::net::lease_for_boot(&mut cfg, &args.publish)?;
    if let Some(l) = lease.as_mut().filter(|_| cfg.seccomp) {
        l.release_from_helper()?;
    }
    let vm = vmm::linux::build(&cfg)?;
    // The VMM has made the tap: onto the bridge before the guest runs.
    if let Some(l) = &lease {
        l.attach()?;
    }
    vmm::shutdown::stop_on_signals(vm.shutdown(), cfg.seccomp)?;
    let _raw = match &workload {
        Some((_, uds)) => {
            let p = uvm::agent::ProcessSpec::new(args.command.clone());
            uvm::agent::workload::drive(uds.clone(), p, vm.shutdown(), cfg.seccomp)?;
            None
        }
        None => Some(vmm::console::RawStdin::enter()),
    };
    let shutdown = vm.shutdown();
    let outcome = vm.run(cfg.timeout)?;
    // The console's last lines say why a guest crashed, or why its init
    // gave up before the workload could start (a bad root disk, say).
    if let (Some(_), Output::File(log)) = (&workload, &cfg.console) {
        if let Some(t) = uvm::agent::workload::failure_tail(&outcome, &shutdown, log) {
            uvm::say!("uvm: the guest's console ended with:\n{t}");
        }
    }
    Ok(outcome)
}

fn main() {
    uvm_protocol::abort_on_panic();
    use uvm_runtime::oci::cli::{invoked_as_runtime, OciCli};
    uvm::process_start();
    // Installed as `uvm-runc` (a link), uvm is an OCI runtime for callers
    // that run runc's command line (containerd's runc shim).
    if std::env::args_os()
        .next()
        .is_some_and(|a| invoked_as_runtime(&a))
    {
        std::process::exit(uvm_runtime::oci::cli::main(OciCli::parse().args));
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check => run_check(),
        Command::Container(args) => uvm_runtime::cli::main(args),
        Command::Image(args) => uvm_runtime::images::cli::main(args, None),
        Command::Oci(args) => uvm_runtime::oci::cli::main(args),
        Command::Bench(BenchArgs {
            command: Some(BenchCommand::Boot(args)),
            ..
        }) => uvm::bench::boot::main(&args),
        Command::Bench(BenchArgs {
            command: Some(BenchCommand::Io(args)),
            ..
        }) => uvm::bench::io::main(&args),
        Command::Bench(BenchArgs {
            command: Some(BenchCommand::Channels(args)),
            ..
        }) => uvm::bench::channels::main(&args),
        Command::Bench(BenchArgs {
            command: None,
            levels,
        }) => uvm::bench::levels::main(&levels),
        Command::Run(args) => uvm::run::main(&args),
        Command::Probe(args) => uvm::run::probe::main(&args),
        Command::Gc => uvm::cli::gc(),
        Command::Sandbox(args) => uvm::cli::sandbox_main(&args),
        Command::SandboxVmm { name } => uvm::sandbox::vmm::main(&name),
        Command::SandboxLog { name, id } => uvm::sandbox::logs::pump(&name, &id),
        Command::ReleaseLease { name } => uvm::run::net::release_when_told(&name),
        Command::Agent(args) => match uvm::agent::ctl::main(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("uvm agent: {e}");
                EXIT_UVM_ERROR
            }
        },
        Command::Boot(args) if args.jail.is_some() => uvm::jail::main(&args),
        Command::Boot(args) => vmm::shutdown::exit_status(boot(&args)),
    };
    std::process::exit(code);
}
