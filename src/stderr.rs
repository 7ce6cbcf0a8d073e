//! uvm's own lines on stderr, bounded in time. With `--console` the guest's
//! console shares stderr with them, and a guest that floods it can fill a
//! pipe whose reader does not read: a plain `eprintln!` would then block
//! for as long as the reader waits, and uvm would outlive its `--timeout`.

use std::time::{Duration, Instant};

/// How long a line may wait for room before it is dropped.
const GRACE: Duration = Duration::from_secs(2);

/// `eprintln!`, but a line that finds no room within [`GRACE`] is dropped
/// rather than waited for.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::stderr::say(&format!($($arg)*))
    };
}

/// Writes `line` and a newline to fd 2, waiting for room at most
/// [`GRACE`] in all. A terminal or a file takes it at once.
pub fn say(line: &str) {
    write_bounded(2, format!("{line}\n").as_bytes(), GRACE);
}

/// Writes `buf` to `fd` in pieces no larger than a pipe writes atomically,
/// each after poll(2) says there is room, until `grace` is spent; returns
/// how many bytes went out.
fn write_bounded(fd: i32, mut buf: &[u8], grace: Duration) -> usize {
    let deadline = Instant::now() + grace;
    let mut written = 0;
    while !buf.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one pollfd that lives across the call, and its count.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 || pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            break;
        }
        // POLLOUT on a pipe means a free buffer slot: a write of at most
        // PIPE_BUF bytes then goes through without blocking.
        let piece = &buf[..buf.len().min(libc::PIPE_BUF)];
        // SAFETY: `piece` is valid for reads of its length.
        let w = unsafe { libc::write(fd, piece.as_ptr().cast(), piece.len()) };
        match usize::try_from(w) {
            Ok(w) => {
                written += w;
                buf = &buf[w..];
            }
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => break,
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are new and owned by nothing else.
        unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn a_full_pipe_nobody_reads_costs_the_grace_and_no_more() {
        let (_r, w) = pipe();
        // Fill it: the writer blocks no longer once the pipe is full.
        let filler = vec![b'x'; 1 << 20];
        let first = write_bounded(w.as_raw_fd(), &filler, Duration::from_millis(100));
        assert!(first > 0 && first < filler.len(), "{first}");
        let t = Instant::now();
        assert_eq!(
            write_bounded(w.as_raw_fd(), b"late line\n", Duration::from_millis(300)),
            0
        );
        let took = t.elapsed();
        assert!(
            // (poll counts whole milliseconds: a hair under is the grace.)
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn a_pipe_with_room_takes_everything_in_order() {
        use std::io::Read;
        let (mut r, w) = pipe();
        let line: Vec<u8> = (0..10_000u32)
            .map(|i| b'a' + u8::try_from(i % 26).unwrap())
            .collect();
        let writer = std::thread::spawn(move || write_bounded(w.as_raw_fd(), &line, GRACE));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(writer.join().unwrap(), 10_000);
        assert_eq!(got.len(), 10_000);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + u8::try_from(i % 26).unwrap()));
    }
}
