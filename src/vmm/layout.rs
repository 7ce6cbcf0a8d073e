//! Where things live in guest-physical and port-I/O space.

/// Zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Top of the boot stack the kernel entry sees (it sets up its own at once).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, one PDPT, four PDs (4 GiB, 2 MiB pages).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
pub const PD_COUNT: u64 = 4;
/// Boot GDT (null, code64, data, TSS) and an empty IDT.
pub const GDT: u64 = 0x500;
pub const IDT: u64 = 0x520;
/// Kernel command line and its limit (x86 COMMAND_LINE_SIZE).
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// Start of the EBDA: low RAM ends here; [EBDA, 1 MiB) is reserved.
pub const EBDA: u64 = 0x9fc00;
/// ACPI: RSDP where the kernel scans for it, the tables right after it.
pub const RSDP: u64 = 0xe0000;
pub const ACPI_TABLES: u64 = 0xe0100;
/// Where the protected-mode kernel is loaded.
pub const HIMEM: u64 = 0x10_0000;

/// The 32-bit MMIO hole: RAM above it continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// virtio-mmio windows, one 4 KiB page per device.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// KVM's TSS (three pages) and identity-map page sit at the top of the hole,
/// clear of the IOAPIC (0xfec00000) and LAPIC (0xfee00000).
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;
pub const KVM_TSS: u64 = 0xfffb_d000;

/// Legacy interrupt lines (IOAPIC pins).
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ for virtio-mmio devices; one each, up to the last IOAPIC pin.
pub const VIRTIO_IRQ_BASE: u32 = 5;
pub const IOAPIC_PINS: u32 = 24;

/// Port I/O.
pub const COM1: u16 = 0x3f8;
pub const PVPANIC_PORT: u16 = 0x505;
