//! The builder: from a plain description of a Linux VM to a running one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uvm_devices::legacy::{
    console_ring, i8042::I8042, power::AcpiPower, pvpanic::PvPanic, serial::SerialDevice,
    status::StatusPort,
};

use super::console::ConsoleInput;
use super::layout::{ACPI_TABLES, COM1, PVPANIC_PORT, RSDP, SERIAL_IRQ};
use super::shutdown::Outcome;
use super::virtio::{DiskSpec, FsSpec, NetSpec, VsockSpec};
use super::{boot, regs, Vm};
use crate::acpi::{self, AcpiConfig, AcpiDevice};
use crate::error::Error;

/// Console bytes kept for a host that reads slower than the guest writes;
/// beyond them, output is dropped (see console_ring).
const CONSOLE_RING: usize = 256 << 10;

/// What uvm always tells the kernel. The console is the first UART; a reset
/// goes through the i8042 so it reaches the VMM; a panic resets at once so
/// a crashed guest ends the VM instead of hanging it; nothing probes for
/// hardware that is not there (PCI, more UARTs, an i8042 mouse).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet 8250.nr_uarts=1";

/// A Linux VM, as the CLI (or later an API) describes it.
#[derive(Debug, Clone)]
pub struct LinuxVmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Command-line fragments, in order (uvm's defaults come first).
    pub cmdline: Vec<String>,
    pub vcpus: u32,
    pub mem_size: u64,
    pub timeout: Option<Duration>,
    pub disks: Vec<DiskSpec>,
    pub nets: Vec<NetSpec>,
    pub vsock: Option<VsockSpec>,
    /// Host folders over virtio-fs (guest RAM is then a shared memfd).
    pub shares: Vec<FsSpec>,
    /// Tell the devices' counters and queue state when the VM ends.
    pub verbose: bool,
    /// Run the VMM's threads under their seccomp filters (see
    /// [`super::seccomp`]); off with `--no-seccomp`.
    pub seccomp: bool,
    /// Where the guest's console (the first UART) goes; host input reaches
    /// it only when it is the terminal's stdout.
    pub console: Output,
}

/// A host destination for a UART's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
    /// Created or truncated.
    File(PathBuf),
}

impl Output {
    fn open(&self) -> Result<Box<dyn std::io::Write + Send>, Error> {
        Ok(match self {
            Output::Stdout => Box::new(std::io::stdout()),
            Output::Stderr => Box::new(std::io::stderr()),
            Output::File(p) => {
                Box::new(std::fs::File::create(p).map_err(|e| {
                    Error::Io(format!("creating the console log {}", p.display()), e)
                })?)
            }
        })
    }
}

impl LinuxVmConfig {
    /// Checks everything that can be checked without KVM, so that bad input
    /// gets its own error on any host.
    pub fn validate(&self) -> Result<(), Error> {
        if self.vcpus == 0 || self.vcpus > super::MAX_VCPUS {
            return Err(Error::Vcpus(self.vcpus, super::MAX_VCPUS));
        }
        super::memory::validate_size(self.mem_size, super::memory::host_memory())?;
        boot::check_kernel(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            boot::check_initrd(initrd)?;
        }
        super::virtio::validate(&self.disks, &self.nets, self.vsock.as_ref(), &self.shares)
    }
}

/// Builds the VM with its devices and boot state, ready to run.
pub fn build(cfg: &LinuxVmConfig) -> Result<Vm, Error> {
    // vhost-user backends map guest RAM themselves: it must be shared.
    let mut vm = Vm::new(cfg.mem_size, cfg.vcpus, !cfg.shares.is_empty())?;

    let sink = vm.event_sink();
    // The vCPU copies the console into a ring; a thread of its own writes
    // it out (see console_ring for why the vCPU never writes the host).
    let (ring, drain, handle) = console_ring::ring(CONSOLE_RING);
    let out = cfg.console.open()?;
    let dropped = handle.clone();
    vm.add_report(
        "console".into(),
        Box::new(move || {
            format!(
                "{} bytes dropped (the host did not take them)",
                dropped.dropped()
            )
        }),
    );
    vm.set_console(handle, Box::new(move || drain.run(out)));
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        vm.irq_line(SERIAL_IRQ)?,
        ring,
    )));
    vm.add_pio_device(serial.clone(), COM1, 8)?;
    let mut devices = vec![AcpiDevice::Serial {
        port: COM1,
        irq: SERIAL_IRQ,
    }];
    vm.add_pio_device(Arc::new(Mutex::new(I8042::new(sink.clone()))), 0x60, 5)?;
    vm.add_pio_device(
        Arc::new(Mutex::new(AcpiPower::new(sink.clone(), acpi::RESET_VALUE))),
        acpi::SLEEP_CONTROL_PORT,
        uvm_devices::legacy::power::WINDOW_LEN,
    )?;
    vm.add_pio_device(
        Arc::new(Mutex::new(StatusPort::new(sink.clone()))),
        uvm_devices::legacy::status::PORT,
        4,
    )?;
    vm.add_pio_device(Arc::new(Mutex::new(PvPanic::new(sink))), PVPANIC_PORT, 1)?;
    if cfg.console == Output::Stdout {
        vm.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
            std::io::stdin(),
            serial,
        ))));
    }

    let attached = super::virtio::attach(
        &mut vm,
        &cfg.disks,
        &cfg.nets,
        cfg.vsock.as_ref(),
        &cfg.shares,
    )?;
    vm.set_verbose(cfg.verbose);
    vm.set_seccomp(cfg.seccomp);

    let mem = vm.memory();
    let kernel = boot::load_kernel(mem, &cfg.kernel)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(mem, p, &kernel))
        .transpose()?;
    // The devices' fragments go after uvm's defaults and before the user's
    // (the last fragment), so the user can still override them.
    let mut parts: Vec<&str> = cfg.cmdline.iter().map(String::as_str).collect();
    let user = parts.pop();
    parts.extend(attached.cmdline.iter().map(String::as_str));
    parts.extend(user);
    let cmdline = boot::cmdline(&parts)?;
    boot::write_boot_params(mem, &kernel, initrd.as_ref(), &cmdline, vm.mem_size())?;
    regs::write_boot_tables(mem)?;
    devices.push(AcpiDevice::Pvpanic { port: PVPANIC_PORT });
    devices.extend(attached.acpi);
    acpi::create_acpi_tables(
        mem,
        vm_memory::GuestAddress(RSDP),
        vm_memory::GuestAddress(ACPI_TABLES),
        &AcpiConfig {
            vcpus: u8::try_from(cfg.vcpus)
                .map_err(|_| Error::Vcpus(cfg.vcpus, super::MAX_VCPUS))?,
            devices,
        },
    )?;

    vm.configure_vcpus()?;
    let bsp = &vm.vcpus()[0];
    let sregs = bsp
        .get_sregs()
        .map_err(|e| Error::Kvm("KVM_GET_SREGS", e))?;
    bsp.set_sregs(&regs::sregs(sregs))
        .map_err(|e| Error::Kvm("KVM_SET_SREGS", e))?;
    bsp.set_regs(&regs::regs(kernel.entry.0))
        .map_err(|e| Error::Kvm("KVM_SET_REGS", e))?;
    bsp.set_fpu(&regs::fpu())
        .map_err(|e| Error::Kvm("KVM_SET_FPU", e))?;
    Ok(vm)
}

pub fn boot(cfg: &LinuxVmConfig) -> Result<Outcome, Error> {
    build(cfg)?.run(cfg.timeout)
}

#[cfg(test)]
mod tests {
    use uvm_devices::legacy::{power, status};
    use uvm_protocol as protocol;

    /// The VMM's devices and the guest's init and ACPI tables are written in
    /// different crates; these are the numbers both sides must agree on.
    #[test]
    fn both_sides_of_the_guest_protocols_agree() {
        assert_eq!(protocol::STATUS_PORT, status::PORT);
        for (kind, payload) in [(protocol::STATUS_READY, 0), (protocol::STATUS_EXIT, 7)] {
            assert_eq!(
                protocol::status_value(kind, payload),
                status::encode(kind, payload)
            );
        }
        assert_eq!(protocol::STATUS_READY, status::KIND_READY);
        assert_eq!(protocol::STATUS_EXIT, status::KIND_EXIT);
        assert_eq!(crate::acpi::S5_SLP_TYP, power::S5_SLP_TYP);
        assert_eq!(
            u64::from(crate::acpi::SLEEP_STATUS_PORT - crate::acpi::SLEEP_CONTROL_PORT),
            power::SLEEP_STATUS
        );
        assert_eq!(
            u64::from(crate::acpi::RESET_PORT - crate::acpi::SLEEP_CONTROL_PORT),
            power::RESET
        );
    }
}
