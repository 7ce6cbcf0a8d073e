//! Guest RAM and the e820 map the kernel is told about.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

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

/// Guest RAM, private and anonymous; or, when `shared`, in one memfd
/// mapped shared, so that a vhost-user backend can map the same pages
/// (the fd goes to it with the memory table).
pub fn create(size: u64, shared: bool) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(a, l)| usize::try_from(l).map(|l| (a, l)))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::MemoryTooLarge {
            size,
            available: usize::MAX as u64,
        })?;
    if !shared {
        return GuestMemoryMmap::from_ranges(&ranges).map_err(Error::GuestMemory);
    }
    let file = Arc::new(memfd(size)?);
    // Each range at its own offset in the one file: the file is the RAM
    // without the MMIO hole.
    let mut offset = 0u64;
    let with_files: Vec<_> = ranges
        .iter()
        .map(|&(addr, len)| {
            let r = (addr, len, Some(FileOffset::from_arc(file.clone(), offset)));
            offset += len as u64;
            r
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(with_files).map_err(Error::GuestMemory)
}

fn memfd(size: u64) -> Result<File, Error> {
    let err = |e| Error::Io("creating the guest's shared memory (memfd)".into(), e);
    let name = c"uvm-guest-ram";
    // SAFETY: memfd_create with a NUL-terminated name; the fd it returns
    // is new and owned by nothing else.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size).map_err(err)?;
    Ok(file)
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
        let mem = create(256 << 20, false).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((256 << 20) - 1));
    }

    #[test]
    fn shared_memory_is_one_memfd_across_the_hole() {
        use vm_memory::{Bytes, GuestMemoryRegion};
        let size = MMIO_HOLE_START + (64 << 20);
        let mem = create(size, true).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let (lo, hi) = (
            regions[0].file_offset().unwrap(),
            regions[1].file_offset().unwrap(),
        );
        assert_eq!((lo.start(), hi.start()), (0, MMIO_HOLE_START));
        assert_eq!(lo.file().metadata().unwrap().len(), size);
        // The mapping is shared: a write shows in the file.
        mem.write_obj(0xabcdu16, GuestAddress(MMIO_HOLE_END))
            .unwrap();
        let mut b = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(hi.file(), &mut b, MMIO_HOLE_START).unwrap();
        assert_eq!(u16::from_le_bytes(b), 0xabcd);
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
