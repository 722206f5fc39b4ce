//! Who may open an association, and whom ldct calls: AE titles, the allow-list
//! (`--dimse-allowed-callers`) and DIMSE peers (`--pacs-dimse HOST:PORT:AET`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An AE title: 1 to 16 characters of the default repertoire, no backslash or control
/// characters, not all spaces (PS3.5 6.2, VR AE). Leading/trailing spaces are not
/// significant and are trimmed.
pub fn parse_ae_title(s: &str) -> Result<String, String> {
    let t = s.trim();
    let ok = (1..=16).contains(&t.len())
        && t.chars()
            .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\');
    if ok {
        Ok(t.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an AE title: 1 to 16 ASCII characters, no backslash or control \
             characters"
        ))
    }
}

/// An address or network of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 peers compare as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }
}

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's address is not on the list.
    Address,
    /// The calling AE title is not on the list.
    CallingAeTitle,
    /// The called AE title is not this server's.
    CalledAeTitle,
}

/// `--dimse-allowed-callers`: AE titles and addresses/networks. A caller must match one
/// of the AE titles when any is listed, and one of the networks when any is listed;
/// an empty list lets anyone in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub ae_titles: Vec<String>,
    pub networks: Vec<Network>,
}

impl AllowList {
    /// Each entry that parses as an IP address or network is one; the others must be AE
    /// titles.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let looks_like_ip = e.contains('/') || e.parse::<IpAddr>().is_ok() || e.contains(':');
            if looks_like_ip {
                list.networks.push(e.parse()?);
            } else {
                list.ae_titles
                    .push(parse_ae_title(e).map_err(|m| format!("--dimse-allowed-callers: {m}"))?);
            }
        }
        Ok(list)
    }

    pub fn is_open(&self) -> bool {
        self.ae_titles.is_empty() && self.networks.is_empty()
    }

    /// Checked on connection, before the association request is read.
    pub fn check_address(&self, peer: IpAddr) -> Result<(), Refusal> {
        if self.networks.is_empty() || self.networks.iter().any(|n| n.contains(peer)) {
            Ok(())
        } else {
            Err(Refusal::Address)
        }
    }

    /// Checked on the association request.
    pub fn check_titles(&self, ours: &str, calling: &str, called: &str) -> Result<(), Refusal> {
        if called.trim() != ours {
            return Err(Refusal::CalledAeTitle);
        }
        if self.ae_titles.is_empty() || self.ae_titles.iter().any(|t| t == calling.trim()) {
            Ok(())
        } else {
            Err(Refusal::CallingAeTitle)
        }
    }
}

/// A DICOM node ldct calls: `HOST:PORT:AET` (an IPv6 host in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimsePeer {
    pub host: String,
    pub port: u16,
    pub ae_title: String,
}

impl DimsePeer {
    /// `host:port` to connect to.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for DimsePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.ae_title, self.address())
    }
}

impl FromStr for DimsePeer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not HOST:PORT:AET (e.g. pacs.local:104:PACS)");
        let (rest, aet) = s.rsplit_once(':').ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(bad)?;
        Ok(DimsePeer {
            host: host.to_owned(),
            port,
            ae_title: parse_ae_title(aet)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn ae_titles_and_networks_both_have_to_match_when_listed() {
        let l = list(&["CT01", "10.1.0.0/16", "::1"]);
        assert_eq!(l.ae_titles, ["CT01"]);
        assert_eq!(l.networks.len(), 2);
        assert!(l.check_address("10.1.200.3".parse().unwrap()).is_ok());
        assert!(l.check_address("::ffff:10.1.0.9".parse().unwrap()).is_ok());
        assert!(l.check_address("::1".parse().unwrap()).is_ok());
        assert_eq!(
            l.check_address("10.2.0.1".parse().unwrap()),
            Err(Refusal::Address)
        );
        assert!(l.check_titles("LDCT", "CT01", "LDCT").is_ok());
        assert!(l.check_titles("LDCT", " CT01 ", "LDCT  ").is_ok());
        assert_eq!(
            l.check_titles("LDCT", "INTRUDER", "LDCT"),
            Err(Refusal::CallingAeTitle)
        );
        assert_eq!(
            l.check_titles("LDCT", "CT01", "OTHER"),
            Err(Refusal::CalledAeTitle)
        );
        // Only titles listed: any address; nothing listed: anyone who calls us.
        let t = list(&["CT01"]);
        assert!(t.check_address("192.0.2.1".parse().unwrap()).is_ok());
        let open = list(&[]);
        assert!(open.is_open());
        assert!(open.check_titles("LDCT", "ANY", "LDCT").is_ok());
        assert_eq!(
            open.check_titles("LDCT", "ANY", "NOTUS"),
            Err(Refusal::CalledAeTitle)
        );
        assert!(list(&["0.0.0.0/0"])
            .check_address("203.0.113.5".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn bad_entries_and_peers_are_clear_errors() {
        let parse =
            |e: &[&str]| AllowList::parse(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(parse(&["10.0.0.0/33"]).unwrap_err().contains("prefix"));
        assert!(parse(&["A_TITLE_LONGER_THAN_16"])
            .unwrap_err()
            .contains("AE title"));
        assert!(parse(&["BAD\\AE"]).is_err());
        let p: DimsePeer = "pacs.local:104:PACS".parse().unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.ae_title.as_str()),
            ("pacs.local", 104, "PACS")
        );
        assert_eq!(p.address(), "pacs.local:104");
        let v6: DimsePeer = "[::1]:11112:STORESCP".parse().unwrap();
        assert_eq!(v6.address(), "[::1]:11112");
        for bad in ["pacs:104", "pacs:0:AE", ":104:AE", "pacs:x:AE", "pacs:104:"] {
            assert!(bad.parse::<DimsePeer>().is_err(), "{bad}");
        }
    }
}
