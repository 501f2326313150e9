//! herald-testkit: fixtures the tests of several herald crates share (a dev-dependency only, never shipped).
//!
//! It owns [`nats`], the `nats-server` processes with JetStream that the tests of the JetStream spool start on
//! loopback ports (one server, or a three-server cluster with routes) and kill when dropped, and [`tmpfs`], the small
//! file systems the full-disk tests fill.

pub mod nats;
pub mod tmpfs;

/// A loopback port free now (the system picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}
