//! The simulated traffic as a pcap file (raw IPv4, LINKTYPE_RAW), so
//! tshark can dissect it: every datagram as sent, before the network
//! decides whether it arrives.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Default)]
pub struct Pcap {
    records: Vec<u8>,
}

const LINKTYPE_RAW: u32 = 101;

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in header.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |b| u32::from(*b));
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Pcap {
    pub fn push(&mut self, now_ms: u64, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
            return;
        };
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let (Ok(total16), Ok(udp16)) = (u16::try_from(total), u16::try_from(udp_len)) else {
            return;
        };
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&s.octets());
        ip[16..20].copy_from_slice(&d.octets());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let r = &mut self.records;
        let secs = (now_ms / 1000) as u32;
        let usecs = ((now_ms % 1000) * 1000) as u32;
        for v in [secs, usecs, total as u32, total as u32] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r.extend_from_slice(&ip);
        r.extend_from_slice(&src.port().to_be_bytes());
        r.extend_from_slice(&dst.port().to_be_bytes());
        r.extend_from_slice(&udp16.to_be_bytes());
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(payload);
    }

    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(24 + self.records.len());
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&65_535u32.to_le_bytes());
        out.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.extend_from_slice(&self.records);
        std::fs::write(path, out)
    }
}
