//! One module per subcommand: its clap arguments and its `run` function.

pub mod bench;
pub mod check;
pub mod config;
pub mod console;
pub mod demo;
pub mod demo_cluster;
pub mod send;
pub mod serve;
pub mod sim;
