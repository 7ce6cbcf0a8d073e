//! The queue walk every device does: descriptor chains, indirect tables,
//! loops, out-of-range addresses, throttled chains put back.
//! The body is `uvm_devices::fuzzing::virtqueue`, which the corpus replay test calls too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uvm_devices::fuzzing::virtqueue(data));
