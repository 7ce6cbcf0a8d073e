//! devices: access rules for device nodes. v1: the devices controller's
//! devices.deny and devices.allow, in order; v2 has no files for it (an
//! eBPF program instead, see [`crate::device_filter`]).

use super::{Resources, Write};

pub fn v1(r: &Resources) -> Vec<Write> {
    r.devices
        .iter()
        .map(|(allow, rule)| {
            let file = if *allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            Write::new("devices", file, rule)
        })
        .collect()
}
