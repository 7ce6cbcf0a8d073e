//! The console's bytes between the UART and the host: a bounded ring the
//! vCPU fills and a thread of its own drains to the host's fd.
//!
//! The vCPU that runs the UART must never wait on the host: a pipe whose
//! reader does not read would stop the guest (and, in the nested runner,
//! a vCPU in write(2) was seen stuck in D state for minutes, beyond the
//! reach of `--timeout`). So the vCPU only copies into the ring; what does
//! not fit is dropped and counted, as a UART without flow control loses
//! bytes, and memory stays bounded however long the guest floods.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct Shared {
    queue: Mutex<State>,
    changed: Condvar,
    dropped: AtomicU64,
    capacity: usize,
}

#[derive(Default)]
struct State {
    bytes: VecDeque<u8>,
    /// Bytes the drain has taken but not yet written.
    in_flight: usize,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The UART's side: never blocks.
pub struct RingWriter(Arc<Shared>);

/// The host's side: [`Drain::run`] on a thread of its own.
pub struct Drain(Arc<Shared>);

/// Waits for the ring to empty, and counts drops; kept by the VMM.
#[derive(Clone)]
pub struct RingHandle(Arc<Shared>);

/// A ring of `capacity` bytes.
pub fn ring(capacity: usize) -> (RingWriter, Drain, RingHandle) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(State::default()),
        changed: Condvar::new(),
        dropped: AtomicU64::new(0),
        capacity: capacity.max(1),
    });
    (
        RingWriter(shared.clone()),
        Drain(shared.clone()),
        RingHandle(shared),
    )
}

impl Write for RingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.0.lock();
        // A closed ring (the host's fd failed) takes nothing more.
        let room = if st.closed {
            0
        } else {
            self.0
                .capacity
                .saturating_sub(st.bytes.len() + st.in_flight)
        };
        let take = room.min(buf.len());
        st.bytes.extend(&buf[..take]);
        drop(st);
        if take < buf.len() {
            self.0
                .dropped
                .fetch_add((buf.len() - take) as u64, Ordering::Relaxed);
        }
        if take > 0 {
            self.0.changed.notify_all();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drain {
    /// Writes what arrives to `out` until the ring is closed and empty, or
    /// `out` fails (the rest is then dropped, so the vCPU never waits).
    pub fn run(self, mut out: impl Write) {
        let mut chunk = Vec::new();
        loop {
            {
                let mut st = self.0.lock();
                while st.bytes.is_empty() && !st.closed {
                    st = self.0.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.bytes.is_empty() {
                    return;
                }
                chunk.clear();
                chunk.extend(st.bytes.drain(..));
                st.in_flight = chunk.len();
            }
            let failed = out.write_all(&chunk).and_then(|()| out.flush()).is_err();
            let mut st = self.0.lock();
            st.in_flight = 0;
            if failed {
                st.closed = true;
                let lost = st.bytes.len() + chunk.len();
                st.bytes.clear();
                self.0.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            }
            drop(st);
            self.0.changed.notify_all();
            if failed {
                return;
            }
        }
    }
}

impl RingHandle {
    /// Bytes the host did not take in time (see the module's comment).
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Waits until what the guest wrote has reached the host, for at most
    /// `grace`; true if it did. Nothing is lost at a normal exit, and a
    /// reader that never reads costs `grace`, no more.
    pub fn flush(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let mut st = self.0.lock();
        let drained = |st: &State| st.bytes.is_empty() && st.in_flight == 0;
        while !(st.closed || drained(&st)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .0
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drained(&st)
    }

    /// Ends the drain once it has written what is queued.
    pub fn close(&self) {
        self.0.lock().closed = true;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Blocks every write until told to go on, as a pipe nobody reads.
    struct Gate(mpsc::Receiver<()>, Arc<Mutex<Vec<u8>>>);
    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .recv()
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_host_that_takes_nothing_costs_drops_not_memory_or_waiting() {
        let (mut w, drain, h) = ring(16);
        let (go, gate) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Gate(gate, got.clone());
        let t = std::thread::spawn(move || drain.run(sink));
        let start = Instant::now();
        for i in 0..10_000u32 {
            assert_eq!(w.write(&[b'a' + u8::try_from(i % 26).unwrap()]).unwrap(), 1);
        }
        // The guest never waited, and at most 16 bytes were kept.
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(h.dropped() >= 10_000 - 16, "{}", h.dropped());
        assert!(
            !h.flush(Duration::from_millis(50)),
            "the host took nothing yet"
        );
        go.send(()).unwrap();
        assert!(h.flush(Duration::from_secs(5)));
        h.close();
        drop(go);
        t.join().unwrap();
        let got = got.lock().unwrap();
        assert!(!got.is_empty() && got.len() <= 16, "{}", got.len());
        assert_eq!(got.len() as u64 + h.dropped(), 10_000);
        // What reached the host is the start of what was written, in order.
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + u8::try_from(i % 26).unwrap()));
    }

    use crate::legacy::KeepAll as Keep;

    #[test]
    fn a_reading_host_gets_every_byte_in_order() {
        let (mut w, drain, h) = ring(64);
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Keep(got.clone());
        let t = std::thread::spawn(move || drain.run(sink));
        let text: Vec<u8> = (0..5000u32)
            .map(|i| b'a' + u8::try_from(i % 26).unwrap())
            .collect();
        for piece in text.chunks(8) {
            w.write_all(piece).unwrap();
            // The guest's pace: the host keeps up, nothing is dropped.
            while !h.flush(Duration::from_millis(100)) {}
        }
        h.close();
        t.join().unwrap();
        assert_eq!(h.dropped(), 0);
        assert_eq!(*got.lock().unwrap(), text);
    }

    #[test]
    fn a_failed_host_fd_ends_the_drain_and_drops_the_rest() {
        let (mut w, drain, h) = ring(64);
        let (go, gate) = mpsc::channel::<()>();
        drop(go);
        let t = std::thread::spawn(move || drain.run(Gate(gate, Arc::default())));
        w.write_all(b"hello").unwrap();
        t.join().unwrap();
        assert_eq!(h.dropped(), 5);
        w.write_all(b"more").unwrap();
        assert_eq!(h.dropped(), 9);
        assert!(h.flush(Duration::from_millis(10)));
    }
}
