//! A tap interface, opened (or created) through /dev/net/tun with the
//! virtio-net header in front of every frame, so frames pass between the tap
//! and the guest's rings untranslated.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::{c_int, c_short, c_uint, c_ulong};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use crate::virtio::Error;

/// The virtio 1.x header (`virtio_net_hdr_v1`): the tap is told to use the
/// same size, so the two agree byte for byte.
pub const VNET_HDR_LEN: usize = 12;

pub use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};

/// `struct ifreq` as TUNSETIFF uses it: the name, then the flags member of
/// the union, padded to the union's full size.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

// libc has the flags as int; ifr_flags is a short, and they fit.
#[allow(clippy::cast_possible_truncation)]
const TAP_FLAGS: c_short = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as c_short;
const VNET_HDR_LEN_INT: c_int = 12;
const _: () = assert!(VNET_HDR_LEN_INT as usize == VNET_HDR_LEN);

pub struct Tap {
    file: File,
    name: String,
}

/// Whether `name` can name a tap uvm opens (1 to 15 bytes, no '/', '%',
/// ':', NUL or whitespace).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| matches!(b, b'/' | b'%' | b':' | 0) || b.is_ascii_whitespace())
}

impl Tap {
    /// Attaches to the tap called `name`, creating it if it does not exist
    /// (a tap uvm creates disappears when uvm exits; a persistent one made
    /// with `ip tuntap add` stays). The fd is non-blocking.
    pub fn open(name: &str) -> Result<Self, Error> {
        // '%' would make the kernel pick a name; uvm's taps are named by the user.
        if !valid_name(name) {
            return Err(Error::TapName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(Error::TunOpen)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: TAP_FLAGS,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads a struct ifreq and writes one back through
        // the pointer; `req` has that size and layout and outlives the call.
        let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as c_ulong, &mut req) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EBUSY) => " (another process has it open)",
                Some(libc::EPERM) => {
                    " (uvm needs CAP_NET_ADMIN, or a persistent tap owned by its user)"
                }
                Some(libc::EINVAL) => " (an interface of that name exists and is not a tap)",
                _ => "",
            };
            return Err(Error::Tap {
                name: name.to_string(),
                op: "TUNSETIFF",
                source: e,
                hint,
            });
        }
        let hdr_len = VNET_HDR_LEN_INT;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `hdr_len`.
        let ret = unsafe { ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ as c_ulong, &hdr_len) };
        if ret < 0 {
            return Err(Error::Tap {
                name: name.to_string(),
                op: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
                hint: "",
            });
        }
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads frames read from the tap may use (TUN_F_*): what the
    /// guest accepted, so the kernel checksums and segments the rest.
    pub fn set_offload(&self, flags: c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no
        // memory of ours.
        let ret = unsafe {
            ioctl_with_val(
                &self.file,
                libc::TUNSETOFFLOAD as c_ulong,
                c_ulong::from(flags),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads one frame, virtio-net header first.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame, virtio-net header first.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

#[cfg(test)]
impl Tap {
    /// A stand-in for a tap: any fd that keeps frame boundaries (one end of
    /// a SOCK_SEQPACKET pair), non-blocking.
    pub(crate) fn from_file(file: File, name: &str) -> Self {
        Self {
            file,
            name: name.to_string(),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_misread_are_refused() {
        assert!(valid_name("tap0"));
        assert!(valid_name("uvm-net.1"));
        for bad in ["", "a/b", "tap%d", "a b", "x:1", "0123456789abcdef"] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(matches!(Tap::open(bad), Err(Error::TapName(_))));
        }
    }
}
