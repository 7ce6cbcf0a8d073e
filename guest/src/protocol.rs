//! The contract between the VMM and uvm's init: how the command to run
//! travels in (the kernel command line) and how its status travels out
//! (a 32-bit write to an I/O port).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Kernel parameter carrying the command: NUL-separated argv, base64url, so
/// any bytes (quotes, spaces, newlines) survive the kernel's parser.
pub const CMD_PARAM: &str = "uvm.cmd";

/// The status port (see uvm-devices' legacy::status, which must agree).
pub const STATUS_PORT: u16 = 0x510;
pub const STATUS_MAGIC: u32 = 0x7576;
pub const STATUS_READY: u32 = 1;
pub const STATUS_EXIT: u32 = 2;

pub fn status_value(kind: u32, payload: u8) -> u32 {
    (STATUS_MAGIC << 16) | (kind << 8) | u32::from(payload)
}

/// `uvm.cmd=...` for `argv`.
pub fn encode_command(argv: &[String]) -> String {
    let joined = argv.join("\0");
    format!("{CMD_PARAM}={}", URL_SAFE_NO_PAD.encode(joined.as_bytes()))
}

/// Finds and decodes `uvm.cmd=` in a kernel command line.
pub fn decode_command(cmdline: &str) -> Result<Option<Vec<String>>, String> {
    let prefix = format!("{CMD_PARAM}=");
    let Some(value) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
    else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| format!("{CMD_PARAM}: not base64url: {e}"))?;
    let s = String::from_utf8(bytes).map_err(|_| format!("{CMD_PARAM}: not UTF-8"))?;
    if s.is_empty() {
        return Err(format!("{CMD_PARAM}: empty command"));
    }
    Ok(Some(s.split('\0').map(str::to_owned).collect()))
}

/// Value of `name=` in a kernel command line (last one wins, as in the kernel).
pub fn param<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_any_bytes() {
        let argv: Vec<String> = ["sh", "-c", "echo \"a b\"; exit 7\n", "", "ü"]
            .map(String::from)
            .to_vec();
        let p = encode_command(&argv);
        assert!(!p.contains(' ') && !p.contains('"'));
        let line = format!("console=ttyS0 {p} quiet");
        assert_eq!(decode_command(&line).unwrap(), Some(argv));
        assert_eq!(decode_command("console=ttyS0").unwrap(), None);
        assert!(decode_command("uvm.cmd=!!!").is_err());
    }

    #[test]
    fn params() {
        assert_eq!(param("a=1 ip=10.0.0.2::10.0.0.1 ip=x", "ip"), Some("x"));
        assert_eq!(param("ipx=1", "ip"), None);
    }
}
