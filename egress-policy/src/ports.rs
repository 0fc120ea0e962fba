//! Protocols and port ranges.

use std::{fmt, str::FromStr};

use serde::Serialize;

/// A transport protocol a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number, as the kernel sees it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// Kubernetes spells protocols in upper case; accept lower case too,
    /// since `explain --to 1.2.3.4:53/udp` is how people type them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            _ => Err(format!(
                "unknown protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// An inclusive port range; `start <= end` always holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

/// Why a port or range was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port {0} is out of range (1-65535)")]
    OutOfRange(i64),
    #[error("endPort {end} is less than port {start}")]
    Reversed { start: u16, end: u16 },
}

impl PortRange {
    /// Every port, for rules that list no ports.
    pub const ALL: Self = Self {
        start: 0,
        end: u16::MAX,
    };

    pub fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }

    pub fn new(start: u16, end: u16) -> Result<Self, PortError> {
        if end < start {
            return Err(PortError::Reversed { start, end });
        }
        Ok(Self { start, end })
    }

    /// Parses a user-written port number (1-65535).
    pub fn port(value: i64) -> Result<u16, PortError> {
        u16::try_from(value)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(PortError::OutOfRange(value))
    }

    pub fn start(self) -> u16 {
        self.start
    }

    pub fn end(self) -> u16 {
        self.end
    }

    pub fn contains(self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ALL {
            f.write_str("*")
        } else if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The port part of a NetworkPolicy port entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PortMatch {
    /// A number or `port`..=`endPort`.
    Range(PortRange),
    /// A container port name, resolved against the destination workload.
    Named(String),
}

/// One `ports[]` entry of an egress rule: a protocol and which ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_refuse_reversed_and_out_of_range() {
        assert_eq!(
            PortRange::new(100, 99),
            Err(PortError::Reversed {
                start: 100,
                end: 99
            })
        );
        assert_eq!(PortRange::port(0), Err(PortError::OutOfRange(0)));
        assert_eq!(PortRange::port(65536), Err(PortError::OutOfRange(65536)));
        assert_eq!(PortRange::port(-1), Err(PortError::OutOfRange(-1)));
        let r = PortRange::new(32000, 32768).expect("valid");
        assert!(r.contains(32768) && !r.contains(32769));
        assert_eq!(r.to_string(), "32000-32768");
    }

    #[test]
    fn protocols_parse_in_either_case() {
        assert_eq!("udp".parse(), Ok(Protocol::Udp));
        assert_eq!("SCTP".parse(), Ok(Protocol::Sctp));
        assert!("icmp".parse::<Protocol>().is_err());
    }
}
