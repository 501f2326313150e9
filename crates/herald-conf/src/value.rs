//! Typed option values: what a raw value becomes once its option's [`Kind`] is known, the rules for each kind
//! (booleans, integers, octal modes, enumerations, routes, `max_retries`, CIDR lists), and how values print.

use std::{fmt, str::FromStr};

use crate::{
    ast::{RawValue, Scalar},
    lexer::render_value,
    net::Cidr,
};

/// The type of an option, which decides how its text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `on|off`, `true|false`, `enabled|disabled`, `yes|no`, `1|0`, any case.
    Bool,
    /// A decimal integer between `min` and `max`.
    Int { min: i64, max: i64 },
    /// A non-negative number of seconds, at most [`MAX_SECONDS`] (100 years).
    Seconds,
    /// A non-negative number of milliseconds, at most [`MAX_MILLIS`] (100 years).
    Millis,
    /// A non-negative number of bytes.
    Bytes,
    /// A file mode, read as octal (`0644`; the leading zero is optional).
    Mode,
    /// Free text.
    Str,
    /// A file or directory path.
    Path,
    /// A file path, or Momentum's special value `none` (any case, quoted or not: quotes change nothing in
    /// Momentum's language), which unsets the option in its scope: a domain can drop a certificate it would
    /// otherwise inherit. `none` reads as [`Value::Unset`].
    PathOrNone,
    /// One of the listed words, case-insensitive; stored in the spelling of the list.
    Enum(&'static [&'static str]),
    /// A list of words `( a b c )`; a single value is a one-item list.
    List,
    /// A list of words, each one of the listed ones (case-insensitive; stored in the spelling of the list).
    Words(&'static [&'static str]),
    /// `[ key = value … ]`.
    Pairs,
    /// A list of delivery routes (`apn://host?port=2195` or Momentum's `http://host?port=2195`,
    /// `https://host[:port]`).
    Routes,
    /// `auto`, `none` or a non-negative integer.
    MaxRetries,
    /// A list of IP addresses or CIDR blocks.
    Cidrs,
    /// A single IP address.
    Ip,
    /// An `http://` or `https://` URL (scheme in any case) with a host, checked as a web client would read it
    /// ([`check_http_url`]); an empty string stands for no URL.
    HttpUrl,
}

impl Kind {
    /// How the kind is described in documentation and error messages.
    pub fn describe(&self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::Int { min, max } if *max >= i64::from(u32::MAX) => format!("integer ≥ {min}"),
            Kind::Int { min, max } => format!("integer {min}..{max}"),
            Kind::Seconds => "seconds".into(),
            Kind::Millis => "milliseconds".into(),
            Kind::Bytes => "bytes".into(),
            Kind::Mode => "octal file mode".into(),
            Kind::Str => "string".into(),
            Kind::Path => "path".into(),
            Kind::PathOrNone => "path or `none`".into(),
            Kind::Enum(words) => words.join(" | "),
            Kind::List => "list of strings".into(),
            Kind::Words(words) => format!("list of: {}", words.join(" | ")),
            Kind::Pairs => "array `[ key = value ]`".into(),
            Kind::Routes => "list of routes".into(),
            Kind::MaxRetries => "auto | none | integer".into(),
            Kind::Cidrs => "list of IPs/CIDRs".into(),
            Kind::Ip => "IP address".into(),
            Kind::HttpUrl => "http(s) URL".into(),
        }
    }

    fn is_list(&self) -> bool {
        matches!(
            self,
            Kind::List | Kind::Words(_) | Kind::Routes | Kind::Cidrs
        )
    }
}

/// How a notification is carried to APNs, chosen by the route's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteProtocol {
    /// `apn://host?port=2195`: the legacy binary protocol over TLS. Momentum lets the protocol part be written
    /// `http` (docs/momentum-compat.md#routes), so `http://host?port=2195` is this protocol too.
    Binary,
    /// `https://host[:port]`: the HTTP/2 provider API.
    Http2,
}

/// One entry of `routes`. It prints as `apn://HOST?port=N` or `https://HOST[:PORT]`, however it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub protocol: RouteProtocol,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.protocol {
            RouteProtocol::Binary => write!(f, "apn://{host}?port={}", self.port),
            RouteProtocol::Http2 if self.port == 443 => write!(f, "https://{host}"),
            RouteProtocol::Http2 => write!(f, "https://{host}:{}", self.port),
        }
    }
}

/// Why a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "a route needs a scheme: apn://HOST?port=2195 (binary; Momentum's http://HOST?port=2195 too) or \
         https://HOST[:PORT] (HTTP/2)"
    )]
    NoScheme,
    #[error(
        "unsupported route scheme `{0}`: herald delivers with apn:// or http:// (binary) or https:// (HTTP/2)"
    )]
    Scheme(String),
    #[error("the route has no host")]
    NoHost,
    #[error("bad port `{0}` (expected 1..65535)")]
    Port(String),
    #[error("unknown route parameter `{0}` (only `port` is understood)")]
    Param(String),
    #[error("a route takes no path, and an https:// route no query")]
    Path,
    #[error(
        "route host `{0}` is neither a DNS name nor an IP address (an IPv6 address goes in brackets: \
         https://[2001:db8::1]:443)"
    )]
    Host(String),
}

impl FromStr for Route {
    type Err = RouteError;

    fn from_str(s: &str) -> Result<Self, RouteError> {
        let (scheme, rest) = s.split_once("://").ok_or(RouteError::NoScheme)?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            // Momentum: "Specifying the protocol as mm7, apn and gcm is optional. Instead, you can use http";
            // the delivery method says which protocol is meant, and herald's is APNs.
            "apn" | "http" => RouteProtocol::Binary,
            "https" => RouteProtocol::Http2,
            other => return Err(RouteError::Scheme(other.to_string())),
        };
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('/') || (protocol == RouteProtocol::Http2 && query.is_some()) {
            return Err(RouteError::Path);
        }
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return Err(RouteError::NoHost);
        }
        check_host(host, authority.starts_with('['))?;
        let mut port = match port {
            Some(p) => Some(parse_port(p)?),
            None => None,
        };
        for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some((k, v)) if k.eq_ignore_ascii_case("port") => port = Some(parse_port(v)?),
                _ => return Err(RouteError::Param(param.to_string())),
            }
        }
        let default_port = match protocol {
            RouteProtocol::Binary => 2195,
            RouteProtocol::Http2 => 443,
        };
        Ok(Route {
            protocol,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(default_port),
        })
    }
}

fn parse_port(p: &str) -> Result<u16, RouteError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(RouteError::Port(p.to_string())),
    }
}

/// Refuses a host that could not be connected to as written: a bracketed host must be an IPv6 address, and a
/// bare one a DNS name or an IPv4 address. An IPv6 address without brackets is refused rather than split at its
/// last colon (`https://fe80::1` would otherwise read as host `fe80:` and port 1), as is anything a URL would
/// read as something else (`user@host`, `host#fragment`, spaces).
fn check_host(host: &str, bracketed: bool) -> Result<(), RouteError> {
    let fits = if bracketed {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if fits {
        Ok(())
    } else {
        Err(RouteError::Host(host.to_owned()))
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), RouteError> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(RouteError::NoHost)?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(p))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(RouteError::Port(after.to_string())),
        };
    }
    Ok(match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    })
}

/// Why a URL was refused as an `http://` or `https://` URL ([`Kind::HttpUrl`]). The URL itself is not repeated:
/// it may carry a password or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpUrlError {
    #[error("expected an http:// or https:// URL, such as https://hooks.example/herald")]
    NoScheme,
    #[error("unsupported scheme `{0}`: only http:// and https:// URLs can be posted to")]
    Scheme(String),
    #[error("a URL takes no blanks or control characters (write a blank in its path as %20)")]
    Blank,
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "host `{0}` is neither a DNS name nor an IP address (an IPv6 address goes in brackets: \
         https://[2001:db8::1]/hook)"
    )]
    Host(String),
    #[error("bad port `{0}` (expected 1..65535)")]
    Port(String),
}

/// Checks that `s` is an `http://` or `https://` URL (the scheme in any case) that a web client reads as written:
/// a host that is a DNS name, an IPv4 address or a bracketed IPv6 address, an optional port 1..65535, optional user
/// information, and no blanks or control characters anywhere. Anything else would be refused by the client at every
/// attempt, or sent somewhere not meant.
pub fn check_http_url(s: &str) -> Result<(), HttpUrlError> {
    let (scheme, rest) = s.split_once("://").ok_or(HttpUrlError::NoScheme)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(if scheme.is_empty() || scheme.contains([' ', '/']) {
            HttpUrlError::NoScheme
        } else {
            HttpUrlError::Scheme(scheme.to_owned())
        });
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(HttpUrlError::Blank);
    }
    // A web client ends the authority at a backslash as at a slash (for http and https).
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| HttpUrlError::Host(host_port.to_owned()))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(HttpUrlError::Host(host.to_owned()));
        }
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(HttpUrlError::Port(after.to_owned())),
        }
    } else {
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        };
        check_url_host(host)?;
        (host, port)
    };
    if host.is_empty() {
        return Err(HttpUrlError::NoHost);
    }
    match port {
        Some(p) if !matches!(p.parse::<u16>(), Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit())) => {
            Err(HttpUrlError::Port(p.to_owned()))
        }
        _ => Ok(()),
    }
}

/// A host written without brackets: letters (any script), digits, `.`, `-`, `_` and `~`; one whose last label is a
/// number must be an IPv4 address, as a web client reads it (`192.0.2.300` is refused, not looked up).
fn check_url_host(host: &str) -> Result<(), HttpUrlError> {
    let bad = || HttpUrlError::Host(host.to_owned());
    if host.is_empty() {
        return Err(HttpUrlError::NoHost);
    }
    if !host
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '~'))
    {
        return Err(bad());
    }
    let labels = host.strip_suffix('.').unwrap_or(host);
    let last = labels.rsplit('.').next().unwrap_or(labels);
    let numeric = |l: &str| {
        !l.is_empty()
            && (l.bytes().all(|b| b.is_ascii_digit())
                || l.strip_prefix("0x")
                    .or_else(|| l.strip_prefix("0X"))
                    .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())))
    };
    if numeric(last) && !is_url_ipv4(labels) {
        return Err(bad());
    }
    Ok(())
}

/// Whether `host` is an IPv4 address in one of the forms a web client reads (`192.0.2.1`, `127.1`, `0x7f.1`,
/// `0177.0.0.1`, `2130706433`): one to four parts, decimal, `0x` hexadecimal or `0` octal, each but the last at
/// most 255, the last filling the bytes left.
fn is_url_ipv4(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return false;
    }
    let number = |p: &str| -> Option<u64> {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"))
        {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (p, 10)
        };
        if digits.is_empty() {
            // `0x` alone is zero.
            return (radix == 16).then_some(0);
        }
        u64::from_str_radix(digits, radix).ok()
    };
    let Some(values) = parts
        .iter()
        .map(|p| number(p))
        .collect::<Option<Vec<u64>>>()
    else {
        return false;
    };
    let (last, first) = match values.split_last() {
        Some(v) => v,
        None => return false,
    };
    first.iter().all(|&v| v <= 255) && *last < 1u64 << (8 * (5 - values.len()))
}

/// `max_retries`: how many retries before a notification fails permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxRetries {
    /// As many as fit in `message_expiration` given the retry schedule (Momentum's default).
    Auto,
    /// No limit other than `message_expiration`.
    None,
    /// At most this many retries (and still bounded by `message_expiration`).
    Count(u32),
}

impl fmt::Display for MaxRetries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxRetries::Auto => f.write_str("auto"),
            MaxRetries::None => f.write_str("none"),
            MaxRetries::Count(n) => write!(f, "{n}"),
        }
    }
}

/// A typed option value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    /// Integers, seconds, milliseconds and bytes.
    Int(i64),
    /// An octal file mode.
    Mode(u32),
    /// Strings, paths, enumeration words (in their canonical spelling) and IP addresses.
    Str(String),
    List(Vec<String>),
    Pairs(Vec<(String, String)>),
    Routes(Vec<Route>),
    MaxRetries(MaxRetries),
    Cidrs(Vec<Cidr>),
    /// The option is not set anywhere along the scope path and has no default, or is unset with `none`
    /// ([`Kind::PathOrNone`]).
    Unset,
}

impl Value {
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_list(&self) -> &[String] {
        match self {
            Value::List(l) => l,
            _ => &[],
        }
    }

    pub fn as_routes(&self) -> &[Route] {
        match self {
            Value::Routes(r) => r,
            _ => &[],
        }
    }

    pub fn as_cidrs(&self) -> &[Cidr] {
        match self {
            Value::Cidrs(c) => c,
            _ => &[],
        }
    }

    pub fn is_unset(&self) -> bool {
        matches!(self, Value::Unset)
    }

    /// Writes the value in the configuration language, the way `config eval` prints it: lists as `(`, one item per
    /// line indented by two spaces, `)`.
    pub fn render(&self) -> String {
        let list_quoted = |items: Vec<String>, quoted: bool| {
            let mut s = String::from("(\n");
            for i in items {
                s.push_str("  ");
                s.push_str(&render_value(&i, quoted));
                s.push('\n');
            }
            s.push(')');
            s
        };
        let list = |items: Vec<String>| list_quoted(items, false);
        match self {
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Mode(m) => format!("{m:04o}"),
            Value::Str(s) => render_value(s, false),
            Value::List(l) => list(l.clone()),
            Value::Routes(r) => list_quoted(r.iter().map(ToString::to_string).collect(), true),
            Value::Cidrs(c) => list(c.iter().map(ToString::to_string).collect()),
            Value::Pairs(p) => {
                let mut s = String::from("[");
                for (k, v) in p {
                    s.push_str(&format!(
                        " {} = {}",
                        render_value(k, false),
                        render_value(v, false)
                    ));
                }
                s.push_str(" ]");
                s
            }
            Value::MaxRetries(m) => m.to_string(),
            Value::Unset => "(unset)".into(),
        }
    }
}

/// Reads a boolean in any spelling herald accepts.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "enabled" | "yes" | "1" => Some(true),
        "off" | "false" | "disabled" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// The longest duration an option takes, in seconds: 100 years (of 365 days). herald adds durations to clocks
/// (the next retry, the next heartbeat), which must not overflow.
pub const MAX_SECONDS: i64 = 100 * 365 * 86_400;

/// [`MAX_SECONDS`] in milliseconds.
pub const MAX_MILLIS: i64 = MAX_SECONDS * 1_000;

/// True for an optional sign followed by one or more decimal digits.
fn is_whole_number(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn parse_scalar(kind: Kind, s: &str) -> Result<Value, String> {
    let nonneg = |s: &str| -> Result<Value, String> {
        s.parse::<u64>()
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .map(Value::Int)
            .ok_or_else(|| "expected a non-negative whole number".to_string())
    };
    // A duration: a non-negative whole number of `unit`s, at most `max` (100 years).
    let duration = |s: &str, max: i64, unit: &str| -> Result<Value, String> {
        let too_long = || format!("more than the maximum of {max} {unit} (100 years)");
        match nonneg(s) {
            Ok(Value::Int(n)) if n > max => Err(too_long()),
            Ok(v) => Ok(v),
            // Digits only, but past what a 64-bit number holds.
            Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Err(too_long()),
            Err(e) => Err(format!("{e} of {unit}")),
        }
    };
    match kind {
        Kind::Bool => parse_bool(s).map(Value::Bool).ok_or_else(|| {
            "expected a boolean (on/off, true/false, enabled/disabled, yes/no, 1/0)".into()
        }),
        Kind::Int { min, max } => {
            // Both bounds, whatever the documentation table shows (`integer ≥ -1` when the maximum is large).
            let range = format!("expected integer {min}..{max}");
            match s.parse::<i64>() {
                Ok(n) if n >= min && n <= max => Ok(Value::Int(n)),
                Ok(n) => Err(format!("{n} is out of range ({range})")),
                // Digits only (with a sign), but past what a 64-bit number holds (not repeated: it may be long).
                Err(_) if is_whole_number(s) => {
                    Err(format!("the number is out of range ({range})"))
                }
                Err(_) => Err(format!("expected an {}", kind.describe())),
            }
        }
        Kind::Seconds => duration(s, MAX_SECONDS, "seconds"),
        Kind::Millis => duration(s, MAX_MILLIS, "milliseconds"),
        Kind::Bytes => nonneg(s).map_err(|e| format!("{e} of bytes")),
        Kind::Mode => match u32::from_str_radix(s, 8) {
            Ok(m) if m <= 0o7777 && !s.starts_with(['+', '-']) => Ok(Value::Mode(m)),
            _ => Err("expected an octal file mode such as 0644".into()),
        },
        Kind::Str => Ok(Value::Str(s.to_string())),
        Kind::PathOrNone if s.eq_ignore_ascii_case("none") => Ok(Value::Unset),
        Kind::Path | Kind::PathOrNone => {
            if s.is_empty() {
                Err("expected a path, found an empty string".into())
            } else {
                Ok(Value::Str(s.to_string()))
            }
        }
        Kind::Enum(words) => words
            .iter()
            .find(|w| w.eq_ignore_ascii_case(s))
            .map(|w| Value::Str((*w).to_string()))
            .ok_or_else(|| format!("expected one of: {}", words.join(", "))),
        Kind::MaxRetries => match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Value::MaxRetries(MaxRetries::Auto)),
            "none" => Ok(Value::MaxRetries(MaxRetries::None)),
            n => n
                .parse::<u32>()
                .map(|n| Value::MaxRetries(MaxRetries::Count(n)))
                .map_err(|_| "expected `auto`, `none` or a non-negative whole number".into()),
        },
        Kind::Ip => s
            .parse::<std::net::IpAddr>()
            .map(|ip| Value::Str(ip.to_string()))
            .map_err(|_| "expected an IP address".into()),
        // An empty value stands for no URL (a domain's way to drop one set globally).
        Kind::HttpUrl if s.is_empty() => Ok(Value::Str(String::new())),
        Kind::HttpUrl => check_http_url(s)
            .map(|()| Value::Str(s.to_string()))
            .map_err(|e| e.to_string()),
        Kind::List | Kind::Words(_) | Kind::Routes | Kind::Cidrs | Kind::Pairs => {
            Err("internal: not a scalar kind".into())
        }
    }
}

/// A value that does not fit its option's kind: which item was wrong and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub at: crate::ast::Pos,
    pub text: String,
    pub reason: String,
}

fn items_of(kind: Kind, raw: &RawValue) -> Result<Vec<&Scalar>, String> {
    match raw {
        RawValue::Scalar(s) => Ok(vec![s]),
        RawValue::List(items) => Ok(items.iter().collect()),
        RawValue::Pairs(_) => Err(format!(
            "expected a {}, found an array `[ … ]`",
            kind.describe()
        )),
    }
}

/// Reads a raw value as `kind`.
pub fn parse_value(kind: Kind, raw: &RawValue) -> Result<Value, ValueError> {
    let whole = |reason: String| {
        let (at, text) = match raw {
            RawValue::Scalar(s) => (s.pos, s.text.clone()),
            RawValue::List(items) => (
                items.first().map(|s| s.pos).unwrap_or_default(),
                "( … )".into(),
            ),
            RawValue::Pairs(p) => (
                p.first().map(|(k, _)| k.pos).unwrap_or_default(),
                "[ … ]".into(),
            ),
        };
        ValueError { at, text, reason }
    };
    let item_err = |s: &Scalar, reason: String| ValueError {
        at: s.pos,
        // A URL's password and query are not repeated in an error (they may be secrets).
        text: match kind {
            Kind::HttpUrl => {
                crate::secrets::mask_url_credentials(&s.text).unwrap_or_else(|| s.text.clone())
            }
            _ => s.text.clone(),
        },
        reason,
    };
    match kind {
        Kind::Pairs => match raw {
            RawValue::Pairs(p) => Ok(Value::Pairs(
                p.iter()
                    .map(|(k, v)| (k.text.clone(), v.text.clone()))
                    .collect(),
            )),
            _ => Err(whole("expected an array `[ key = value … ]`".into())),
        },
        Kind::List => {
            let items = items_of(kind, raw).map_err(whole)?;
            // Items are separated by blanks, as in Momentum. A comma written between them is not a separator
            // but part of a word (`( "k1", "k2" )` would read as the three keys `k1`, `,` and `k2`): refused,
            // since these lists hold API keys and host names a stray one would let in.
            if let Some(s) = items.iter().find(|s| !s.quoted && s.text.contains(',')) {
                return Err(item_err(
                    s,
                    "a comma in a list: items are separated by blanks, as in `( \"a\" \"b\" )` \
                     (quote an item that contains a comma)"
                        .into(),
                ));
            }
            Ok(Value::List(
                items.into_iter().map(|s| s.text.clone()).collect(),
            ))
        }
        Kind::Words(words) => {
            let mut out = Vec::new();
            for s in items_of(kind, raw).map_err(whole)? {
                let word = parse_scalar(Kind::Enum(words), &s.text).map_err(|r| item_err(s, r))?;
                if let Value::Str(w) = word
                    && !out.contains(&w)
                {
                    out.push(w);
                }
            }
            Ok(Value::List(out))
        }
        Kind::Routes => {
            let mut out = Vec::new();
            for s in items_of(kind, raw).map_err(whole)? {
                out.push(
                    s.text
                        .parse::<Route>()
                        .map_err(|e| item_err(s, e.to_string()))?,
                );
            }
            Ok(Value::Routes(out))
        }
        Kind::Cidrs => {
            let mut out = Vec::new();
            for s in items_of(kind, raw).map_err(whole)? {
                out.push(
                    s.text
                        .parse::<Cidr>()
                        .map_err(|e| item_err(s, e.to_string()))?,
                );
            }
            Ok(Value::Cidrs(out))
        }
        k if k.is_list() => Err(whole("internal: unhandled list kind".into())),
        k => match raw {
            RawValue::Scalar(s) => parse_scalar(k, &s.text).map_err(|r| item_err(s, r)),
            RawValue::List(_) => Err(whole(format!(
                "expected a single {}, found a list `( … )`",
                k.describe()
            ))),
            RawValue::Pairs(_) => Err(whole(format!(
                "expected a single {}, found an array `[ … ]`",
                k.describe()
            ))),
        },
    }
}

/// Reads an option's default text (from the option table) as `kind`.
pub fn parse_default(kind: Kind, text: &str) -> Result<Value, String> {
    let scalar = Scalar {
        text: text.to_string(),
        quoted: true,
        pos: Default::default(),
    };
    let raw = match kind {
        Kind::List | Kind::Words(_) | Kind::Routes | Kind::Cidrs => RawValue::List(
            text.split_whitespace()
                .map(|t| Scalar {
                    text: t.into(),
                    ..scalar.clone()
                })
                .collect(),
        ),
        _ => RawValue::Scalar(scalar),
    };
    parse_value(kind, &raw).map_err(|e| e.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(s: &str) -> RawValue {
        RawValue::Scalar(Scalar {
            text: s.into(),
            quoted: false,
            pos: Default::default(),
        })
    }

    #[test]
    fn booleans_in_every_spelling() {
        for t in ["on", "TRUE", "Enabled", "yes", "1"] {
            assert_eq!(
                parse_value(Kind::Bool, &scalar(t)).unwrap(),
                Value::Bool(true),
                "{t}"
            );
        }
        for f in ["off", "False", "DISABLED", "No", "0"] {
            assert_eq!(
                parse_value(Kind::Bool, &scalar(f)).unwrap(),
                Value::Bool(false),
                "{f}"
            );
        }
        assert!(parse_value(Kind::Bool, &scalar("maybe")).is_err());
    }

    #[test]
    fn word_lists_take_only_the_listed_words() {
        const WORDS: &[&str] = &["inject", "push", "metrics"];
        let list = RawValue::List(
            ["Push", "metrics", "push"]
                .iter()
                .map(|t| Scalar {
                    text: (*t).into(),
                    quoted: false,
                    pos: Default::default(),
                })
                .collect(),
        );
        assert_eq!(
            parse_value(Kind::Words(WORDS), &list).unwrap(),
            Value::List(vec!["push".into(), "metrics".into()])
        );
        assert_eq!(
            parse_value(Kind::Words(WORDS), &scalar("metrics")).unwrap(),
            Value::List(vec!["metrics".into()])
        );
        let err = parse_value(Kind::Words(WORDS), &scalar("smtp")).unwrap_err();
        assert_eq!(err.text, "smtp");
        assert!(
            err.reason.contains("inject, push, metrics"),
            "{}",
            err.reason
        );
    }

    /// http(s) URLs as a web client reads them: the scheme in any case, IPv4 in its short forms, bracketed IPv6;
    /// other schemes, blanks, a missing host, a bad port or host refused; the empty value is no URL.
    #[test]
    fn http_urls() {
        for ok in [
            "https://hooks.example/h",
            "HTTP://192.0.2.2:28118/hook",
            "hTTps://u:p@hooks.example:1/x?y#z",
            "http://[::1]/h",
            "http://127.1",
            "http://0x7f.0.0.1/",
            "http://2130706433/",
            "http://hooks.example\\path",
            "https://bücher.example/",
        ] {
            assert_eq!(check_http_url(ok), Ok(()), "{ok}");
        }
        let refused = [
            ("ftp://h.example", HttpUrlError::Scheme("ftp".into())),
            ("not a url", HttpUrlError::NoScheme),
            ("://h.example", HttpUrlError::NoScheme),
            ("https://", HttpUrlError::NoHost),
            ("https://u:p@/h", HttpUrlError::NoHost),
            ("https://h.example/a b", HttpUrlError::Blank),
            (
                "https://h.example:65536",
                HttpUrlError::Port("65536".into()),
            ),
            ("https://h.example:+80", HttpUrlError::Port("+80".into())),
            ("https://[::1]x", HttpUrlError::Port("x".into())),
            ("https://[::1", HttpUrlError::Host("[::1".into())),
            ("https://256.1.1.1", HttpUrlError::Host("256.1.1.1".into())),
            ("https://1.2.3.4.5", HttpUrlError::Host("1.2.3.4.5".into())),
            (
                "https://h%41.example",
                HttpUrlError::Host("h%41.example".into()),
            ),
        ];
        for (url, want) in refused {
            assert_eq!(check_http_url(url), Err(want), "{url}");
        }
        assert_eq!(
            parse_value(Kind::HttpUrl, &scalar("")).unwrap(),
            Value::Str(String::new())
        );
        let e = parse_value(Kind::HttpUrl, &scalar("ftp://u:pw@h.example/?k=key")).unwrap_err();
        assert_eq!(e.text, "ftp://u:********@h.example/?********");
    }

    #[test]
    fn octal_modes() {
        // docs/momentum-compat.md#lexical-rules: logmode = 0644 is octal
        assert_eq!(
            parse_value(Kind::Mode, &scalar("0644")).unwrap(),
            Value::Mode(0o644)
        );
        assert_eq!(Value::Mode(0o644).render(), "0644");
        assert!(parse_value(Kind::Mode, &scalar("0999")).is_err());
    }

    #[test]
    fn enums_case_insensitive_canonical() {
        let k = Kind::Enum(&["ESMTP", "APN"]);
        assert_eq!(
            parse_value(k, &scalar("apn")).unwrap(),
            Value::Str("APN".into())
        );
        let e = parse_value(k, &scalar("smtpx")).unwrap_err();
        assert!(e.reason.contains("ESMTP, APN"));
    }

    #[test]
    fn routes() {
        let r: Route = "apn://gateway.push.apple.com?port=2195".parse().unwrap();
        assert_eq!(
            r,
            Route {
                protocol: RouteProtocol::Binary,
                host: "gateway.push.apple.com".into(),
                port: 2195
            }
        );
        let r: Route = "https://api.push.apple.com".parse().unwrap();
        assert_eq!((r.protocol, r.port), (RouteProtocol::Http2, 443));
        let r: Route = "https://127.0.0.1:8443".parse().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", 8443));
        let r: Route = "https://[::1]:8443".parse().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 8443));
        assert_eq!(r.to_string(), "https://[::1]:8443");
        let r: Route = "https://api.push.apple.com:443/".parse().unwrap();
        assert_eq!(r.to_string(), "https://api.push.apple.com");
        assert_eq!(
            Value::Routes(vec![r]).render(),
            "(\n  \"https://api.push.apple.com\"\n)"
        );
        assert!("smtp://x".parse::<Route>().is_err());
        assert!("gateway.push.apple.com".parse::<Route>().is_err());
        assert!("http://x/path?port=2195".parse::<Route>().is_err());
    }

    #[test]
    fn momentums_http_scheme_is_the_binary_protocol() {
        // docs/momentum-compat.md#routes: the protocol part may be written `http`.
        let r: Route = "http://gateway.push.apple.com?port=2195".parse().unwrap();
        assert_eq!(
            r,
            Route {
                protocol: RouteProtocol::Binary,
                host: "gateway.push.apple.com".into(),
                port: 2195
            }
        );
        assert_eq!(r.to_string(), "apn://gateway.push.apple.com?port=2195");
        let r: Route = "HTTP://Gateway.Sandbox.Push.Apple.Com".parse().unwrap();
        assert_eq!(
            (r.protocol, r.host.as_str(), r.port),
            (
                RouteProtocol::Binary,
                "gateway.sandbox.push.apple.com",
                2195
            )
        );
        let r: Route = "http://127.0.0.1:2196".parse().unwrap();
        assert_eq!((r.protocol, r.port), (RouteProtocol::Binary, 2196));
        // https stays HTTP/2.
        let r: Route = "https://api.push.apple.com".parse().unwrap();
        assert_eq!((r.protocol, r.port), (RouteProtocol::Http2, 443));
        assert!("apn://x?port=0".parse::<Route>().is_err());
        // Hosts: an IPv6 address only in brackets, else a DNS name or an IPv4 address.
        let host_error = |r: &str| match r.parse::<Route>() {
            Err(RouteError::Host(h)) => h,
            other => panic!("{r}: {other:?}"),
        };
        assert_eq!(host_error("https://fe80::1"), "fe80:");
        assert_eq!(host_error("apn://::1?port=2195"), ":");
        assert_eq!(
            host_error("https://user@api.push.apple.com"),
            "user@api.push.apple.com"
        );
        assert_eq!(
            host_error("https://api.push.apple.com#frag"),
            "api.push.apple.com#frag"
        );
        assert_eq!(host_error("https://a b"), "a b");
        assert_eq!(host_error("https://[not-v6]:443"), "not-v6");
        let v6: Route = "https://[fe80::1]:8443".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("fe80::1", 8443));
        let v4: Route = "apn://127.0.0.1?port=2195".parse().unwrap();
        assert_eq!((v4.host.as_str(), v4.port), ("127.0.0.1", 2195));
        assert!("https://api_internal.example:443".parse::<Route>().is_ok());
        assert!("apn://x?pref=10".parse::<Route>().is_err());
    }

    #[test]
    fn an_integer_out_of_range_names_both_bounds() {
        let k = Kind::Int {
            min: -1,
            max: u32::MAX as i64,
        };
        let e = parse_value(k, &scalar("5000000000")).unwrap_err();
        assert_eq!(
            e.reason,
            "5000000000 is out of range (expected integer -1..4294967295)"
        );
        let e = parse_value(k, &scalar("-2")).unwrap_err();
        assert!(e.reason.contains("-1..4294967295"), "{}", e.reason);
        // Past 64 bits: still out of range, not "expected an integer", and the digits are not repeated.
        let e = parse_value(k, &scalar(&"9".repeat(40))).unwrap_err();
        assert_eq!(
            e.reason,
            "the number is out of range (expected integer -1..4294967295)"
        );
        let e = parse_value(k, &scalar("many")).unwrap_err();
        assert_eq!(e.reason, "expected an integer ≥ -1");
    }

    #[test]
    fn max_retries() {
        assert_eq!(
            parse_value(Kind::MaxRetries, &scalar("AUTO")).unwrap(),
            Value::MaxRetries(MaxRetries::Auto)
        );
        assert_eq!(
            parse_value(Kind::MaxRetries, &scalar("none")).unwrap(),
            Value::MaxRetries(MaxRetries::None)
        );
        assert_eq!(
            parse_value(Kind::MaxRetries, &scalar("5")).unwrap(),
            Value::MaxRetries(MaxRetries::Count(5))
        );
        assert!(parse_value(Kind::MaxRetries, &scalar("-1")).is_err());
    }

    #[test]
    fn list_for_scalar_kind_is_an_error() {
        let raw = RawValue::List(vec![]);
        assert!(parse_value(Kind::Seconds, &raw).is_err());
        assert_eq!(
            parse_value(Kind::List, &scalar("one")).unwrap(),
            Value::List(vec!["one".into()])
        );
    }

    #[test]
    fn list_render() {
        let v = Value::List(vec!["127.0.0.0/8".into(), "a b".into()]);
        assert_eq!(v.render(), "(\n  127.0.0.0/8\n  \"a b\"\n)");
    }
}
