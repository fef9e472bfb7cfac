//! Where a request may go: the range an address belongs to, decided on the parsed IP after
//! resolution (so `2130706433`, `0x7f.1`, `::ffff:127.0.0.1` and a DNS name that resolves to
//! 127.0.0.1 are all the same loopback address), and names refused before any lookup.

use rivet_core::cidr::Cidr;
use rivet_core::policy::HttpPolicy;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The range of a non-public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// fc00::/7.
    UniqueLocal,
    /// 100.64.0.0/10.
    Cgnat,
    /// 169.254.169.254, fd00:ec2::254 (and the other well-known instance-metadata addresses).
    Metadata,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// Everything else IANA reserves: 240/4, 192.0.0/24, 198.18/15, 100::/64, 2001::/23,
    /// 64:ff9b:1::/48, fec0::/10, ::/96 (IPv4-compatible), ...
    Reserved,
}

impl Range {
    /// The words an error uses.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private (RFC 1918)",
            Self::UniqueLocal => "private (unique-local fc00::/7)",
            Self::Cgnat => "shared address space (CGNAT 100.64.0.0/10)",
            Self::Metadata => "cloud metadata",
            Self::LinkLocal => "link-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Unspecified => "unspecified",
            Self::Documentation => "documentation",
            Self::Reserved => "reserved",
        }
    }
}

/// The address a connection would really reach: IPv4-mapped (`::ffff:a.b.c.d`) and the
/// NAT64 well-known prefix (`64:ff9b::a.b.c.d`) are their IPv4 address; 6to4 (`2002:AABB:CCDD::`)
/// is the IPv4 address it tunnels to.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return IpAddr::V4(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return IpAddr::V4(embedded(s[1], s[2]));
            }
            ip
        }
    }
}

fn embedded(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// The non-public range `ip` (normalised) belongs to, or `None` for a public address.
pub fn classify(ip: IpAddr) -> Option<Range> {
    match normalize(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<Range> {
    let table: [([u8; 4], u32, Range); 17] = [
        ([169, 254, 169, 254], 32, Range::Metadata),
        ([169, 254, 170, 2], 32, Range::Metadata), // AWS ECS task metadata
        ([100, 100, 100, 200], 32, Range::Metadata), // Alibaba Cloud
        ([255, 255, 255, 255], 32, Range::Broadcast),
        ([0, 0, 0, 0], 8, Range::Unspecified),
        ([127, 0, 0, 0], 8, Range::Loopback),
        ([10, 0, 0, 0], 8, Range::Private),
        ([172, 16, 0, 0], 12, Range::Private),
        ([192, 168, 0, 0], 16, Range::Private),
        ([100, 64, 0, 0], 10, Range::Cgnat),
        ([169, 254, 0, 0], 16, Range::LinkLocal),
        ([224, 0, 0, 0], 4, Range::Multicast),
        ([192, 0, 2, 0], 24, Range::Documentation),
        ([198, 51, 100, 0], 24, Range::Documentation),
        ([203, 0, 113, 0], 24, Range::Documentation),
        ([240, 0, 0, 0], 4, Range::Reserved),
        ([198, 18, 0, 0], 15, Range::Reserved),
    ];
    let extra: [([u8; 4], u32, Range); 2] = [
        ([192, 0, 0, 0], 24, Range::Reserved),
        ([192, 88, 99, 0], 24, Range::Reserved),
    ];
    table
        .iter()
        .chain(extra.iter())
        .find(|(net, prefix, _)| in4(ip, *net, *prefix))
        .map(|(_, _, r)| *r)
}

fn in6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn classify_v6(ip: Ipv6Addr) -> Option<Range> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some(Range::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Range::Loopback);
    }
    let net = |t: &str| {
        t.parse::<Ipv6Addr>()
            .expect("the table holds valid addresses")
    };
    let table: [(&str, u32, Range); 11] = [
        ("fd00:ec2::254", 128, Range::Metadata),
        ("fc00::", 7, Range::UniqueLocal),
        ("fe80::", 10, Range::LinkLocal),
        ("fec0::", 10, Range::Reserved),
        ("ff00::", 8, Range::Multicast),
        ("2001:db8::", 32, Range::Documentation),
        ("3fff::", 20, Range::Documentation),
        ("2001::", 23, Range::Reserved),
        ("100::", 64, Range::Reserved),
        ("64:ff9b:1::", 48, Range::Reserved),
        // IPv4-compatible (deprecated) `::a.b.c.d`, and the rest of ::/8.
        ("::", 8, Range::Reserved),
    ];
    if let Some((_, _, r)) = table.iter().find(|(n, p, _)| in6(ip, net(n), *p)) {
        return Some(*r);
    }
    // Only global unicast (2000::/3) is public.
    if s[0] & 0xe000 != 0x2000 {
        return Some(Range::Reserved);
    }
    None
}

/// Host names refused before any lookup: cloud metadata services.
const METADATA_NAMES: [&str; 5] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// A host name as compared: lowercase, without the trailing dot.
pub fn canonical_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `host` (canonical) names a cloud metadata service.
pub fn is_metadata_name(host: &str) -> bool {
    METADATA_NAMES.contains(&host)
}

/// Whether `host` (canonical) matches the policy's host allow-list (empty: any host).
pub fn host_allowed(policy: &HttpPolicy, host: &str) -> bool {
    policy.hosts.is_empty()
        || policy.hosts.iter().any(|pattern| {
            let pattern = canonical_name(pattern);
            match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
                None => host == pattern,
            }
        })
}

/// Checks one resolved address against the policy. `Err` holds the refused range.
pub fn check(policy: &HttpPolicy, cidrs: &[Cidr], ip: IpAddr) -> Result<IpAddr, Range> {
    let ip = normalize(ip);
    if cidrs.iter().any(|c| c.contains(ip)) {
        return Ok(ip);
    }
    match classify(ip) {
        None => Ok(ip),
        Some(Range::Loopback) if policy.allow_loopback => Ok(ip),
        Some(Range::Private | Range::UniqueLocal | Range::Cgnat) if policy.allow_private => Ok(ip),
        Some(range) => Err(range),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Option<Range> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn every_spelling_of_loopback_is_loopback() {
        for s in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert_eq!(range(s), Some(Range::Loopback), "{s}");
        }
    }

    #[test]
    fn internal_ranges() {
        let cases = [
            ("10.1.2.3", Range::Private),
            ("172.31.255.255", Range::Private),
            ("192.168.0.1", Range::Private),
            ("::ffff:192.168.0.1", Range::Private),
            ("100.64.0.1", Range::Cgnat),
            ("169.254.169.254", Range::Metadata),
            ("::ffff:169.254.169.254", Range::Metadata),
            ("fd00:ec2::254", Range::Metadata),
            ("169.254.1.1", Range::LinkLocal),
            ("fe80::1", Range::LinkLocal),
            ("fd12::1", Range::UniqueLocal),
            ("224.0.0.1", Range::Multicast),
            ("ff02::1", Range::Multicast),
            ("255.255.255.255", Range::Broadcast),
            ("0.0.0.0", Range::Unspecified),
            ("0.1.2.3", Range::Unspecified),
            ("::", Range::Unspecified),
            ("192.0.2.1", Range::Documentation),
            ("2001:db8::1", Range::Documentation),
            ("240.0.0.1", Range::Reserved),
            ("198.18.0.1", Range::Reserved),
            ("::7f00:1", Range::Reserved),
            ("2001:0::1", Range::Reserved),
            ("64:ff9b:1::1", Range::Reserved),
        ];
        for (s, want) in cases {
            assert_eq!(range(s), Some(want), "{s}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for s in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::101:101",
        ] {
            assert_eq!(range(s), None, "{s}");
        }
    }

    #[test]
    fn policy_exceptions() {
        let mut p = HttpPolicy::default();
        let lo: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(check(&p, &[], lo), Err(Range::Loopback));
        let cidrs = vec!["127.0.0.1/32".parse().unwrap()];
        assert_eq!(check(&p, &cidrs, lo), Ok("127.0.0.1".parse().unwrap()));
        assert_eq!(
            check(&p, &cidrs, "127.0.0.2".parse().unwrap()),
            Err(Range::Loopback)
        );
        p.allow_private = true;
        assert!(check(&p, &[], "10.0.0.1".parse().unwrap()).is_ok());
        assert_eq!(
            check(&p, &[], "169.254.169.254".parse().unwrap()),
            Err(Range::Metadata)
        );
    }

    #[test]
    fn host_patterns() {
        let mut p = HttpPolicy::default();
        assert!(host_allowed(&p, "anything.example"));
        p.hosts = vec!["*.slack.com".into(), "api.example.com".into()];
        assert!(host_allowed(&p, "hooks.slack.com"));
        assert!(!host_allowed(&p, "slack.com"));
        assert!(!host_allowed(&p, "evilslack.com"));
        assert!(host_allowed(&p, "api.example.com"));
        assert!(!host_allowed(&p, "x.api.example.com"));
        assert_eq!(
            canonical_name("Metadata.Google.Internal."),
            "metadata.google.internal"
        );
        assert!(is_metadata_name(&canonical_name(
            "metadata.google.internal."
        )));
    }
}
