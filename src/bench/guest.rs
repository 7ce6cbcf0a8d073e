//! What the benches that drive a guest share: a VMM child whose console
//! (or the workload's stdout) is read line by line with a deadline, the
//! tap it is given, and bulk transfers to and from the guest timed on this
//! side, over TCP or any other stream.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Console lines kept to explain a failure.
const RECENT_LINES: usize = 30;
/// How long a VMM may take to exit once its guest said it is done.
const EXIT_GRACE: Duration = Duration::from_secs(60);
/// Connection attempts to a guest port the guest said it listens on (it
/// may take a moment to actually listen), one every 100 ms.
const CONNECT_TRIES: u32 = 300;
/// A transfer that moves no byte for this long has stalled.
pub const STALL: Duration = Duration::from_secs(60);

pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A tap made for one VM with the host's address `cidr`, deleted when
/// dropped: each VM gets a fresh one, so no VMM inherits another's offloads.
pub struct TapGuard(String);

impl TapGuard {
    pub fn create(name: &str, cidr: &str) -> Result<Self, String> {
        let env = |e: String| format!("cannot make tap {name}: {e}");
        ip(&["tuntap", "add", name, "mode", "tap"]).map_err(env)?;
        let tap = TapGuard(name.to_string());
        ip(&["addr", "add", cidr, "dev", name]).map_err(env)?;
        ip(&["link", "set", name, "up"]).map_err(env)?;
        Ok(tap)
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

/// A VMM started for one measurement: its stdout as lines, its stderr kept
/// for the error message, killed if the bench gives up on it.
pub struct GuestRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: std::thread::JoinHandle<()>,
    recent: VecDeque<String>,
    /// Names the run in messages: "run 1/3 uvm".
    pub label: String,
    deadline: Instant,
}

impl GuestRun {
    /// Starts `cmd`; the run fails at `deadline`.
    pub fn spawn(mut cmd: Command, label: String, deadline: Instant) -> Result<GuestRun, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                sink.lock().map(|mut t| t.push_str(&text)).ok();
            }
        });
        Ok(GuestRun {
            child,
            lines,
            stderr,
            stderr_reader,
            recent: VecDeque::new(),
            label,
            deadline,
        })
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The next line, `None` once the VMM closed its stdout; an error (with
    /// the last lines) when the deadline passes first.
    pub fn next_line(&mut self) -> Result<Option<String>, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                if self.recent.len() == RECENT_LINES {
                    self.recent.pop_front();
                }
                self.recent.push_back(line.clone());
                Ok(Some(line))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(self.fail("no progress before the deadline"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
        }
    }

    /// `what` with the run's label, the last lines it printed and the end
    /// of the VMM's stderr.
    pub fn fail(&self, what: impl std::fmt::Display) -> String {
        let mut m = format!("{}: {what}", self.label);
        let stderr = self.stderr_lines(12);
        if !stderr.is_empty() {
            m.push_str("\nthe VMM's stderr ends:\n  ");
            m.push_str(&stderr);
        }
        if !self.recent.is_empty() {
            m.push_str("\nlast console lines:");
            for l in &self.recent {
                m.push_str("\n  ");
                m.push_str(l);
            }
        }
        m
    }

    /// The last lines of the VMM's stderr (all of it once the pipe closes,
    /// unless a child the VMM left, a backend it started, still holds it).
    fn stderr_tail(&self) -> String {
        for _ in 0..50 {
            if self.stderr_reader.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stderr_lines(12)
    }

    /// The last `n` lines the VMM has written on stderr so far, indented.
    fn stderr_lines(&self, n: usize) -> String {
        let text = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(n).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n  ")
    }

    /// Waits for the VMM to exit once the guest is `done` (or its stdout
    /// closed); an error unless the guest finished and the VMM succeeded.
    pub fn finish(mut self, vmm: &str, done: bool) -> Result<(), String> {
        let exit_by = Instant::now() + EXIT_GRACE;
        let status: Option<ExitStatus> = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < exit_by => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => break None,
            }
        };
        let Some(status) = status else {
            return Err(self.fail(format!(
                "{vmm} did not exit within {} s of the guest's last line",
                EXIT_GRACE.as_secs()
            )));
        };
        if !done {
            return Err(self.fail(format!(
                "{vmm} exited ({status}) before the guest finished; its stderr:\n  {}",
                self.stderr_tail()
            )));
        }
        if !status.success() {
            return Err(self.fail(format!(
                "{vmm} exited with {status}; its stderr:\n  {}",
                self.stderr_tail()
            )));
        }
        Ok(())
    }
}

impl Drop for GuestRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Calls `open` until it gives a stream (the guest may not listen yet),
/// one try every 100 ms, until `deadline`.
pub fn retry_connect<S>(
    what: &str,
    deadline: Instant,
    mut open: impl FnMut() -> std::io::Result<S>,
) -> Result<S, String> {
    let mut last = None;
    for _ in 0..CONNECT_TRIES {
        if Instant::now() >= deadline {
            break;
        }
        match open() {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "cannot connect to {what}: {}",
        last.map_or("out of time".into(), |e| e.to_string())
    ))
}

/// A TCP connection to the guest's `port`, with stall timeouts.
pub fn connect_tcp(ip: [u8; 4], port: u16, deadline: Instant) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((ip, port));
    let s = retry_connect(&format!("the guest at {addr}"), deadline, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })?;
    s.set_read_timeout(Some(STALL))
        .and_then(|()| s.set_write_timeout(Some(STALL)))
        .and_then(|()| s.set_nodelay(true))
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(s)
}

/// A stream whose write side can be closed on its own.
pub trait HalfClose: Read + Write {
    fn close_write(&self) -> std::io::Result<()>;
}

impl HalfClose for TcpStream {
    fn close_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl HalfClose for std::os::unix::net::UnixStream {
    fn close_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Sends `size` bytes and waits until the guest closes its side (it has
/// read them all); the seconds that took. `what` names the direction.
pub fn push(
    s: &mut dyn HalfClose,
    size: u64,
    deadline: Instant,
    what: &str,
) -> Result<f64, String> {
    let buf = vec![0u8; 1 << 16];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < size {
        let n = usize::try_from(size - sent).map_or(buf.len(), |left| left.min(buf.len()));
        s.write_all(&buf[..n])
            .map_err(|e| format!("{what}: after {sent} of {size} bytes: {e}"))?;
        sent += n as u64;
        if Instant::now() >= deadline {
            return Err(format!("{what}: out of time after {sent} of {size} bytes"));
        }
    }
    s.close_write()
        .map_err(|e| format!("{what}: shutdown: {e}"))?;
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("{what}: waiting for the guest to close: {e}")),
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Reads until the guest closes, expecting `size` bytes; the seconds that
/// took from the first read.
pub fn pull(s: &mut dyn Read, size: u64, deadline: Instant, what: &str) -> Result<f64, String> {
    let mut buf = vec![0u8; 1 << 16];
    let start = Instant::now();
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => return Err(format!("{what}: after {got} of {size} bytes: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: out of time after {got} of {size} bytes"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if got != size {
        return Err(format!("{what}: got {got} bytes, expected {size}"));
    }
    Ok(secs)
}

/// Round trips of one byte each way against an echo server, `count` of
/// them after a few to warm up; every trip's microseconds.
pub fn round_trips(
    s: &mut dyn HalfClose,
    count: usize,
    deadline: Instant,
    what: &str,
) -> Result<Vec<f64>, String> {
    const WARM_UP: usize = 10;
    let mut trips = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    for i in 0..count + WARM_UP {
        let byte = i.to_le_bytes()[0];
        let t = Instant::now();
        s.write_all(&[byte])
            .and_then(|()| s.read_exact(&mut b))
            .map_err(|e| format!("{what}: round trip {i}: {e}"))?;
        if b[0] != byte {
            return Err(format!("{what}: round trip {i} echoed {} ", b[0]));
        }
        if i >= WARM_UP {
            trips.push(t.elapsed().as_secs_f64() * 1e6);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: out of time after {i} round trips"));
        }
    }
    s.close_write()
        .map_err(|e| format!("{what}: shutdown: {e}"))?;
    Ok(trips)
}

/// The value of `key=` among a guest line's words.
pub(crate) fn field<'a>(words: &[&'a str], key: &str) -> Result<&'a str, String> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .ok_or_else(|| format!("no {key}="))
}

/// `key=` of a guest line, parsed.
pub(crate) fn number<T: std::str::FromStr>(words: &[&str], key: &str) -> Result<T, String> {
    let v = field(words, key)?;
    v.parse().map_err(|_| format!("{key}={v}: not a number"))
}

/// A JSON number with 3 decimals; null for NaN and infinities.
pub(crate) fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn push_pull_and_round_trips_over_a_socket_pair() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut buf = [0u8; 8192];
            loop {
                match b.read(&mut buf).unwrap() {
                    0 => break,
                    k => n += k as u64,
                }
            }
            drop(b);
            n
        });
        assert!(push(&mut a, 300_000, deadline, "t").unwrap() >= 0.0);
        assert_eq!(reader.join().unwrap(), 300_000);

        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || b.write_all(&[7u8; 1000]));
        assert!(pull(&mut a, 1000, deadline, "t").is_ok());
        writer.join().unwrap().unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || b.write_all(&[7u8; 999]));
        assert_eq!(
            pull(&mut a, 1000, deadline, "t").unwrap_err(),
            "t: got 999 bytes, expected 1000"
        );

        let (mut a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut b = b;
            let mut c = [0u8; 1];
            while b.read_exact(&mut c).is_ok() {
                b.write_all(&c).unwrap();
            }
        });
        let trips = round_trips(&mut a, 50, deadline, "t").unwrap();
        assert_eq!(trips.len(), 50);
        assert!(trips.iter().all(|t| *t > 0.0));
        // An echo that answers wrongly is an error, not a number.
        let (mut a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut b = b;
            let mut c = [0u8; 1];
            while b.read_exact(&mut c).is_ok() {
                b.write_all(&[c[0].wrapping_add(1)]).unwrap();
            }
        });
        assert!(round_trips(&mut a, 5, deadline, "t").is_err());
    }

    #[test]
    fn a_guest_run_reads_lines_and_reports_the_vmm_status() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = Command::new("sh");
        c.args(["-c", "echo one; echo two; echo oops >&2; exit 3"]);
        let mut r = GuestRun::spawn(c, "run 1/1 sh".into(), deadline).unwrap();
        assert_eq!(r.next_line().unwrap().as_deref(), Some("one"));
        assert_eq!(r.next_line().unwrap().as_deref(), Some("two"));
        assert_eq!(r.next_line().unwrap(), None);
        let e = r.finish("sh", true).unwrap_err();
        assert!(
            e.starts_with("run 1/1 sh: sh exited with exit status: 3"),
            "{e}"
        );
        assert!(e.contains("oops") && e.contains("  two"), "{e}");

        let mut c = Command::new("sh");
        c.args(["-c", "exec sleep 30"]);
        let mut r = GuestRun::spawn(
            c,
            "slow".into(),
            Instant::now() + Duration::from_millis(200),
        )
        .unwrap();
        assert!(r.next_line().unwrap_err().contains("no progress"));
    }
}
