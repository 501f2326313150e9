//! `herald`: the push-notification MTA daemon and its command-line tools.
//!
//! The binary is a thin edge: each subcommand lives in `cli/` and calls into the library crates. Errors are turned
//! into context-rich messages here and nowhere else.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: herald allocates and frees many small buffers per notification across
/// threads (REST bodies, spool records, HTTP/2 frames), where glibc's malloc spends a fifth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// herald: accept push notifications once, never lose them, deliver them to APNs.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and report every error in it.
    Check(cli::check::CheckArgs),
    /// Inspect a configuration: evaluate an option with fallback, or print the parsed tree.
    #[command(subcommand)]
    Config(cli::config::ConfigCommand),
    /// Run the APNs simulator, or write a test PKI for it (`herald sim pki DIR`).
    Sim(Box<cli::sim::SimArgs>),
    /// Run the MTA: listeners, spool, queue and delivery, as the configuration says.
    Serve(cli::serve::ServeArgs),
    /// Send generated notifications to one domain through the delivery engine and report throughput.
    Bench(cli::bench::BenchArgs),
    /// Talk to a running herald over its control socket (`herald console [SOCKET] [COMMAND…]`), like ec_console.
    Console(cli::console::ConsoleArgs),
    /// Send notifications through a running herald's REST API: one from flags, or many from a file or stdin.
    Send(Box<cli::send::SendArgs>),
    /// See herald work in one command: a test PKI, the APNs simulator and a gateway on loopback, 20,000
    /// notifications through REST and SMTP, and a check that every outcome is the expected one.
    Demo(cli::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => cli::check::run(args),
        Command::Config(cmd) => cli::config::run(cmd),
        Command::Sim(args) => cli::sim::run(*args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Console(args) => cli::console::run(args),
        Command::Send(args) => cli::send::run(*args),
        Command::Demo(args) => cli::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("herald: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
