//! The register state a vCPU enters the kernel with (64-bit boot protocol):
//! long mode on identity-mapped page tables, flat segments, RSI = zero page.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_STACK, GDT, IDT, PD, PDPT, PD_COUNT, PML4, ZERO_PAGE};
use crate::error::Error;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT entries: null, 64-bit code, data, TSS (the indices Linux expects for
/// __BOOT_CS = 0x10 and __BOOT_DS = 0x18 are 2 and 3).
const GDT_ENTRIES: [u64; 4] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, DPL0, exec/read, L=1, G=1
    gdt_entry(0xc093, 0, 0xfffff), // data: present, DPL0, read/write, D/B=1, G=1
];
const TSS_ENTRY: u64 = gdt_entry(0x808b, 0, 0xfffff);

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0xffff)
        | ((limit as u64 & 0xf_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// Decodes a descriptor into the form KVM wants.
fn segment(index: u16, entry: u64) -> kvm_segment {
    let flags = (entry >> 40) & 0xf0ff;
    let bit = |n: u32| ((flags >> n) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: {
            let raw =
                u32::try_from((entry & 0xffff) | ((entry >> 32) & 0xf_0000)).unwrap_or(0xf_ffff);
            // With G=1 the limit counts 4 KiB pages.
            if bit(15) == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector: index * 8,
        type_: (flags & 0xf) as u8,
        present: bit(7),
        dpl: ((flags >> 5) & 0x3) as u8,
        db: bit(14),
        s: bit(4),
        l: bit(13),
        g: bit(15),
        avl: bit(12),
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT, an empty IDT and the identity-mapping page tables.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    let write = |val: u64, at: u64| {
        mem.write_obj(val, GuestAddress(at))
            .map_err(|_| Error::BootSetup("boot tables do not fit in guest memory"))
    };
    for (i, e) in GDT_ENTRIES.iter().chain([&TSS_ENTRY]).enumerate() {
        write(*e, GDT + 8 * i as u64)?;
    }
    write(0, IDT)?;
    // PML4[0] -> PDPT; PDPT[i] -> PD i; each PD maps 1 GiB in 2 MiB pages.
    write(PDPT | 0x3, PML4)?;
    for pd in 0..PD_COUNT {
        let pd_addr = PD + pd * 0x1000;
        write(pd_addr | 0x3, PDPT + pd * 8)?;
        for i in 0..512u64 {
            let phys = (pd << 30) | (i << 21);
            write(phys | 0x83, pd_addr + i * 8)?; // present, writable, 2 MiB
        }
    }
    Ok(())
}

pub fn sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment(2, GDT_ENTRIES[2]);
    let data = segment(3, GDT_ENTRIES[3]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(4, TSS_ENTRY);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = u16::try_from(8 * (GDT_ENTRIES.len() + 1) - 1).unwrap_or(u16::MAX);
    sregs.idt.base = IDT;
    sregs.idt.limit = 7;
    // Caching stays on: KVM's reset value has CD|NW set, which no firmware
    // would leave for an OS.
    sregs.cr0 = (sregs.cr0 & !(CR0_CD | CR0_NW)) | CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = PML4;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA | EFER_SCE;
    sregs
}

pub fn regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    }
}

pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_DEF_ENABLED_WB: u64 = (1 << 11) | 6;

/// The MSRs a firmware would have left in a known state at kernel entry.
pub fn boot_msrs() -> Result<Msrs, Error> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_DEF_ENABLED_WB),
    ])
    .map_err(|_| Error::BootSetup("too many boot MSRs"))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_EXTINT: u32 = 0x7;
const DELIVERY_NMI: u32 = 0x4;

fn lapic_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &lapic.regs[off..off + 4];
    u32::from_le_bytes([
        b[0].cast_unsigned(),
        b[1].cast_unsigned(),
        b[2].cast_unsigned(),
        b[3].cast_unsigned(),
    ])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, off: usize, val: u32) {
    for (i, b) in val.to_le_bytes().iter().enumerate() {
        lapic.regs[off + i] = b.cast_signed();
    }
}

/// LINT0 delivers the PIC's ExtINT, LINT1 NMIs, as on a PC.
pub fn lapic(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(&mut lapic, APIC_LVT0, with_mode(lvt0, DELIVERY_EXTINT));
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(&mut lapic, APIC_LVT1, with_mode(lvt1, DELIVERY_NMI));
    lapic
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn segments_decode_as_long_mode_flat() {
        let cs = segment(2, GDT_ENTRIES[2]);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_),
            (0x10, 1, 0, 1, 0xb)
        );
        assert_eq!((cs.base, cs.limit, cs.g, cs.s), (0, 0xffff_ffff, 1, 1));
        let ds = segment(3, GDT_ENTRIES[3]);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_), (0x18, 0, 1, 0x3));
        let tr = segment(4, TSS_ENTRY);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(read(PML4), PDPT | 3);
        // Walk an address in the third GiB.
        let va: u64 = 0x8765_4321;
        let pdpte = read(PDPT + 8 * (va >> 30));
        let pde = read((pdpte & !0xfff) + 8 * ((va >> 21) & 0x1ff));
        assert_eq!(pde & 0x83, 0x83);
        assert_eq!((pde & !0x1f_ffff & !0xfff) | (va & 0x1f_ffff), va);
        assert_eq!(read(GDT + 16), GDT_ENTRIES[2]);
        assert!(mem.last_addr().0 >= PD + PD_COUNT * 0x1000);
    }

    #[test]
    fn special_registers_enter_long_mode() {
        let s = sregs(kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        });
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr0 & (CR0_CD | CR0_NW), 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.cr3, PML4);
        let r = regs(0x100200);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100200, ZERO_PAGE, 2));
    }

    #[test]
    fn lapic_lints() {
        let l = lapic(kvm_lapic_state::default());
        assert_eq!((lapic_reg(&l, APIC_LVT0) >> 8) & 7, DELIVERY_EXTINT);
        assert_eq!((lapic_reg(&l, APIC_LVT1) >> 8) & 7, DELIVERY_NMI);
    }
}
