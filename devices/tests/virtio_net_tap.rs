//! virtio-net on a real tap, frames both ways, wired as the VMM wires it.
//!
//! The host end is the tap interface itself, given an address in a /24 that
//! only this test uses; traffic goes only between that address and the
//! "guest" behind the device. Needs CAP_NET_ADMIN and /dev/net/tun; skipped
//! (with a note) where they are missing.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use event_manager::{EventManager, SubscriberOps};
use uvm_devices::virtio::block::{Block, BlockConfig};
use uvm_devices::virtio::net::{Net, NetConfig};
use uvm_devices::virtio::{Error, Memory, MmioTransport};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use vm_memory::{Bytes, GuestAddress};

const GUEST_MAC: [u8; 6] = [0x02, 0x75, 0x76, 0x6d, 0x00, 0x02];
const RX_BUFS: u64 = 0x40_000;
const TX_BUF: u64 = 0x20_000;
const BUF_LEN: u32 = 2048;

struct Rig {
    net: Arc<Mutex<Net>>,
    t: MmioTransport,
    em: Loop,
    mem: Memory,
    rxq: Ring,
    txq: Ring,
    host: Ipv4Addr,
    guest: Ipv4Addr,
    tap_mac: [u8; 6],
    next_rx: u16,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rig(tag: u8, features: u64) -> Option<Rig> {
    let pid = std::process::id();
    let name = format!("uvm{}{}", char::from(b'a' + tag), pid % 100_000);
    let net = match Net::new(NetConfig {
        tap: name.clone(),
        mac: Some(GUEST_MAC),
        rx_rate_limit: Default::default(),
        tx_rate_limit: Default::default(),
    }) {
        Ok(n) => n,
        Err(e @ (Error::TunOpen(_) | Error::Tap { .. })) => {
            eprintln!("skipped: cannot make a tap here: {e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let subnet = (pid.wrapping_mul(3) + u32::from(tag)) % 250;
    let host = Ipv4Addr::new(10, 213, subnet as u8, 1);
    let guest = Ipv4Addr::new(10, 213, subnet as u8, 2);
    // No IPv6 chatter (router solicitations, DAD) in the guest's queue.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    ip(&["addr", "add", &format!("{host}/24"), "dev", &name]);
    ip(&["link", "set", &name, "up"]);
    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    ip(&[
        "neigh",
        "replace",
        &guest.to_string(),
        "lladdr",
        &mac,
        "dev",
        &name,
        "nud",
        "permanent",
    ]);
    let sys = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
    let mut tap_mac = [0u8; 6];
    for (b, s) in tap_mac.iter_mut().zip(sys.trim().split(':')) {
        *b = u8::from_str_radix(s, 16).unwrap();
    }

    let mem = memory(1 << 22);
    let (mut t, net) = uvm_devices::virtio::mmio_device(mem.clone(), net).unwrap();
    let mut em: Loop = EventManager::new().unwrap();
    em.add_subscriber(net.clone());
    assert_eq!(
        r(&mut t, virtio_bindings::virtio_mmio::VIRTIO_MMIO_DEVICE_ID),
        1
    );
    let mut cfg = [0u8; 8];
    use uvm_devices::BusDevice;
    t.read(0x100, &mut cfg);
    assert_eq!(cfg[..6], GUEST_MAC);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    let accepted = negotiate(&mut t, features);
    assert_eq!(
        accepted, features,
        "device did not offer all of {features:#x}"
    );
    let rxq = Ring::new(&mem, 0x1000, 128);
    let txq = Ring::new(&mem, 0x4000, 128);
    setup_queue(&mut t, 0, &rxq);
    setup_queue(&mut t, 1, &txq);
    driver_ok(&mut t);
    em.run_with_timeout(0).unwrap();
    Some(Rig {
        net,
        t,
        em,
        mem,
        rxq,
        txq,
        host,
        guest,
        tap_mac,
        next_rx: 0,
    })
}

/// Frames the device put in the RX queue since the last call (with
/// mergeable buffers, every frame here fits one buffer).
fn received(rxq: &mut Ring, mem: &Memory) -> Vec<Vec<u8>> {
    rxq.take_used()
        .into_iter()
        .map(|(id, len)| {
            let at = RX_BUFS + u64::from(id) * u64::from(BUF_LEN);
            let mut f = vec![0u8; len as usize];
            mem.read_slice(&mut f, GuestAddress(at)).unwrap();
            f
        })
        .collect()
}

fn feats(bits: &[u32]) -> u64 {
    bits.iter()
        .fold(1u64 << VIRTIO_F_VERSION_1, |f, &b| f | 1 << b)
}

impl Rig {
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let i = self.next_rx % self.rxq.size;
            let at = RX_BUFS + u64::from(i) * u64::from(BUF_LEN);
            self.rxq.chain(i, &[(at, BUF_LEN, F_WRITE)]);
            self.rxq.push(i);
            self.next_rx += 1;
        }
    }

    /// The UDP payloads to `port` among `frames`, with their headers.
    fn udp_to(frames: &[Vec<u8>], port: u16) -> Vec<(Vec<u8>, Vec<u8>)> {
        frames
            .iter()
            .filter_map(|f| {
                let (hdr, eth) = f.split_at(12);
                let ip = eth.get(14..)?;
                let udp = ip.get(20..)?;
                let ok = eth[12..14] == [0x08, 0x00]
                    && ip[9] == 17
                    && u16::from_be_bytes([udp[2], udp[3]]) == port;
                ok.then(|| (hdr.to_vec(), udp[8..].to_vec()))
            })
            .collect()
    }

    /// An Ethernet/IPv4/UDP frame from the guest to the host, behind a
    /// plain virtio-net header.
    fn udp_frame(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend(self.tap_mac);
        f.extend(GUEST_MAC);
        f.extend([0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        let mut iph = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        iph[2..4].copy_from_slice(&total.to_be_bytes());
        iph.extend(self.guest.octets());
        iph.extend(self.host.octets());
        let mut sum: u32 = iph
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        iph[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend(iph);
        f.extend(sport.to_be_bytes());
        f.extend(dport.to_be_bytes());
        f.extend((8 + payload.len() as u16).to_be_bytes());
        f.extend([0, 0]);
        f.extend(payload);
        f
    }
}

#[test]
fn frames_cross_the_tap_both_ways() {
    let Some(mut rig) = rig(
        0,
        feats(&[
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
        ]),
    ) else {
        return;
    };

    // Host to guest.
    rig.post_rx(16);
    kick(&rig.t, 0);
    let sock = UdpSocket::bind(SocketAddrV4::new(rig.host, 0)).unwrap();
    sock.send_to(b"hello guest", SocketAddrV4::new(rig.guest, 9000))
        .unwrap();
    let mut got = Vec::new();
    run_until(&mut rig.em, || {
        got.extend(received(&mut rig.rxq, &rig.mem));
        !Rig::udp_to(&got, 9000).is_empty()
    });
    let udp = Rig::udp_to(&got, 9000);
    assert_eq!(udp.len(), 1, "{} frames, none the datagram", got.len());
    let (hdr, payload) = &udp[0];
    assert_eq!(payload, b"hello guest");
    // Without GUEST_CSUM the tap checksums: no flags, one buffer.
    assert_eq!(hdr[0], 0);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1);
    assert_eq!(got[0][12..18], GUEST_MAC);
    assert_ne!(take_irq(&mut rig.t) & 1, 0);

    // Guest to host.
    let host_sock = UdpSocket::bind(SocketAddrV4::new(rig.host, 0)).unwrap();
    host_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = host_sock.local_addr().unwrap().port();
    let frame = rig.udp_frame(9000, port, b"hello host");
    rig.mem.write_slice(&frame, GuestAddress(TX_BUF)).unwrap();
    let head = rig.txq.chain(0, &[(TX_BUF, frame.len() as u32, 0)]);
    rig.txq.push(head);
    kick(&rig.t, 1);
    run_until(&mut rig.em, || rig.txq.used_idx() == 1);
    let mut buf = [0u8; 64];
    let (n, from) = host_sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello host");
    assert_eq!(from, SocketAddrV4::new(rig.guest, 9000).into());
    let c = rig.net.lock().unwrap().counters();
    assert_eq!((c.tx_frames, c.tx_dropped, c.tx_errors), (1, 0, 0));
}

#[test]
fn receive_offload_reaches_the_guest_when_accepted() {
    let f = feats(&[
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
    ]);
    let Some(mut rig) = rig(1, f) else {
        return;
    };
    rig.post_rx(16);
    kick(&rig.t, 0);
    let sock = UdpSocket::bind(SocketAddrV4::new(rig.host, 0)).unwrap();
    sock.send_to(b"partial", SocketAddrV4::new(rig.guest, 9001))
        .unwrap();
    let mut got = Vec::new();
    run_until(&mut rig.em, || {
        got.extend(received(&mut rig.rxq, &rig.mem));
        !Rig::udp_to(&got, 9001).is_empty()
    });
    let (hdr, payload) = &Rig::udp_to(&got, 9001)[0];
    assert_eq!(payload, b"partial");
    // The host left the checksum to the guest, which said it can finish it.
    assert_eq!(hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 1, "{hdr:?}");
    let csum_start = u16::from_le_bytes([hdr[6], hdr[7]]);
    assert_eq!(csum_start, 14 + 20, "checksum starts at the UDP header");
}

#[test]
fn a_guest_without_rx_buffers_stalls_only_itself() {
    let Some(mut rig) = rig(2, feats(&[VIRTIO_NET_F_MRG_RXBUF])) else {
        return;
    };
    // A block device on the same loop.
    let path = std::env::temp_dir().join(format!("uvm-net-stall-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
    let blk = Arc::new(Mutex::new(
        Block::new(BlockConfig {
            path: path.clone(),
            read_only: false,
            id: None,
            rate_limit: Default::default(),
        })
        .unwrap(),
    ));
    let _ = std::fs::remove_file(&path);
    let mut bt = MmioTransport::new(rig.mem.clone(), blk.clone()).unwrap();
    rig.em.add_subscriber(blk.clone());
    negotiate(&mut bt, 1 << VIRTIO_F_VERSION_1);
    let bq = Ring::new(&rig.mem, 0x10_000, 16);
    setup_queue(&mut bt, 0, &bq);
    driver_ok(&mut bt);

    // The guest posts no RX buffers while the host sends it 50 frames.
    let sock = UdpSocket::bind(SocketAddrV4::new(rig.host, 0)).unwrap();
    for i in 0..50u8 {
        sock.send_to(&[i; 32], SocketAddrV4::new(rig.guest, 9002))
            .unwrap();
    }
    // The loop goes quiet although the tap is full: no busy loop.
    let mut rounds = 0;
    while rig.em.run_with_timeout(100).unwrap() != 0 {
        rounds += 1;
        assert!(rounds < 10, "the loop keeps spinning on a stalled RX queue");
    }
    // The block device is served meanwhile.
    let hdr = 0x30_000u64;
    rig.mem.write_obj(4u32, GuestAddress(hdr)).unwrap(); // FLUSH
    let head = bq.chain(0, &[(hdr, 16, 0), (hdr + 16, 1, F_WRITE)]);
    bq.push(head);
    kick(&bt, 0);
    run_until(&mut rig.em, || bq.used_idx() == 1);

    // Buffers arrive with the RX notification: everything queued comes in.
    rig.post_rx(64);
    kick(&rig.t, 0);
    let mut got = Vec::new();
    run_until(&mut rig.em, || {
        got.extend(received(&mut rig.rxq, &rig.mem));
        Rig::udp_to(&got, 9002).len() == 50
    });
    let payloads: Vec<u8> = Rig::udp_to(&got, 9002).iter().map(|(_, p)| p[0]).collect();
    assert_eq!(payloads, (0..50).collect::<Vec<_>>());
}
