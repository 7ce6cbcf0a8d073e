//! The CLI's size and device-spec parsers (`--mem`, `--disk`, `--net`,
//! `--vsock`, `--fs`, and the container flags), and the rate limiters a
//! disk or NIC spec asks for.
//! The body is `uvm::fuzzing::cli_specs`, which the corpus replay test calls too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uvm::fuzzing::cli_specs(data));
