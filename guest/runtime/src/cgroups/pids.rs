//! pids: the number of tasks (`--pids-limit`), pids.max on v1 and v2.

use super::{Resources, Write};

pub fn v1(r: &Resources) -> Vec<Write> {
    r.pids
        .map(|p| Write::new("pids", "pids.max", p))
        .into_iter()
        .collect()
}

pub fn v2(r: &Resources) -> Vec<Write> {
    v1(r)
}
