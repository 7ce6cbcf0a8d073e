//! The API between uvm and its guest agent.
//!
//! Control travels as ttrpc (the framing containerd and Kata use) on one
//! vsock connection to [`AGENT_PORT`]: the generated [`agent`] messages and
//! [`agent_ttrpc`] client and server. A process's stdin, stdout and stderr
//! each travel on a vsock connection of their own to [`STDIO_PORT`], which
//! opens with one [`StreamHeader`] line and the agent's `OK` (or `ERR why`)
//! line; after that the connection carries the stream's bytes and nothing
//! else, and its end is the stream's end. Separate connections keep one
//! stream's back-pressure off the others and off the control channel.

// Generated code: its style is the generator's.
#[allow(clippy::all, clippy::pedantic, unsafe_op_in_unsafe_fn, missing_docs)]
mod api {
    include!(concat!(env!("OUT_DIR"), "/api/modules.rs"));
}
pub use api::{agent, agent_ttrpc};
pub use protobuf;
pub use ttrpc;

/// The vsock port the agent's ttrpc server listens on.
pub const AGENT_PORT: u32 = 1024;
/// The vsock port of the agent's stdio streams.
pub const STDIO_PORT: u32 = 1025;

/// One of a process's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdin => "stdin",
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The first line of a stdio connection: which process's which stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// "" for a process of the VM itself.
    pub container_id: String,
    /// "" for the container's own process.
    pub exec_id: String,
    pub stream: Stream,
}

/// Longest header line the agent reads.
pub const MAX_HEADER: usize = 512;

/// Container and exec ids: what a header can carry unambiguously (and a
/// path component can hold).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !id.starts_with('.')
}

impl StreamHeader {
    /// The header line, newline included.
    pub fn encode(&self) -> String {
        let id = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "STDIO {} {} {}\n",
            id(&self.container_id),
            id(&self.exec_id),
            self.stream.name()
        )
    }

    /// Parses a header line (without its newline).
    pub fn parse(line: &str) -> Result<StreamHeader, String> {
        let mut w = line.split(' ');
        let (Some("STDIO"), Some(c), Some(e), Some(s), None) =
            (w.next(), w.next(), w.next(), w.next(), w.next())
        else {
            return Err(format!(
                "bad stdio header {line:?}: expected STDIO CONTAINER EXEC STREAM"
            ));
        };
        let id = |v: &str| -> Result<String, String> {
            match v {
                "-" => Ok(String::new()),
                v if valid_id(v) => Ok(v.to_string()),
                v => Err(format!("bad id {v:?} in stdio header")),
            }
        };
        let stream = match s {
            "stdin" => Stream::Stdin,
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            s => return Err(format!("bad stream {s:?} in stdio header")),
        };
        Ok(StreamHeader {
            container_id: id(c)?,
            exec_id: id(e)?,
            stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_refuse_garbage() {
        for (c, e, s) in [
            ("", "", Stream::Stdin),
            ("web", "", Stream::Stdout),
            ("web", "exec-1", Stream::Stderr),
        ] {
            let h = StreamHeader {
                container_id: c.into(),
                exec_id: e.into(),
                stream: s,
            };
            let line = h.encode();
            assert!(line.ends_with('\n') && line.len() < MAX_HEADER);
            assert_eq!(StreamHeader::parse(line.trim_end()).unwrap(), h);
        }
        for bad in [
            "",
            "STDIO",
            "STDIO a b",
            "STDIO a b stdout extra",
            "STDIO a b stdio",
            "STDIO ../x - stdout",
            "STDIO a/b - stdout",
            "stdio a - stdout",
            "STDIO .hidden - stdout",
        ] {
            assert!(StreamHeader::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_encode_and_decode() {
        use protobuf::Message;
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "c1".into();
        req.process.mut_or_insert_default().args = vec!["sh".into(), "-c".into(), "exit 3".into()];
        req.stdio.mut_or_insert_default().stdout = true;
        let bytes = req.write_to_bytes().unwrap();
        let back = agent::ExecProcessRequest::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back, req);
        assert!(agent::ExecProcessRequest::parse_from_bytes(&[0xff, 0xff, 0xff]).is_err());
    }
}
