//! sha256 digests (`sha256:HEX`, the only algorithm images use in practice)
//! and a reader that hashes what passes through it, so a blob is verified
//! in the same pass that unpacks it.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::image_error;
use crate::error::Result;

/// A sha256 digest, kept as its 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:HEX`; anything else (another algorithm, a short or
    /// upper-case hex string) is refused, since it names a store path.
    pub fn parse(s: &str) -> Result<Digest> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| image_error(format!("digest {s:?}: only sha256:HEX is supported")))?;
        Digest::from_hex(hex).ok_or_else(|| image_error(format!("digest {s:?} is malformed")))
    }

    /// 64 lowercase hex digits, or `None`.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        (hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Digest(hex.to_string()))
    }

    pub fn of(data: &[u8]) -> Digest {
        Digest(hex(&Sha256::digest(data)))
    }

    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as `ls` shows ids.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hashes and counts every byte read through it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads what is left (a tar's trailing blocks, a gzip trailer) so the
    /// digest covers the whole stream, and returns it with the length.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest(hex(&self.hasher.finalize())), self.len))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_hash() {
        let d = Digest::parse(&format!("sha256:{EMPTY}")).unwrap();
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.to_string(), format!("sha256:{EMPTY}"));
        assert_eq!(d.short(), "e3b0c44298fc");
        for bad in [
            "sha512:00",
            EMPTY,
            "sha256:abc",
            &format!("sha256:{}", EMPTY.to_uppercase()),
            &format!("sha256:../{}", &EMPTY[3..]),
        ] {
            let e = Digest::parse(bad).unwrap_err().to_string();
            assert_eq!(e.lines().count(), 1, "{bad}: {e}");
        }
        let mut h = Hashing::new(&b"hello"[..]);
        let mut two = [0u8; 2];
        h.read_exact(&mut two).unwrap();
        let (d, n) = h.finish().unwrap();
        assert_eq!(n, 5);
        assert_eq!(d, Digest::of(b"hello"));
    }
}
