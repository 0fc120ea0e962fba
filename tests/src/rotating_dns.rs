//! A DNS server that answers every A question for its name with the next
//! address of a pool, as CDN-backed names do: no two askers in a row get
//! the same address. AAAA gets an empty answer, other names NXDOMAIN.
//!
//! Written here because no packaged server rotates per query (dnsmasq and
//! BIND hand out the whole set, in rotating order), and the point is an
//! asker that cannot predict its address from anyone else's answer.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::{nftns::in_netns, Netns};

/// The running server; stopped on drop.
pub struct RotatingDns {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl RotatingDns {
    /// Serves `name` from `pool` (in order, then again) with `ttl`, on
    /// `address` in `netns`.
    pub fn start(
        netns: &Netns,
        address: SocketAddr,
        name: &str,
        pool: Vec<Ipv4Addr>,
        ttl: u32,
    ) -> anyhow::Result<Self> {
        let socket = in_netns(netns, || UdpSocket::bind(address))??;
        Self::on(socket, name, pool, ttl)
    }

    /// As [`RotatingDns::start`], on a socket already bound.
    pub fn on(
        socket: UdpSocket,
        name: &str,
        pool: Vec<Ipv4Addr>,
        ttl: u32,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!pool.is_empty(), "an empty address pool");
        let address = socket.local_addr()?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let name = wire_name(name);
        let thread = {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            thread::spawn(move || serve(&socket, &name, &pool, ttl, &stop, &answered))
        };
        Ok(Self {
            address,
            stop,
            answered,
            thread: Some(thread),
        })
    }

    /// A questions answered with an address so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for RotatingDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    socket: &UdpSocket,
    name: &[u8],
    pool: &[Ipv4Addr],
    ttl: u32,
    stop: &AtomicBool,
    answered: &AtomicUsize,
) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let (len, client) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => continue,
        };
        let Some(reply) = reply(&buf[..len], name, pool, ttl, answered) else {
            continue;
        };
        let _ = socket.send_to(&reply, client);
    }
}

/// The reply to `query`, `None` if it is not a one-question query.
fn reply(
    query: &[u8],
    name: &[u8],
    pool: &[Ipv4Addr],
    ttl: u32,
    answered: &AtomicUsize,
) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    // The question: a name (labels, no compression in a query), type, class.
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let qname = query.get(12..end)?;
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    let question = query.get(12..end + 4)?;
    let ours = qname.eq_ignore_ascii_case(name);
    let address = (ours && qtype == 1).then(|| {
        let n = answered.fetch_add(1, Ordering::Relaxed);
        pool[n % pool.len()]
    });
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&query[..2]);
    // QR, RD copied, RA; NOERROR, or NXDOMAIN for another name.
    out.push(0x80 | (query[2] & 0x01));
    out.push(if ours { 0x80 } else { 0x83 });
    out.extend_from_slice(&[0, 1, 0, u8::from(address.is_some()), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if let Some(address) = address {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&address.octets());
    }
    Some(out)
}

/// `name` as labels on the wire.
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::node::dns::{decode, encode, RecordType};

    #[test]
    fn every_question_gets_the_next_address_and_other_names_nxdomain() {
        let pool = vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
        let (name, count) = (wire_name("cdn.example"), AtomicUsize::new(0));
        let ask = |qname: &str, record| {
            let query = encode(7, qname, record);
            decode(7, &reply(&query, &name, &pool, 1, &count).expect("reply")).expect("answer")
        };
        let first = ask("cdn.example", RecordType::A);
        let second = ask("CDN.example", RecordType::A);
        assert_eq!(first.addresses, [IpAddr::V4(pool[0])]);
        assert_eq!(second.addresses, [IpAddr::V4(pool[1])]);
        assert_eq!(first.ttl, Some(1));
        assert!(ask("cdn.example", RecordType::Aaaa).addresses.is_empty());
        assert_eq!(ask("other.example", RecordType::A).rcode, 3);
    }
}
