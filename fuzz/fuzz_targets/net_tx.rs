//! The net device's TX parser: a guest's chain to the frame handed to the
//! tap, with the header checked against the negotiated offloads.
//! The body is `uvm_devices::fuzzing::net_tx`, which the corpus replay test calls too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uvm_devices::fuzzing::net_tx(data));
