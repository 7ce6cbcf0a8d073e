//! ACPI tables: how the guest learns its CPUs (MADT), its devices (DSDT) and
//! how to power off and reset (hardware-reduced FADT). Debian's cloud kernel
//! has no MP-table parser and finds virtio-mmio devices only here.

use acpi_tables::{aml, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

pub const SLEEP_CONTROL_PORT: u16 = 0x600;
pub const SLEEP_STATUS_PORT: u16 = 0x601;
pub const RESET_PORT: u16 = 0x602;
pub const RESET_VALUE: u8 = 0x01;
/// SLP_TYP of S5 in the DSDT's `_S5_` (the power device checks the same).
pub const S5_SLP_TYP: u8 = 5;

const OEM_ID: [u8; 6] = *b"UVM   ";
const OEM_TABLE_ID: [u8; 8] = *b"UVMVM   ";
const OEM_REVISION: u32 = 1;
const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// MADT flag: the PC's dual 8259s are present (KVM's in-kernel PIC is), so
/// the kernel masks them before using the IOAPIC.
const MADT_PCAT_COMPAT: u32 = 1;

/// FADT field offsets (ACPI 6.x, table length 276).
mod fadt {
    pub const LEN: u32 = 276;
    pub const REVISION: u8 = 6;
    pub const MINOR_REVISION: u8 = 5;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const SLEEP_CONTROL_REG: usize = 244;
    pub const SLEEP_STATUS_REG: usize = 256;
    pub const HYPERVISOR_VENDOR: usize = 268;
    /// IAPC_BOOT_ARCH: no VGA, no MSI, no CMOS RTC. No 8042 flag either:
    /// uvm's i8042 only takes the reset command, and the flag would make
    /// the kernel probe it (slowly) as a keyboard controller.
    pub const BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);
    pub const FLAG_RESET_REG_SUP: u32 = 1 << 10;
    pub const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
    pub const FLAG_PWR_BUTTON: u32 = 1 << 4; // set = no fixed power button
    pub const FLAG_SLP_BUTTON: u32 = 1 << 5; // set = no fixed sleep button
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcpiDevice {
    /// 16550 UART (PNP0501).
    Serial { port: u16, irq: u32 },
    /// virtio-mmio window (LNRO0005), one edge-triggered interrupt.
    VirtioMmio { base: u64, len: u64, irq: u32 },
    /// pvpanic (QEMU0001) on one I/O port.
    Pvpanic { port: u16 },
}

#[derive(Debug, Clone)]
pub struct AcpiConfig {
    pub vcpus: u8,
    pub devices: Vec<AcpiDevice>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    #[error("virtio-mmio window {0:#x} is outside the 32-bit space")]
    WindowAbove4G(u64),
    #[error("the tables do not fit in guest memory at {0:#x}")]
    Write(u64),
}

/// A generic address structure for one byte of port I/O.
fn gas_io_byte(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // SystemIO
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

pub fn dsdt(devices: &[AcpiDevice]) -> Result<Sdt, AcpiError> {
    let mut body = Vec::new();
    let mut virtio_index = 0u8;
    let mut serial_index = 0u8;
    for dev in devices {
        let bytes = match dev {
            AcpiDevice::Serial { port, irq } => {
                serial_index = serial_index.wrapping_add(1);
                let name = format!("_SB_.COM{serial_index}");
                let uid = u32::from(serial_index - 1);
                aml_bytes(&aml::Device::new(
                    name.as_str().into(),
                    vec![
                        &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                        &aml::Name::new("_UID".into(), &uid),
                        &aml::Name::new(
                            "_CRS".into(),
                            &aml::ResourceTemplate::new(vec![
                                &aml::IO::new(*port, *port, 1, 8),
                                &aml::Interrupt::new(true, true, false, false, *irq),
                            ]),
                        ),
                    ],
                ))
            }
            AcpiDevice::Pvpanic { port } => aml_bytes(&aml::Device::new(
                "_SB_.PEVT".into(),
                vec![
                    &aml::Name::new("_HID".into(), &"QEMU0001"),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![&aml::IO::new(*port, *port, 1, 1)]),
                    ),
                ],
            )),
            AcpiDevice::VirtioMmio { base, len, irq } => {
                let base32 = u32::try_from(*base).map_err(|_| AcpiError::WindowAbove4G(*base))?;
                let len32 = u32::try_from(*len).map_err(|_| AcpiError::WindowAbove4G(*base))?;
                let name = format!("_SB_.V{virtio_index:03X}");
                let uid = u32::from(virtio_index);
                virtio_index = virtio_index.wrapping_add(1);
                aml_bytes(&aml::Device::new(
                    name.as_str().into(),
                    vec![
                        &aml::Name::new("_HID".into(), &"LNRO0005"),
                        &aml::Name::new("_UID".into(), &uid),
                        &aml::Name::new(
                            "_CRS".into(),
                            &aml::ResourceTemplate::new(vec![
                                &aml::Memory32Fixed::new(true, base32, len32),
                                &aml::Interrupt::new(true, true, false, false, *irq),
                            ]),
                        ),
                    ],
                ))
            }
        };
        body.extend(bytes);
    }
    // \_S5: SLP_TYPa, SLP_TYPb (the kernel writes SLP_TYPa to the sleep
    // control register on poweroff).
    body.extend(aml_bytes(&aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &aml::ZERO, &aml::ZERO]),
    )));
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&body);
    Ok(sdt)
}

pub fn fadt(dsdt_addr: u64) -> Sdt {
    let mut t = Sdt::new(
        *b"FACP",
        fadt::LEN,
        fadt::REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u16(fadt::IAPC_BOOT_ARCH, fadt::BOOT_ARCH);
    t.write_u32(
        fadt::FLAGS,
        fadt::FLAG_HW_REDUCED_ACPI
            | fadt::FLAG_RESET_REG_SUP
            | fadt::FLAG_PWR_BUTTON
            | fadt::FLAG_SLP_BUTTON,
    );
    t.write_bytes(fadt::RESET_REG, &gas_io_byte(RESET_PORT));
    t.write_u8(fadt::RESET_VALUE, RESET_VALUE);
    t.write_u8(fadt::MINOR_VERSION, fadt::MINOR_REVISION);
    t.write_u64(fadt::X_DSDT, dsdt_addr);
    t.write_bytes(fadt::SLEEP_CONTROL_REG, &gas_io_byte(SLEEP_CONTROL_PORT));
    t.write_bytes(fadt::SLEEP_STATUS_REG, &gas_io_byte(SLEEP_STATUS_PORT));
    t.write_bytes(fadt::HYPERVISOR_VENDOR, b"UVM\0\0\0\0\0");
    t.update_checksum();
    t
}

pub fn madt(vcpus: u8) -> Sdt {
    use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC_ADDR);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for i in 0..vcpus {
        t.append_slice(&aml_bytes(&ProcessorLocalApic::new(
            i,
            i,
            EnabledStatus::Enabled,
        )));
    }
    // The IOAPIC's id follows the CPUs' so no APIC id is used twice.
    t.append_slice(&aml_bytes(&IoApic::new(vcpus, IOAPIC_ADDR, 0)));
    // LINT1 of every processor is NMI (as regs::lapic programs it).
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t
}

/// Writes RSDP at `rsdp_addr` and the tables from `tables_addr` on; returns
/// the RSDP's address.
pub fn create_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    rsdp_addr: GuestAddress,
    tables_addr: GuestAddress,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    if cfg.vcpus == 0 {
        return Err(AcpiError::NoVcpus);
    }
    let mut at = tables_addr;
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let addr = at;
        mem.write_slice(bytes, addr)
            .map_err(|_| AcpiError::Write(addr.raw_value()))?;
        // 8-byte alignment keeps every table's 64-bit fields aligned.
        at = GuestAddress((addr.raw_value() + bytes.len() as u64 + 7) & !7);
        Ok(addr.raw_value())
    };
    let dsdt_addr = place(dsdt(&cfg.devices)?.as_slice())?;
    let fadt_addr = place(fadt(dsdt_addr).as_slice())?;
    let madt_addr = place(madt(cfg.vcpus).as_slice())?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(&aml_bytes(&xsdt))?;
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    mem.write_slice(&rsdp, rsdp_addr)
        .map_err(|_| AcpiError::Write(rsdp_addr.raw_value()))?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut v = vec![0u8; len as usize];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn build(vcpus: u8) -> (GuestMemoryMmap, Vec<u8>) {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cfg = AcpiConfig {
            vcpus,
            devices: vec![
                AcpiDevice::Serial {
                    port: 0x3f8,
                    irq: 4,
                },
                AcpiDevice::Pvpanic { port: 0x505 },
                AcpiDevice::VirtioMmio {
                    base: 0xd000_0000,
                    len: 0x1000,
                    irq: 5,
                },
                AcpiDevice::VirtioMmio {
                    base: 0xd000_1000,
                    len: 0x1000,
                    irq: 6,
                },
            ],
        };
        let rsdp =
            create_acpi_tables(&mem, GuestAddress(0xe0000), GuestAddress(0xe0100), &cfg).unwrap();
        let mut r = vec![0u8; 36];
        mem.read_slice(&mut r, rsdp).unwrap();
        (mem, r)
    }

    #[test]
    fn rsdp_xsdt_fadt_dsdt_chain_with_checksums() {
        let (mem, rsdp) = build(2);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: XSDT");
        let xsdt = table_at(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        let entries: Vec<Vec<u8>> = (36..xsdt.len())
            .step_by(8)
            .map(|o| table_at(&mem, u64_at(&xsdt, o)))
            .collect();
        let sigs: Vec<&[u8]> = entries.iter().map(|t| &t[..4]).collect();
        assert_eq!(sigs, [b"FACP", b"APIC"]);
        let fadt = &entries[0];
        assert_eq!(fadt.len(), 276);
        assert_eq!(sum(fadt), 0);
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        assert_eq!(fadt[116], 1, "reset register in I/O space");
        assert_eq!(u64_at(fadt, 120), u64::from(RESET_PORT));
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(u64_at(fadt, 248), u64::from(SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(fadt, 260), u64::from(SLEEP_STATUS_PORT));
        let boot_arch = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_ne!(boot_arch & (1 << 5), 0, "no CMOS RTC");
        assert_eq!(boot_arch & (1 << 1), 0, "no 8042 probing");
        let dsdt = table_at(&mem, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(&dsdt), 0);
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"LNRO0005") && has(b"QEMU0001") && has(b"_S5_"));
        // PNP0501 as a compressed EISA id.
        assert!(has(&[0x41, 0xd0, 0x05, 0x01]));
        // Both virtio windows, as Memory32Fixed base addresses.
        assert!(has(&0xd000_0000u32.to_le_bytes()) && has(&0xd000_1000u32.to_le_bytes()));
    }

    #[test]
    fn madt_lists_every_vcpu_and_one_ioapic() {
        for vcpus in [1u8, 2, 4, 64] {
            let (mem, rsdp) = build(vcpus);
            let xsdt = table_at(&mem, u64_at(&rsdp, 24));
            let madt = table_at(&mem, u64_at(&xsdt, 44));
            assert_eq!(&madt[..4], b"APIC");
            assert_eq!(sum(&madt), 0);
            assert_eq!(u32_at(&madt, 36), LAPIC_ADDR);
            let (mut lapics, mut ioapics, mut off) = (vec![], vec![], 44);
            while off < madt.len() {
                let (kind, len) = (madt[off], madt[off + 1] as usize);
                assert!(len > 0);
                match kind {
                    0 => {
                        assert_eq!(u32_at(&madt, off + 4) & 1, 1, "enabled");
                        lapics.push(madt[off + 3]);
                    }
                    1 => ioapics.push((madt[off + 2], u32_at(&madt, off + 4))),
                    _ => {}
                }
                off += len;
            }
            assert_eq!(lapics, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(ioapics, [(vcpus, IOAPIC_ADDR)]);
        }
    }

    #[test]
    fn errors_instead_of_panics() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let cfg = |vcpus| AcpiConfig {
            vcpus,
            devices: vec![],
        };
        assert!(matches!(
            create_acpi_tables(&mem, GuestAddress(0), GuestAddress(0x100), &cfg(0)),
            Err(AcpiError::NoVcpus)
        ));
        assert!(matches!(
            create_acpi_tables(&mem, GuestAddress(0xe0000), GuestAddress(0xe0100), &cfg(1)),
            Err(AcpiError::Write(_))
        ));
        let high = [AcpiDevice::VirtioMmio {
            base: 1 << 33,
            len: 0x1000,
            irq: 5,
        }];
        assert!(matches!(dsdt(&high), Err(AcpiError::WindowAbove4G(_))));
    }
}
