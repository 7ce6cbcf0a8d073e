//! PID 1 of a uvm guest.

fn main() {
    uvm_protocol::abort_on_panic();
    uvm_init::main()
}
