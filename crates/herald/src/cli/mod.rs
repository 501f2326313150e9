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

/// Writes `text` to standard output. A reader that went away (a closed pipe, as with `| head -1`) is not an error:
/// the rest of the output is dropped quietly, as Unix tools do, and the command ends with the status it would have.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
        Ok(()) => Ok(()),
    }
}
