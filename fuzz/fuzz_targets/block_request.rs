//! The block device's request path, whole: chain parsing, header, status
//! placement, and the I/O itself on a small image in /dev/shm.
//! The body is `uvm_devices::fuzzing::block_request`, which the corpus replay test calls too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uvm_devices::fuzzing::block_request(data));
