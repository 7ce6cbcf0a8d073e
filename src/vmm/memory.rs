//! Guest RAM and the e820 map the kernel is told about.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA, HIMEM, MMIO_HOLE_END, MMIO_HOLE_START};
use crate::error::Error;

/// Smallest guest that can boot a kernel and an initramfs.
pub const MIN_MEM: u64 = 64 << 20;
/// The architectural limit uvm places (the hole + 1 TiB is plenty).
pub const MAX_MEM: u64 = 1 << 40;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The guest-physical RAM ranges for `size` bytes: below the MMIO hole, and
/// above 4 GiB for what does not fit under it.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START),
        ]
    }
}

/// The e820 map: low RAM up to the EBDA, the BIOS area reserved (ACPI tables
/// live there), then RAM from 1 MiB, with the MMIO hole left out.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA,
            size: HIMEM - EBDA,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(size) {
        let start = start.0.max(HIMEM);
        let end = if start >= MMIO_HOLE_END {
            start + len
        } else {
            len
        };
        map.push(E820Entry {
            addr: start,
            size: end - start,
            kind: E820_RAM,
        });
    }
    map
}

/// Checks the requested size against uvm's limits and what the host has.
pub fn validate_size(size: u64, host_available: u64) -> Result<(), Error> {
    if size < MIN_MEM {
        return Err(Error::MemoryTooSmall { size, min: MIN_MEM });
    }
    if size > MAX_MEM || size > host_available {
        return Err(Error::MemoryTooLarge {
            size,
            available: host_available.min(MAX_MEM),
        });
    }
    Ok(())
}

/// Memory the host could give (MemTotal: guest RAM is mapped lazily, so
/// MemAvailable would refuse sizes that work fine in practice).
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb * 1024)
}

pub fn create(size: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(a, l)| usize::try_from(l).map(|l| (a, l)))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::MemoryTooLarge {
            size,
            available: usize::MAX as u64,
        })?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(Error::GuestMemory)
}

pub use uvm_runtime::limits::parse_size;

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn small_guest_is_one_range_with_bios_hole() {
        let map = e820_map(512 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (512 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let size = 7u64 << 29; // 3.5 GiB
        let map = e820_map(size);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_HOLE_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 1 << 32,
                size: 512 << 20,
                kind: E820_RAM
            }
        );
        // Every byte of RAM is in the map exactly once (minus the BIOS area).
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, size - (HIMEM - EBDA));
        // No range overlaps the hole.
        for e in &map {
            assert!(e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END);
        }
    }

    #[test]
    fn guest_memory_matches_ranges() {
        let mem = create(256 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((256 << 20) - 1));
    }

    #[test]
    fn size_limits() {
        assert!(matches!(
            validate_size(1 << 20, 1 << 34),
            Err(Error::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            validate_size(1 << 35, 1 << 34),
            Err(Error::MemoryTooLarge { .. })
        ));
        assert!(validate_size(512 << 20, 1 << 34).is_ok());
    }
}
