//! Fuzz target: one SMTP command line (without its CRLF) given to `herald::inbound::smtp::command::parse`, as the
//! ESMTP session does for every line a client sends. Any bytes must give a `Command` or a `CommandError`, never a
//! panic. The error's reply code and text are computed too (the session writes them back).
#![no_main]

use herald::inbound::smtp::command::{self, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match command::parse(data) {
        Ok(Command::Ehlo(name) | Command::Helo(name)) => assert!(!name.is_empty()),
        Ok(Command::Mail { from, .. }) => assert!(!from.contains('>')),
        Ok(Command::Rcpt { to }) => assert!(!to.contains('>')),
        Ok(_) => {}
        Err(e) => {
            let (code, status) = e.code();
            assert!((500..600).contains(&code), "{code} {status}");
            let _ = e.to_string();
        }
    }
});
