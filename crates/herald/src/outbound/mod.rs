//! Outbound: the per-(binding, domain) pool of APNs connections, the settings it runs with, and the host-wide
//! connection budgets pools share.

pub mod hosts;
pub mod pool;
pub mod settings;
