//! Inbound: every way a notification arrives (ESMTP with MCMT, REST) ends in [`accept`], which validates it,
//! makes it durable, logs its reception and queues it.

pub mod accept;
pub mod doors;
pub mod mcmt;
pub mod rest;
pub mod smtp;
