//! A bundle's config.json through everything the container runtime does
//! with it before touching the system.
//! The body is `uvm_runtime::fuzzing::oci_bundle`, which the corpus replay test calls too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uvm_runtime::fuzzing::oci_bundle(data));
