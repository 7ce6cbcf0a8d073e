//! Talking to the VMM through uvm's status port (see `protocol`).

use uvm_protocol::{status_value, STATUS_EXIT, STATUS_PORT, STATUS_READY};

fn write_port(value: u32) {
    let port = STATUS_PORT;
    // SAFETY: ioperm only changes this process's I/O permission bitmap; it
    // fails (and we skip the write) when not privileged.
    if unsafe { libc::ioperm(libc::c_ulong::from(port), 4, 1) } != 0 {
        return;
    }
    // SAFETY: the port was just granted to this process, and the write has
    // no effect on memory: it only exits to the VMM (or hits nothing).
    unsafe {
        std::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags));
    }
}

pub fn report_ready() {
    write_port(status_value(STATUS_READY, 0));
}

pub fn report_exit(status: u8) {
    write_port(status_value(STATUS_EXIT, status));
}
