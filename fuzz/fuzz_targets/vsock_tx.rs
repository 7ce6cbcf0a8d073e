//! The vsock device's handling of guest packets, on a real event loop with
//! host programs on Unix sockets.
//! The body is `uvm_devices::fuzzing::vsock_tx`, which the corpus replay test calls too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uvm_devices::fuzzing::vsock_tx(data));
