//! Loading the kernel, initramfs and command line, and the zero page that
//! describes them (and the e820 map) to the kernel.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{CMDLINE, CMDLINE_MAX, HIMEM, MMIO_HOLE_START, RSDP, ZERO_PAGE};
use super::memory::e820_map;
use crate::error::Error;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
/// End of the real-mode heap, relative to the setup code, as a bootloader
/// that loads setup at 0x90000 would set it.
const HEAP_END: u16 = 0xfe00;
/// 64-bit entry point offset inside a bzImage's protected-mode part.
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;

pub struct LoadedKernel {
    pub entry: GuestAddress,
    kernel_end: u64,
    header: Option<linux_loader::bootparam::setup_header>,
}

/// Opens `path` and tells whether it is an ELF (else it must be a bzImage).
fn open_kernel(path: &Path) -> Result<(File, bool), Error> {
    let open_err = |e| Error::KernelOpen(path.to_path_buf(), e);
    let mut file = File::open(path).map_err(open_err)?;
    if !file.metadata().map_err(open_err)?.is_file() {
        return Err(Error::KernelFormat(
            path.to_path_buf(),
            "not a regular file".into(),
        ));
    }
    let mut head = [0u8; 0x206];
    let n = file.read(&mut head).map_err(open_err)?;
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;
    let is_elf = n >= 4 && head[..4] == *b"\x7fELF";
    let is_bzimage = n >= 0x206 && head[0x202..0x206] == KERNEL_HDR_MAGIC.to_le_bytes();
    if !is_elf && !is_bzimage {
        return Err(Error::KernelFormat(
            path.to_path_buf(),
            "no ELF magic and no bzImage header".into(),
        ));
    }
    Ok((file, is_elf))
}

/// Cheap check of a kernel file, without guest memory.
pub fn check_kernel(path: &Path) -> Result<(), Error> {
    open_kernel(path).map(|_| ())
}

/// Cheap check of an initramfs file.
pub fn check_initrd(path: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::InitrdOpen(path.to_path_buf(), e))?;
    if !meta.is_file() {
        return Err(Error::InitrdOpen(
            path.to_path_buf(),
            std::io::Error::other("not a regular file"),
        ));
    }
    Ok(())
}

/// Loads an ELF vmlinux or a bzImage, whichever `path` holds.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, Error> {
    let (mut file, is_elf) = open_kernel(path)?;
    let format_err =
        |e: linux_loader::loader::Error| Error::KernelFormat(path.to_path_buf(), e.to_string());
    if is_elf {
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM))).map_err(format_err)?;
        Ok(LoadedKernel {
            entry: r.kernel_load,
            kernel_end: r.kernel_end,
            header: r.setup_header,
        })
    } else {
        let r =
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM))).map_err(format_err)?;
        Ok(LoadedKernel {
            entry: r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY),
            kernel_end: r.kernel_end,
            header: r.setup_header,
        })
    }
}

pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Places the initramfs as high as the kernel allows in low RAM, page aligned.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, Error> {
    let open_err = |e| Error::InitrdOpen(path.to_path_buf(), e);
    let mut file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(Error::InitrdOpen(
            path.to_path_buf(),
            std::io::Error::other("not a regular file"),
        ));
    }
    let size = meta.len();
    let lowmem_end = mem.last_addr().raw_value().min(MMIO_HOLE_START - 1);
    let addr_max = kernel
        .header
        .map_or(u64::from(u32::MAX >> 1), |h| u64::from(h.initrd_addr_max))
        .min(lowmem_end);
    let addr = (addr_max + 1)
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel.kernel_end && size > 0)
        .ok_or_else(|| Error::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
        })?;
    let addr = GuestAddress(addr);
    let usize_size = usize::try_from(size).map_err(|_| Error::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
    })?;
    mem.read_exact_volatile_from(addr, &mut file, usize_size)
        .map_err(|e| Error::InitrdOpen(path.to_path_buf(), std::io::Error::other(e.to_string())))?;
    Ok(LoadedInitrd { addr, size })
}

/// Builds the command line; `extra` is appended verbatim after uvm's own.
pub fn cmdline(parts: &[&str]) -> Result<Cmdline, Error> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| Error::Cmdline(e.to_string()))?;
    for part in parts.iter().filter(|p| !p.trim().is_empty()) {
        cmdline.insert_str(part.trim()).map_err(|e| {
            Error::Cmdline(format!(
                "{e} (the kernel accepts at most {} bytes)",
                CMDLINE_MAX - 1
            ))
        })?;
    }
    Ok(cmdline)
}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    initrd: Option<&LoadedInitrd>,
    cmdline: &Cmdline,
    mem_size: u64,
) -> Result<(), Error> {
    load_cmdline(mem, GuestAddress(CMDLINE), cmdline).map_err(|e| Error::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| Error::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let mut params = boot_params::default();
    match kernel.header {
        Some(h) => params.hdr = h,
        None => {
            // An ELF vmlinux has no setup header: describe what a bzImage would.
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = HEAP_END;
    params.hdr.cmd_line_ptr =
        u32::try_from(CMDLINE).map_err(|_| Error::BootSetup("command line above 4 GiB"))?;
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if let Some(initrd) = initrd {
        // load_initrd keeps it below 4 GiB.
        params.hdr.ramdisk_image = u32::try_from(initrd.addr.raw_value()).unwrap_or(0);
        params.hdr.ramdisk_size = u32::try_from(initrd.size).unwrap_or(0);
    }
    params.acpi_rsdp_addr = RSDP;
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(Error::BootSetup("e820 map has too many entries"));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries =
        u8::try_from(map.len()).map_err(|_| Error::BootSetup("e820 map has too many entries"))?;

    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|_| Error::BootSetup("zero page does not fit in guest memory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    fn mem(size: u64) -> GuestMemoryMmap {
        crate::vmm::memory::create(size, false).unwrap()
    }

    /// A minimal image with a valid bzImage setup header.
    fn fake_bzimage() -> tempfile_path::TempPath {
        let mut img = vec![0u8; 0x4000];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
        img[0x211] = LOADED_HIGH;
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x400] = 0xf4; // "protected-mode code"
        tempfile_path::with_bytes(&img)
    }

    #[test]
    fn loads_bzimage_at_1mib_and_fills_zero_page() {
        let m = mem(256 << 20);
        let k = fake_bzimage();
        let kernel = load_kernel(&m, k.path()).unwrap();
        assert_eq!(kernel.entry, GuestAddress(HIMEM + 0x200));
        let initrd_file = tempfile_path::with_bytes(&[0x5a; 10000]);
        let initrd = load_initrd(&m, initrd_file.path(), &kernel).unwrap();
        assert_eq!(initrd.addr.0 % 4096, 0);
        assert!(initrd.addr.0 + initrd.size <= 256 << 20);
        assert_eq!(m.read_obj::<u8>(initrd.addr).unwrap(), 0x5a);

        let cl = cmdline(&["console=ttyS0", "  ", "foo=\"a b\""]).unwrap();
        write_boot_params(&m, &kernel, Some(&initrd), &cl, 256 << 20).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!(
            hdr.loadflags & (LOADED_HIGH | CAN_USE_HEAP),
            LOADED_HIGH | CAN_USE_HEAP
        );
        assert_eq!(u64::from(hdr.cmd_line_ptr), CMDLINE);
        assert_eq!(u64::from(hdr.ramdisk_image), initrd.addr.0);
        assert_eq!({ hdr.ramdisk_size }, 10000);
        assert_eq!({ p.acpi_rsdp_addr }, RSDP);
        assert_eq!(p.e820_entries, 3);
        let mut line = vec![0u8; 26];
        m.read_slice(&mut line, GuestAddress(CMDLINE)).unwrap();
        assert_eq!(&line, b"console=ttyS0 foo=\"a b\"\0\0\0");
    }

    #[test]
    fn rejects_bad_kernels() {
        let m = mem(64 << 20);
        let missing = load_kernel(&m, Path::new("/nonexistent/vmlinuz"));
        assert!(matches!(missing, Err(Error::KernelOpen(..))));
        let text = tempfile_path::with_bytes(b"#!/bin/sh\necho this is not a kernel\n");
        assert!(matches!(
            load_kernel(&m, text.path()),
            Err(Error::KernelFormat(..))
        ));
        let dir = load_kernel(&m, Path::new("/tmp"));
        assert!(matches!(
            dir,
            Err(Error::KernelFormat(..)) | Err(Error::KernelOpen(..))
        ));
    }

    #[test]
    fn rejects_an_initrd_that_does_not_fit() {
        let m = mem(64 << 20);
        let kernel = load_kernel(&m, fake_bzimage().path()).unwrap();
        let big = tempfile_path::with_bytes(&vec![0u8; 70 << 20]);
        assert!(matches!(
            load_initrd(&m, big.path(), &kernel),
            Err(Error::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn overlong_command_line_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX);
        assert!(matches!(cmdline(&[&long]), Err(Error::Cmdline(_))));
    }

    /// Temporary files for tests, removed on drop.
    mod tempfile_path {
        use super::*;
        pub struct TempPath(std::path::PathBuf);
        impl TempPath {
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub fn with_bytes(bytes: &[u8]) -> TempPath {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "uvm-boot-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
            TempPath(p)
        }
    }
}
