//! The vsock device as the VMM runs it: guest packets on the TX queue,
//! served on a real event loop, with host programs on real Unix sockets
//! (one listening on a port the guest connects to, one asking to connect
//! to the guest), and the replies checked in the RX ring.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::{memory, queue, stats, write_desc, Input};
use crate::virtio::vsock::proto::*;
use crate::virtio::vsock::{Vsock, VsockConfig, FIRST_HOST_PORT, HOST_CID};
use crate::virtio::{features, IrqTrigger, Memory, VirtioDevice};

const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

const GUEST_CID: u64 = 3;
const HDR: u64 = 44;
const MEM: u64 = 0x40000;
/// Each queue: table, avail ring and used ring in its own 0x400 bytes.
const RXQ: u64 = 0;
const EVQ: u64 = 0x400;
const TXQ: u64 = 0x800;
const Q: u16 = 16;
const RX_BUFS: u64 = 0x1000;
const RX_STRIDE: u64 = 0x1100;
const RX_BUF_LEN: u32 = (HDR + 0x1000) as u32;
const RX_POSTED: u16 = 8;
const TX_SLOTS: u64 = 0x10000;
const TX_STRIDE: u64 = 0x3000;
const TX_MAX: u64 = 8;
const MAX_DATA: usize = 0x2000;
/// A host program listens on this port; guest ports are a few near 1000.
const LISTEN_PORT: u32 = 1024;
const GUEST_PORT: u32 = 1000;

fn avail(base: u64) -> u64 {
    base + 16 * u64::from(Q)
}

fn used(base: u64) -> u64 {
    avail(base) + 0x40
}

fn push_avail(mem: &Memory, base: u64, n: u16, head: u16) {
    let ok = mem
        .write_obj(head, GuestAddress(avail(base) + 4 + 2 * u64::from(n)))
        .is_ok()
        && mem.write_obj(n + 1, GuestAddress(avail(base) + 2)).is_ok();
    assert!(ok, "avail ring outside fuzz memory");
}

fn read<T: vm_memory::ByteValued>(mem: &Memory, at: u64) -> T {
    mem.read_obj(GuestAddress(at))
        .expect("fuzz rings are in memory")
}

/// One TX packet from the input: its header (cids, types and ports mostly
/// fixed up to ones that mean something to the device, so the fuzzer spends
/// its time in the connection logic) and how its chain is laid out.
fn write_packet(mem: &Memory, inp: &mut Input, slot: u64, head: u16) {
    let ctl = inp.u8();
    let base = TX_SLOTS + slot * TX_STRIDE;
    let (mut src_cid, mut dst_cid) = (GUEST_CID, HOST_CID);
    if ctl & 1 != 0 {
        (src_cid, dst_cid) = (inp.u64(), inp.u64());
    }
    let mut src_port = inp.u32();
    let mut dst_port = inp.u32();
    let mut len = inp.u32();
    let mut type_ = inp.u16();
    let mut op = inp.u16();
    let flags = inp.u32();
    let buf_alloc = inp.u32();
    let fwd_cnt = inp.u32();
    if ctl & 2 == 0 {
        type_ = TYPE_STREAM;
        op %= 8;
    }
    if ctl & 4 == 0 {
        src_port = GUEST_PORT + src_port % 4;
        dst_port = if dst_port & 1 == 0 {
            LISTEN_PORT
        } else {
            FIRST_HOST_PORT
        };
    }
    let data_len = (len as usize).min(MAX_DATA);
    let data = inp.take(data_len);
    if ctl & 8 == 0 {
        len = data.len() as u32;
    }
    let mut h = [0u8; HDR as usize];
    h[0..8].copy_from_slice(&src_cid.to_le_bytes());
    h[8..16].copy_from_slice(&dst_cid.to_le_bytes());
    h[16..20].copy_from_slice(&src_port.to_le_bytes());
    h[20..24].copy_from_slice(&dst_port.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&type_.to_le_bytes());
    h[30..32].copy_from_slice(&op.to_le_bytes());
    h[32..36].copy_from_slice(&flags.to_le_bytes());
    h[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
    h[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
    let hdr_flags = if ctl & 0x40 != 0 { F_WRITE } else { 0 };
    let hdr_len = if ctl & 0x80 != 0 {
        u32::from(inp.u8())
    } else {
        HDR as u32
    };
    let dlen = data.len() as u32;
    let table = TXQ;
    // The descriptor pair of this slot in the queue's table is `head` and
    // `head + TX_MAX`, so chains never share descriptors.
    let second = head + TX_MAX as u16;
    let ok = match ctl >> 4 & 3 {
        // Header and data in one buffer, as Linux sends small packets.
        0 => {
            mem.write_slice(&h, GuestAddress(base)).is_ok()
                && mem.write_slice(data, GuestAddress(base + HDR)).is_ok()
                && {
                    write_desc(
                        mem,
                        table + 16 * u64::from(head),
                        base,
                        hdr_len + dlen,
                        hdr_flags,
                        0,
                    );
                    true
                }
        }
        // Header, then data in its own descriptor.
        1 => {
            let d = base + 0x100;
            mem.write_slice(&h, GuestAddress(base)).is_ok()
                && mem.write_slice(data, GuestAddress(d)).is_ok()
                && {
                    write_desc(
                        mem,
                        table + 16 * u64::from(head),
                        base,
                        hdr_len,
                        hdr_flags | F_NEXT,
                        second,
                    );
                    write_desc(mem, table + 16 * u64::from(second), d, dlen, 0, 0);
                    true
                }
        }
        // The same two through an indirect table.
        2 => {
            let d = base + 0x100;
            let ind = base + 0x80;
            mem.write_slice(&h, GuestAddress(base)).is_ok()
                && mem.write_slice(data, GuestAddress(d)).is_ok()
                && {
                    write_desc(mem, ind, base, hdr_len, hdr_flags | F_NEXT, 1);
                    write_desc(mem, ind + 16, d, dlen, 0, 0);
                    write_desc(mem, table + 16 * u64::from(head), ind, 32, F_INDIRECT, 0);
                    true
                }
        }
        // The header alone, whatever its length field says.
        _ => {
            mem.write_slice(&h, GuestAddress(base)).is_ok() && {
                write_desc(
                    mem,
                    table + 16 * u64::from(head),
                    base,
                    hdr_len,
                    hdr_flags,
                    0,
                );
                true
            }
        }
    };
    assert!(ok, "TX slot outside fuzz memory");
}

/// Runs the loop until it has nothing more to do (bounded: a device that
/// keeps waking itself forever is a bug the assertion names).
fn run_idle(em: &mut EventManager<Arc<Mutex<Vsock>>>) {
    for _ in 0..256 {
        match em.run_with_timeout(0) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => panic!("event loop: {e}"),
        }
    }
    panic!("the vsock device kept its event loop busy");
}

fn scratch_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "uvm-fuzz-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes the listener's socket file when the body ends, however.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn vsock_tx(data: &[u8]) {
    let mut inp = Input::new(data);
    let knobs = inp.u64();
    let mem = memory(MEM);
    let uds = scratch_path();
    let listen_path = PathBuf::from(format!("{}_{LISTEN_PORT}", uds.display()));
    let listener = UnixListener::bind(&listen_path).expect("fuzz host listener");
    let _unlink = Unlink(listen_path);
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let dev = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
    })
    .expect("fuzz vsock device");
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().expect("event manager");
    em.add_subscriber(dev.clone());

    // A host program asking for a guest port, before the driver is up.
    let mut host_conn = None;
    if knobs & 1 != 0 {
        let mut s = UnixStream::connect(&uds).expect("connect to the device's socket");
        let line = if knobs & 8 == 0 {
            format!("CONNECT {}\n", GUEST_PORT + (knobs >> 1 & 3) as u32)
        } else {
            // A line of garbage, from the knobs.
            format!("CONNECT {}\n", knobs >> 32)
        };
        s.write_all(line.as_bytes()).expect("CONNECT line");
        s.set_nonblocking(true).expect("nonblocking host stream");
        host_conn = Some(s);
        run_idle(&mut em);
    }

    // The driver: RX buffers posted, TX packets from the input.
    for i in 0..RX_POSTED {
        let addr = RX_BUFS + u64::from(i) * RX_STRIDE;
        write_desc(&mem, RXQ + 16 * u64::from(i), addr, RX_BUF_LEN, F_WRITE, 0);
        push_avail(&mem, RXQ, i, i);
    }
    let mut sent = 0u16;
    while !inp.is_empty() && u64::from(sent) < TX_MAX {
        write_packet(&mem, &mut inp, u64::from(sent), sent);
        push_avail(&mem, TXQ, sent, sent);
        sent += 1;
    }
    let event_idx = knobs & 2 != 0;
    let mut f = features::VERSION_1;
    if event_idx {
        f |= features::RING_EVENT_IDX;
    }
    let queues = vec![
        queue(Q, RXQ, avail(RXQ), used(RXQ), event_idx),
        queue(Q, TXQ, avail(TXQ), used(TXQ), event_idx),
        queue(Q, EVQ, avail(EVQ), used(EVQ), event_idx),
    ];
    let irq = IrqTrigger::new().expect("eventfd");
    dev.lock()
        .unwrap_or_else(|e| e.into_inner())
        .activate(mem.clone(), f, queues, irq)
        .expect("vsock activation");
    run_idle(&mut em);

    // The host programs answer, or go away.
    let mut accepted = Vec::new();
    while let Ok((mut s, _)) = listener.accept() {
        if knobs & 0x10 != 0 {
            let _ = s.write_all(b"from the host");
        }
        if knobs & 0x20 == 0 {
            accepted.push(s);
        }
    }
    if let Some(s) = host_conn.as_mut() {
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        if knobs & 0x40 != 0 {
            let _ = s.write_all(b"host to guest");
        }
    }
    if knobs & 0x80 != 0 {
        drop(host_conn.take());
    }
    run_idle(&mut em);

    // Every TX chain comes back (the stray-RST cap is far above TX_MAX).
    let tx_used: u16 = read(&mem, used(TXQ) + 2);
    assert_eq!(tx_used, sent, "TX chains not given back");
    // What the device put in RX is a well-formed packet from the host.
    let rx_used: u16 = read(&mem, used(RXQ) + 2);
    assert!(rx_used <= RX_POSTED, "more RX buffers used than posted");
    for n in 0..u64::from(rx_used) {
        let id: u32 = read(&mem, used(RXQ) + 4 + 8 * n);
        let len: u32 = read(&mem, used(RXQ) + 8 + 8 * n);
        assert!(id < u32::from(RX_POSTED), "RX used id {id}");
        assert!(len <= RX_BUF_LEN, "RX used length {len}");
        if len == 0 {
            continue;
        }
        let at = RX_BUFS + u64::from(id) * RX_STRIDE;
        assert!(u64::from(len) >= HDR, "RX packet shorter than its header");
        let src_cid: u64 = read(&mem, at);
        let dst_cid: u64 = read(&mem, at + 8);
        let plen: u32 = read(&mem, at + 24);
        let type_: u16 = read(&mem, at + 28);
        let op: u16 = read(&mem, at + 30);
        assert_eq!((src_cid, dst_cid), (HOST_CID, GUEST_CID), "RX packet cids");
        assert_eq!(type_, TYPE_STREAM);
        assert!((OP_REQUEST..=OP_CREDIT_REQUEST).contains(&op), "RX op {op}");
        assert_eq!(u64::from(plen) + HDR, u64::from(len), "RX header length");
    }
    if stats() {
        let c = dev.lock().unwrap_or_else(|e| e.into_inner()).counters();
        eprintln!("stats sent {sent}, rx used {rx_used}, {c:?}");
    }
    dev.lock().unwrap_or_else(|e| e.into_inner()).reset();
    run_idle(&mut em);
    drop(accepted);
}
