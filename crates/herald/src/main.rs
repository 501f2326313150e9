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

/// Turns transparent huge pages off for this process (Linux), unless `MIMALLOC_ALLOW_THP=1` asks to keep them.
///
/// mimalloc advises the kernel to back its arenas with 2 MiB pages and gives freed memory back after a delay; under
/// a steady flow of notifications every page given back and touched again costs the kernel zeroing a whole 2 MiB
/// page. With status retention and webhooks on, that zeroing was a fifth of herald's CPU (BENCHMARKS.md,
/// "Outcomes"); with 4 KiB pages it disappears and memory follows the load more closely.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v == "1") {
            return;
        }
        // SAFETY: PR_SET_THP_DISABLE takes an integer flag and no pointers; it only sets a flag on this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            eprintln!(
                "herald: could not turn transparent huge pages off ({}); going on with them",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
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
