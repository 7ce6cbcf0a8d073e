//! The contract between the VMM and uvm's init: how the command to run
//! travels in (the kernel command line) and how its status travels out
//! (a 32-bit write to an I/O port); and, in [`relay`], how bytes move
//! between a process's pipe and a stream socket on either side.

pub mod relay;

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

/// The workload's environment (`KEY=VALUE` entries, added to the init's
/// own), encoded like [`CMD_PARAM`].
pub const ENV_PARAM: &str = "uvm.env";
/// The workload's working directory, encoded like [`CMD_PARAM`].
pub const CWD_PARAM: &str = "uvm.cwd";
/// The workload's `UID:GID`.
pub const USER_PARAM: &str = "uvm.user";
/// A device (e.g. `ttyS1`) that becomes the workload's stdout and stderr,
/// in raw mode, so that its output reaches the host byte for byte and apart
/// from the console's messages.
pub const STDIO_PARAM: &str = "uvm.stdio";

/// Makes uvm-init run the guest agent ([`AGENT_BIN`]) as the workload
/// instead of a command; the value is the agent's vsock control port.
pub const AGENT_PARAM: &str = "uvm.agent";
/// virtio-fs shares the init mounts, a list (see [`encode_list`]) of
/// `TAG ro|rw PATH` items.
pub const FS_PARAM: &str = "uvm.fs";
pub const AGENT_BIN: &str = "/bin/uvm-agent";

/// A virtio-fs share the init mounts: the device's tag, read-only or
/// not, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub read_only: bool,
    pub path: String,
}

/// `uvm.fs=...` for `shares`.
pub fn encode_shares(shares: &[Share]) -> String {
    let items: Vec<String> = shares
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s.tag,
                if s.read_only { "ro" } else { "rw" },
                s.path
            )
        })
        .collect();
    encode_list(FS_PARAM, &items)
}

/// The shares `uvm.fs=` names (none when absent).
pub fn decode_shares(cmdline: &str) -> Result<Vec<Share>, String> {
    let Some(items) = decode_list(cmdline, FS_PARAM)? else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|item| {
            let mut w = item.splitn(3, ' ');
            let (tag, mode, path) = (w.next(), w.next(), w.next());
            match (tag, mode, path) {
                (Some(tag), Some(mode @ ("ro" | "rw")), Some(path))
                    if !tag.is_empty() && path.starts_with('/') =>
                {
                    Ok(Share {
                        tag: tag.to_string(),
                        read_only: mode == "ro",
                        path: path.to_string(),
                    })
                }
                _ => Err(format!("{FS_PARAM}: {item:?} is not TAG ro|rw /PATH")),
            }
        })
        .collect()
}

/// `uvm.cmd=...` for `argv`.
pub fn encode_command(argv: &[String]) -> String {
    encode_list(CMD_PARAM, argv)
}

/// `NAME=...` for a list of strings: NUL-separated, base64url.
pub fn encode_list(name: &str, items: &[String]) -> String {
    let joined = items.join("\0");
    format!("{name}={}", URL_SAFE_NO_PAD.encode(joined.as_bytes()))
}

/// Finds and decodes `uvm.cmd=` in a kernel command line.
pub fn decode_command(cmdline: &str) -> Result<Option<Vec<String>>, String> {
    match decode_list(cmdline, CMD_PARAM)? {
        Some(v) if v.len() == 1 && v[0].is_empty() => Err(format!("{CMD_PARAM}: empty command")),
        v => Ok(v),
    }
}

/// Finds and decodes a list written by [`encode_list`] (an empty value is
/// one empty string).
pub fn decode_list(cmdline: &str, name: &str) -> Result<Option<Vec<String>>, String> {
    let prefix = format!("{name}=");
    let Some(value) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
    else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| format!("{name}: not base64url: {e}"))?;
    let s = String::from_utf8(bytes).map_err(|_| format!("{name}: not UTF-8"))?;
    Ok(Some(s.split('\0').map(str::to_owned).collect()))
}

/// Parses `UID[:GID]` (the group defaults to the uid's number).
pub fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("user {s}: expected UID[:GID] as numbers"))
    };
    Ok((num(u)?, num(g)?))
}

/// Value of `name=` in a kernel command line (last one wins, as in the kernel).
pub fn param<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// Makes a panic on any thread end the whole process (after the usual
/// message), as `panic = "abort"` would: a VMM, agent or init with one
/// thread dead and the rest running is worse than none. Called first in
/// every binary's `main`. Not set in the release profile, because the test
/// build (whose harness needs unwinding) would then compile every crate a
/// second time.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_trip_with_any_path() {
        let shares = vec![
            Share {
                tag: "fs0".into(),
                read_only: true,
                path: "/data dir/with 'quotes'".into(),
            },
            Share {
                tag: "b".into(),
                read_only: false,
                path: "/mnt/b".into(),
            },
        ];
        let line = format!("quiet {} x=1", encode_shares(&shares));
        assert_eq!(decode_shares(&line).unwrap(), shares);
        assert!(decode_shares("quiet").unwrap().is_empty());
        for bad in ["fs0 rx /a", "fs0 ro a", " ro /a", "fs0"] {
            let line = encode_list(FS_PARAM, &[bad.to_string()]);
            assert!(decode_shares(&line).is_err(), "{bad:?}");
        }
    }

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
    fn lists_and_users() {
        let env = vec!["A=1".to_string(), "B=x y".to_string()];
        let line = format!(
            "quiet {} {}",
            encode_list(ENV_PARAM, &env),
            encode_list(CWD_PARAM, &["/w d".into()])
        );
        assert_eq!(decode_list(&line, ENV_PARAM).unwrap(), Some(env));
        assert_eq!(
            decode_list(&line, CWD_PARAM).unwrap(),
            Some(vec!["/w d".into()])
        );
        assert_eq!(decode_list(&line, "uvm.none").unwrap(), None);
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1:2").unwrap(), (1, 2));
        assert!(parse_user("bob").is_err());
        assert!(decode_command(&encode_command(&[])).is_err());
    }

    #[test]
    fn params() {
        assert_eq!(param("a=1 ip=10.0.0.2::10.0.0.1 ip=x", "ip"), Some("x"));
        assert_eq!(param("ipx=1", "ip"), None);
    }
}
