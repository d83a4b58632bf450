//! Parsing of the text (unixctl) arguments shared by every method: each
//! helper names the bad value and what is expected, so `ovs-appctl` users
//! get an actionable sentence.

use std::net::Ipv4Addr;

use crate::ApiError;

/// An IPv4 address (`A.B.C.D`); `what` names it in the error.
pub fn ipv4(s: &str, what: &str) -> Result<Ipv4Addr, ApiError> {
    s.parse().map_err(|_| {
        ApiError::invalid(format!(
            "{s:?} is not an IPv4 address: give {what} as A.B.C.D"
        ))
    })
}

/// A 16-bit port number.
pub fn port(s: &str) -> Result<u16, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid(format!("invalid port {s:?}: use 1-65535")))
}

/// An OpenFlow port number.
pub fn ofport(s: &str) -> Result<u16, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid(format!("{s:?} is not an OpenFlow port number")))
}

/// A MAC address `aa:bb:cc:dd:ee:ff` (also `-` separated).
pub fn mac(s: &str) -> Result<[u8; 6], ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "{s:?} is not a MAC address (e.g. 0a:58:0a:f4:01:05)"
        ))
    };
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// `A.B.C.D/N` with N at most 32.
pub fn cidr(s: &str) -> Result<(Ipv4Addr, u8), ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "{s:?} is not an address with prefix length: use A.B.C.D/N"
        ))
    };
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().ok().filter(|&l| l <= 32).ok_or_else(bad)?;
    Ok((ip, len))
}

/// `zone=N` and `ip=A.B.C.D` filters (conntrack), each at most once.
pub fn zone_ip_filter(args: &[String]) -> Result<(Option<u16>, Option<Ipv4Addr>), ApiError> {
    let (mut zone, mut ip) = (None, None);
    for a in args {
        if let Some(z) = a.strip_prefix("zone=") {
            if zone.is_some() {
                return Err(ApiError::invalid("zone= is given twice: give it once"));
            }
            zone = Some(z.parse().map_err(|_| {
                ApiError::invalid(format!(
                    "invalid zone {z:?}: use zone=N with N between 0 and 65535"
                ))
            })?);
        } else if let Some(i) = a.strip_prefix("ip=") {
            if ip.is_some() {
                return Err(ApiError::invalid("ip= is given twice: give it once"));
            }
            ip = Some(i.parse::<Ipv4Addr>().map_err(|_| {
                ApiError::invalid(format!("invalid address {i:?}: use ip=A.B.C.D"))
            })?);
        } else {
            return Err(ApiError::invalid(format!(
                "unknown argument {a:?}: expected zone=N and/or ip=A.B.C.D"
            )));
        }
    }
    Ok((zone, ip))
}

/// Splits `--strict` off the arguments.
pub fn strict_flag(args: &[String]) -> (bool, Vec<&str>) {
    let strict = args.iter().any(|a| a == "--strict");
    (
        strict,
        args.iter()
            .filter(|a| *a != "--strict")
            .map(String::as_str)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let m = mac("0a:58:0A:f4:01:05").unwrap();
        assert_eq!(fmt_mac(&m), "0a:58:0a:f4:01:05");
        assert!(mac("0a:58:0a:f4:01").is_err());
        assert!(mac("0a:58:0a:f4:01:005").is_err());
        assert!(mac("zz:58:0a:f4:01:05").is_err());
    }

    #[test]
    fn cidr_checks_the_length() {
        assert_eq!(
            cidr("10.0.0.1/24").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 1), 24)
        );
        assert!(cidr("10.0.0.1/33").is_err());
        assert!(cidr("10.0.0.1").is_err());
    }

    #[test]
    fn filters_refuse_unknown_and_repeated() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            zone_ip_filter(&s(&["zone=3", "ip=10.0.0.1"])).unwrap(),
            (Some(3), Some(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert!(zone_ip_filter(&s(&["zone=3", "zone=4"])).is_err());
        assert!(zone_ip_filter(&s(&["port=3"]))
            .unwrap_err()
            .message
            .contains("unknown argument"));
        assert!(zone_ip_filter(&s(&["zone=70000"])).is_err());
    }
}
