//! PID 1 of a uvm guest.

fn main() {
    uvm_init::main()
}
