//! Host input to the guest console: stdin -> the 16550's receive FIFO, on
//! the event loop thread; the terminal in raw mode while it does.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use uvm_devices::legacy::serial::SerialDevice;

pub struct ConsoleInput<R: Read + AsRawFd, W: Write + Send> {
    input: R,
    serial: Arc<Mutex<SerialDevice<W>>>,
}

impl<R: Read + AsRawFd, W: Write + Send> ConsoleInput<R, W> {
    pub fn new(input: R, serial: Arc<Mutex<SerialDevice<W>>>) -> Self {
        Self { input, serial }
    }

    fn fd(&self) -> RawFd {
        self.input.as_raw_fd()
    }
}

impl<R: Read + AsRawFd, W: Write + Send> MutEventSubscriber for ConsoleInput<R, W> {
    fn init(&mut self, ops: &mut EventOps) {
        // stdin may be something epoll cannot watch (a regular file or
        // /dev/null): then there is simply no console input.
        let _ = ops.add(Events::new_raw(self.fd(), EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        // A full FIFO means the guest is not reading: like a UART, overrun.
        let mut buf = [0u8; 64];
        let want = serial.fifo_space().clamp(1, buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) | Err(_) => {
                let _ = ops.remove(Events::new_raw(self.fd(), EventSet::IN));
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
        }
        if events.event_set().contains(EventSet::HANG_UP) {
            let _ = ops.remove(Events::new_raw(self.fd(), EventSet::IN));
        }
    }
}

/// With a terminal on stdin, keys go to the guest as typed (the guest
/// echoes them); the terminal is restored when this is dropped.
pub struct RawStdin(bool);

impl RawStdin {
    pub fn enter() -> Self {
        use vmm_sys_util::terminal::Terminal;
        let stdin = std::io::stdin();
        let lock = stdin.lock();
        Self(std::io::IsTerminal::is_terminal(&std::io::stdin()) && lock.set_raw_mode().is_ok())
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        use vmm_sys_util::terminal::Terminal;
        if self.0 {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}
