//! herald-testkit: fixtures the tests of several herald crates share (a dev-dependency only, never shipped).
//!
//! It owns [`nats`], the `nats-server` processes with JetStream that the tests of the JetStream spool start on
//! loopback ports (one server, or a three-server cluster with routes) and kill when dropped, and [`tmpfs`], the small
//! file systems the full-disk tests fill.

pub mod nats;
pub mod tmpfs;

/// A loopback port free now, for a server a test starts later (or never: a closed route).
///
/// It is picked outside the system's ephemeral port range, and never twice in one test process. A port the system
/// picks (`bind(0)`) comes from that range, which is also where outgoing connections take their local ports: a
/// client that connects again and again to a server not started yet can be given that very port as its own and
/// connect to itself (a TCP "simultaneous open" on loopback), and any connection can take it between the pick and
/// the server's bind. Either way the server then fails with "address already in use".
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

    let (low, high) = ephemeral_range();
    // The larger of the two spans outside the ephemeral range, above the well-known and registered crowd.
    let below = (10_000u16, low.max(10_000));
    let above = (high.saturating_add(1).max(10_000), u16::MAX);
    let (from, to) = if below.1 - below.0 >= above.1 - above.0 {
        below
    } else {
        above
    };
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let random = RandomState::new();
    if to > from {
        for attempt in 0u32..10_000 {
            let port = from + (random.hash_one(attempt) % u64::from(to - from)) as u16;
            if given.contains(&port) {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    // No room outside the ephemeral range: let the system pick.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
    given.insert(port);
    port
}

/// The system's ephemeral port range (Linux's `ip_local_port_range`; its usual default elsewhere).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>());
            match (parts.next(), parts.next()) {
                (Some(Ok(low)), Some(Ok(high))) if low <= high => Some((low, high)),
                _ => None,
            }
        })
        .unwrap_or((32_768, 60_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_outside_the_ephemeral_range_and_never_given_twice() {
        let (low, high) = ephemeral_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        for p in ports {
            assert!(!(low..=high).contains(&p), "{p} is in {low}..={high}");
            assert!(p >= 10_000);
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("the port is free");
        }
    }
}
