//! Outbound: the per-(binding, domain) pool of APNs connections and the settings it runs with.

pub mod pool;
pub mod settings;
