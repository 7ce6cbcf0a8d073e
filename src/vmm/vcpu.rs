//! A vCPU thread: runs KVM_RUN and routes every exit to a bus or an outcome.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};
use uvm_devices::Bus;

use super::shutdown::{Outcome, Shutdown};

/// What a vCPU thread needs besides its own fd.
#[derive(Clone)]
pub struct ExitHandlers {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub shutdown: Arc<Shutdown>,
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Handles one exit; `Some` ends the VM.
pub fn handle_exit(exit: VcpuExit<'_>, h: &ExitHandlers, index: u32) -> Option<Outcome> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            h.pio.read(u64::from(port), data);
            None
        }
        VcpuExit::IoOut(port, data) => {
            h.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            h.mmio.read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            h.mmio.write(addr, data);
            None
        }
        // Only reachable without an in-kernel LAPIC (or with interrupts off
        // for good): nothing can ever wake this vCPU.
        VcpuExit::Hlt => Some(Outcome::Halted),
        VcpuExit::Shutdown => Some(Outcome::TripleFault),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Some(Outcome::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Some(Outcome::Reset {
                ready: h.shutdown.guest_ready(),
            }),
            KVM_SYSTEM_EVENT_CRASH => Some(Outcome::Panic),
            other => Some(Outcome::VcpuError(format!(
                "vCPU {index}: unknown system event {other}"
            ))),
        },
        VcpuExit::InternalError => Some(Outcome::VcpuError(format!(
            "vCPU {index}: KVM internal error (the guest ran an instruction KVM could not emulate)"
        ))),
        VcpuExit::FailEntry(reason, cpu) => Some(Outcome::VcpuError(format!(
            "vCPU {index}: KVM entry failed (hardware reason {reason:#x} on host cpu {cpu})"
        ))),
        // Interrupted by a kick: the caller checks whether to stop.
        VcpuExit::Intr => None,
        other => Some(Outcome::VcpuError(format!(
            "vCPU {index}: unexpected exit {other:?}"
        ))),
    }
}

/// Runs `vcpu` until the VM ends; reports how it ended.
pub fn run(mut vcpu: VcpuFd, index: u32, h: ExitHandlers) {
    loop {
        if h.shutdown.is_done() {
            return;
        }
        let outcome = match vcpu.run() {
            Ok(exit) => handle_exit(exit, &h, index),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(Outcome::VcpuError(format!(
                "vCPU {index}: KVM_RUN failed: {e}"
            ))),
        };
        if let Some(outcome) = outcome {
            if matches!(outcome, Outcome::TripleFault) {
                // The one clue to why: where the guest was and in what mode.
                crate::say!("uvm: {}", triple_fault_state(&vcpu, index));
            }
            h.shutdown.report(outcome);
            return;
        }
    }
}

/// The vCPU's registers at a triple fault, on one line.
pub fn triple_fault_state(vcpu: &VcpuFd, index: u32) -> String {
    let (regs, sregs) = match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => {
            return format!("vCPU {index} triple-faulted; its registers are unreadable: {e}")
        }
    };
    format!(
        "vCPU {index} triple-faulted at rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} \
         cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} idt={:#x}/{:#x} gdt={:#x}/{:#x} \
         rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
        regs.rip,
        regs.rsp,
        regs.rflags,
        sregs.cs.selector,
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.efer,
        sregs.idt.base,
        sregs.idt.limit,
        sregs.gdt.base,
        sregs.gdt.limit,
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rbp,
    )
}

/// Signal used to knock a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler so the kick interrupts KVM_RUN with EINTR
/// instead of killing the process.
pub fn install_kick_handler() -> Result<(), crate::error::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| crate::error::Error::Io("installing the vCPU kick handler".into(), e.into()))
}

/// Knocks threads out of KVM_RUN until they have all returned. A kick can
/// land just before a thread re-enters KVM_RUN and be lost, hence the loop.
pub fn stop_all(threads: Vec<JoinHandle<()>>) {
    use vmm_sys_util::signal::Killable;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for t in threads {
        while !t.is_finished() && std::time::Instant::now() < deadline {
            let _ = t.kill(kick_signal());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
