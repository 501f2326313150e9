//! The `nats-server` fixtures of herald-testkit, under the path these tests have always used.

// Not every test binary that includes the support module starts a NATS server.
#[allow(unused_imports)]
pub use herald_testkit::nats::*;
