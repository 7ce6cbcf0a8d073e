//! The net device's RX side: frames with any header from the tap, into
//! whatever buffers the guest posted, mergeable or not.
//! The body is `uvm_devices::fuzzing::net_rx`, which the corpus replay test calls too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uvm_devices::fuzzing::net_rx(data));
