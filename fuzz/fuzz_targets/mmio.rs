//! The virtio-mmio transport's registers: reads and writes of any offset,
//! width and value, in any order, against a block device.
//! The body is `uvm_devices::fuzzing::mmio`, which the corpus replay test calls too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uvm_devices::fuzzing::mmio(data));
