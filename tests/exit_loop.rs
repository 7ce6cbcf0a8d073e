//! The vCPU exit loop, driven by tiny real-mode programs. Real-mode code
//! runs on any KVM, PVM included, so these run on the host directly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use uvm::vmm::shutdown::Outcome;
use uvm::vmm::Vm;
use uvm_devices::legacy::status::StatusPort;
use uvm_devices::BusDevice;
use vm_memory::{Bytes, GuestAddress};

const CODE: u64 = 0x1000;
const MMIO_BASE: u64 = 0xd000_0000;

#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<u64>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push(offset);
        // Answer with something the program can echo back.
        data.fill(0x5a_u8.wrapping_add(u8::try_from(offset).unwrap_or(0)));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

/// `out 0x510, eax` with uvm's status magic: ends the VM with `status`.
fn exit_with(status: u8) -> Vec<u8> {
    let value = uvm_devices::legacy::status::encode(uvm_devices::legacy::status::KIND_EXIT, status);
    let mut v = vec![0x66, 0xb8]; // mov eax, imm32
    v.extend_from_slice(&value.to_le_bytes());
    v.extend_from_slice(&[0xba, 0x10, 0x05]); // mov dx, 0x510
    v.extend_from_slice(&[0x66, 0xef]); // out dx, eax
    v.push(0xf4); // hlt (not reached)
    v
}

/// A one-vCPU VM in real mode at CODE, FS based at the MMIO window.
fn vm_running(program: &[u8], bare: bool) -> (Vm, Arc<Mutex<Recorder>>, Arc<Mutex<Recorder>>) {
    let mut vm = if bare {
        Vm::new_bare(64 << 20, 1)
    } else {
        Vm::new(64 << 20, 1, false)
    }
    .expect("KVM VM");
    vm.memory()
        .write_slice(program, GuestAddress(CODE))
        .unwrap();
    let pio = Arc::new(Mutex::new(Recorder::default()));
    let mmio = Arc::new(Mutex::new(Recorder::default()));
    vm.add_pio_device(pio.clone(), 0x80, 4).unwrap();
    vm.add_mmio_device(mmio.clone(), MMIO_BASE, 0x1000).unwrap();
    let sink = vm.event_sink();
    vm.add_pio_device(
        Arc::new(Mutex::new(StatusPort::new(sink))),
        uvm_devices::legacy::status::PORT,
        4,
    )
    .unwrap();
    let vcpu = &vm.vcpus()[0];
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.fs.base = MMIO_BASE;
    vcpu.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: CODE,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).unwrap();
    (vm, pio, mmio)
}

#[test]
fn port_io_reaches_devices_and_reads_come_back() {
    let mut program = vec![
        0xb0, 0x42, // mov al, 0x42
        0xe6, 0x80, // out 0x80, al
        0xe4, 0x81, // in al, 0x81   (device answers 0x5b)
        0xe6, 0x82, // out 0x82, al  (echo it)
        0xe4, 0x70, // in al, 0x70   (nobody there: floats to 0xff)
        0xe6, 0x83, // out 0x83, al
    ];
    program.extend(exit_with(7));
    let (vm, pio, _) = vm_running(&program, false);
    let outcome = vm.run(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(outcome, Outcome::Status(7));
    let pio = pio.lock().unwrap();
    assert_eq!(pio.reads, [1]);
    assert_eq!(
        pio.writes,
        [(0, vec![0x42]), (2, vec![0x5b]), (3, vec![0xff])]
    );
}

#[test]
fn mmio_reads_and_writes_reach_devices() {
    let mut program = vec![
        0xb0, 0x99, // mov al, 0x99
        0x64, 0xa2, 0x10, 0x00, // mov [fs:0x10], al
        0x64, 0xa0, 0x20, 0x00, // mov al, [fs:0x20]  (device answers 0x7a)
        0x64, 0xa2, 0x30, 0x00, // mov [fs:0x30], al
    ];
    program.extend(exit_with(0));
    let (vm, _, mmio) = vm_running(&program, false);
    assert_eq!(
        vm.run(Some(Duration::from_secs(20))).unwrap(),
        Outcome::Status(0)
    );
    let mmio = mmio.lock().unwrap();
    assert_eq!(mmio.reads, [0x20]);
    assert_eq!(mmio.writes, [(0x10, vec![0x99]), (0x30, vec![0x7a])]);
}

#[test]
fn hlt_without_interrupts_ends_the_vm() {
    let program = [0xb0, 0x01, 0xe6, 0x80, 0xf4]; // out 0x80, 1; hlt
    let (vm, pio, _) = vm_running(&program, true);
    assert_eq!(
        vm.run(Some(Duration::from_secs(20))).unwrap(),
        Outcome::Halted
    );
    assert_eq!(pio.lock().unwrap().writes, [(0, vec![1])]);
}

#[test]
fn a_guest_spinning_forever_is_stopped_by_the_timeout() {
    let program = [0xeb, 0xfe]; // jmp $
    let (vm, _, _) = vm_running(&program, false);
    assert_eq!(
        vm.run(Some(Duration::from_millis(500))).unwrap(),
        Outcome::Timeout
    );
}

#[test]
fn a_stray_status_write_without_magic_is_ignored() {
    let mut program = vec![
        0x66, 0xb8, 0x07, 0x02, 0x00, 0x00, // mov eax, 0x207 (no magic)
        0xba, 0x10, 0x05, // mov dx, 0x510
        0x66, 0xef, // out dx, eax
    ];
    program.extend(exit_with(3));
    let (vm, _, _) = vm_running(&program, false);
    assert_eq!(
        vm.run(Some(Duration::from_secs(20))).unwrap(),
        Outcome::Status(3)
    );
}

/// What the exit loop prints at a triple fault (the one clue to a rare
/// early fault seen under nesting): where the vCPU was, on one line. (A
/// real-mode triple fault itself does not reach KVM_EXIT_SHUTDOWN on PVM.)
#[test]
fn the_vcpu_state_told_at_a_triple_fault() {
    let (vm, _, _) = vm_running(&[0xf4], false);
    let vcpu = &vm.vcpus()[0];
    let mut regs = vcpu.get_regs().unwrap();
    regs.rax = 0xdead_beef;
    vcpu.set_regs(&regs).unwrap();
    let state = uvm::vmm::vcpu::triple_fault_state(vcpu, 0);
    assert!(
        state.starts_with("vCPU 0 triple-faulted at rip=0x1000 ")
            && state.contains(" rax=0xdeadbeef "),
        "{state}"
    );
    assert!(
        state.contains(" cr0=0x") && state.contains(" efer=0x"),
        "{state}"
    );
    assert!(!state.contains('\n'), "{state}");
}
