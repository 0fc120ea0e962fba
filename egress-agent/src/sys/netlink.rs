//! Just enough rtnetlink for [`super::ports`]: the links of the calling
//! thread's network namespace, and the id that namespace gives another one.
//!
//! Written against `libc` rather than a netlink crate: two requests, read
//! once per apply, do not justify a dependency tree; the parsing is bounds
//! checked and unit-tested on captured messages.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
/// `struct rtgenmsg`, padded to the netlink alignment.
const RTGENMSG_LEN: usize = 4;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
/// A kernel that answers in more time than this is stuck, not busy.
const RECV_TIMEOUT_SECS: libc::time_t = 5;

/// One link of the namespace, with what tells where its peer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    /// `IFLA_LINK_NETNSID`: the id, in this namespace, of the namespace
    /// that holds the link's peer (set for a veth whose peer is elsewhere).
    pub peer_netns: Option<i32>,
}

/// A `NETLINK_ROUTE` socket in the calling thread's network namespace.
pub struct Route {
    fd: OwnedFd,
    seq: u32,
}

impl Route {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` outlives the call and has the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Every link (`RTM_GETLINK` dump).
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let mut payload = [0u8; IFINFOMSG_LEN];
        payload[0] = libc::AF_UNSPEC as u8;
        let seq = self.send(
            libc::RTM_GETLINK,
            libc::NLM_F_REQUEST | libc::NLM_F_DUMP,
            &payload,
        )?;
        let mut links = Vec::new();
        self.receive(seq, |kind, body| {
            if kind == libc::RTM_NEWLINK {
                links.extend(parse_link(body));
            }
        })?;
        Ok(links)
    }

    /// The id this namespace gives the namespace `netns` refers to
    /// (`RTM_GETNSID`), `None` when it has none: then no link here has
    /// its peer there, since the kernel assigns one when a link's peer is
    /// reported.
    pub fn netns_id(&mut self, netns: RawFd) -> io::Result<Option<i32>> {
        let mut payload = vec![0u8; RTGENMSG_LEN];
        payload[0] = libc::AF_UNSPEC as u8;
        push_attr(&mut payload, NETNSA_FD, &(netns as u32).to_ne_bytes());
        let seq = self.send(libc::RTM_GETNSID, libc::NLM_F_REQUEST, &payload)?;
        let mut id = None;
        self.receive(seq, |kind, body| {
            if kind == libc::RTM_NEWNSID {
                id = attrs(body.get(RTGENMSG_LEN..).unwrap_or_default())
                    .find(|(t, _)| *t == NETNSA_NSID)
                    .and_then(|(_, v)| i32_of(v));
            }
        })?;
        // NETNSA_NSID_NOT_ASSIGNED
        Ok(id.filter(|id| *id >= 0))
    }

    fn send(&mut self, kind: u16, flags: libc::c_int, payload: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags as u16).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: `msg` is valid for `msg.len()` bytes. An unconnected
        // netlink socket sends to the kernel.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Reads the answers to request `seq` until it is complete: `DONE` for
    /// a dump, the first message otherwise.
    fn receive(&self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let mut dump = false;
            for message in messages(&buf[..n as usize]) {
                let Message {
                    kind,
                    flags,
                    seq: s,
                    body,
                } = message?;
                if s != seq {
                    continue; // a late answer to an earlier request
                }
                match kind {
                    k if k == libc::NLMSG_DONE as u16 => return Ok(()),
                    k if k == libc::NLMSG_ERROR as u16 => {
                        let errno = body.get(..4).and_then(i32_of).unwrap_or(-libc::EIO);
                        return if errno == 0 {
                            Ok(()) // an acknowledgement
                        } else {
                            Err(io::Error::from_raw_os_error(-errno))
                        };
                    }
                    _ => {
                        dump |= flags & libc::NLM_F_MULTI as u16 != 0;
                        each(kind, body);
                    }
                }
            }
            if !dump {
                return Ok(());
            }
        }
    }
}

struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    body: &'a [u8],
}

/// The messages of one datagram; an error for a truncated one.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = io::Result<Message<'_>>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let malformed = || io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message");
        let header = buf.get(..NLMSG_HDRLEN);
        let len = header.and_then(|h| u32_of(&h[..4])).map(|l| l as usize);
        let Some(len) = len.filter(|l| (NLMSG_HDRLEN..=buf.len()).contains(l)) else {
            buf = &[];
            return Some(Err(malformed()));
        };
        let message = Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32_of(&buf[8..12]).unwrap_or_default(),
            body: &buf[NLMSG_HDRLEN..len],
        };
        buf = buf.get(align(len)..).unwrap_or_default();
        Some(Ok(message))
    })
}

/// An `RTM_NEWLINK` body: `struct ifinfomsg`, then attributes.
fn parse_link(body: &[u8]) -> Option<Link> {
    let index = i32_of(body.get(4..8)?)?;
    let mut link = Link {
        index,
        name: String::new(),
        peer_netns: None,
    };
    for (kind, value) in attrs(body.get(IFINFOMSG_LEN..)?) {
        match kind {
            libc::IFLA_IFNAME => {
                let name = value.split(|b| *b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            libc::IFLA_LINK_NETNSID => link.peer_netns = i32_of(value),
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// The attributes of a message body (type without its flag bits, value).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes([*buf.first()?, *buf.get(1)?]));
        let kind = u16::from_ne_bytes([*buf.get(2)?, *buf.get(3)?]) & 0x3fff;
        let value = buf.get(4..len)?;
        buf = buf.get(align(len)..).unwrap_or_default();
        Some((kind, value))
    })
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align(buf.len()), 0);
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

fn i32_of(b: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_message(index: i32, name: &str, peer_netns: Option<i32>) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut name = name.as_bytes().to_vec();
        name.push(0);
        push_attr(&mut body, libc::IFLA_IFNAME, &name);
        // An attribute this module does not read, between the two it does.
        push_attr(&mut body, libc::IFLA_MTU, &1500u32.to_ne_bytes());
        if let Some(id) = peer_netns {
            push_attr(&mut body, libc::IFLA_LINK_NETNSID, &id.to_ne_bytes());
        }
        body
    }

    #[test]
    fn a_link_is_read_with_its_name_and_the_namespace_of_its_peer() {
        assert_eq!(
            parse_link(&link_message(7, "veth3", Some(2))),
            Some(Link {
                index: 7,
                name: "veth3".into(),
                peer_netns: Some(2)
            })
        );
        assert_eq!(
            parse_link(&link_message(1, "lo", None)).unwrap().peer_netns,
            None
        );
    }

    #[test]
    fn truncated_input_is_an_error_or_nothing_never_a_panic() {
        let body = link_message(7, "veth3", Some(2));
        for cut in 0..body.len() {
            let _ = parse_link(&body[..cut]);
        }
        let mut datagram = Vec::new();
        datagram.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        datagram.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        datagram.extend_from_slice(&[0u8; 10]);
        datagram.extend_from_slice(&body);
        assert_eq!(messages(&datagram).filter(Result::is_ok).count(), 1);
        for cut in 1..datagram.len() {
            assert!(messages(&datagram[..cut]).any(|m| m.is_err()), "cut {cut}");
        }
    }

    /// Against the running kernel: loopback, with no peer elsewhere.
    #[test]
    fn the_links_of_this_namespace_include_loopback() {
        let mut route = Route::open().unwrap();
        let links = route.links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.index, 1);
        assert_eq!(lo.peer_netns, None);
    }
}
