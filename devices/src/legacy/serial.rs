//! The 16550 UART the guest uses as its console (`console=ttyS0`).

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// Raises the UART's interrupt line through an irqfd.
pub struct IrqEvent(pub EventFd);

impl Trigger for IrqEvent {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Guest console output goes straight to the host's fd, unbuffered, so that
/// prompts without a newline show up and nothing is lost if the VMM exits.
pub struct ConsoleOut<W: Write + Send>(pub W);

impl<W: Write + Send> Write for ConsoleOut<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqEvent, NoEvents, ConsoleOut<W>>,
}

impl<W: Write + Send> SerialDevice<W> {
    pub fn new(irq: EventFd, out: W) -> Self {
        Self {
            uart: Serial::new(IrqEvent(irq), ConsoleOut(out)),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the
    /// receive FIFO (the rest must be offered again later).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        // A failed interrupt write leaves the bytes queued; the guest polls LSR
        // too, so input is delayed at worst, never corrupted.
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    pub fn fifo_space(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [byte]) => *byte = self.uart.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            // A host stdout that went away (closed pipe) must not stop the
            // guest: its console output is then simply dropped.
            let _ = self.uart.write(off, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::legacy::KeepAll as Sink;

    #[test]
    fn transmits_to_host_and_receives_input() {
        let out = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), out.clone());
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");

        dev.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut lsr = [0];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0];
        dev.read(0, &mut rbr);
        assert_eq!(rbr, *b"x");
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let mut dev = SerialDevice::new(EventFd::new(0).unwrap(), Sink::default());
        let mut d = [0u8; 2];
        dev.read(0, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        dev.write(0, &[1, 2]);
    }
}
