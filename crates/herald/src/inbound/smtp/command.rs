//! SMTP command lines (RFC 5321 §4.1, with the SIZE and 8BITMIME parameters of RFC 1870 and RFC 6152) parsed into
//! [`Command`]s; a malformed line is a [`CommandError`] whose text tells the client what was expected.

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail { from: String, size: Option<u64> },
    Rcpt { to: String },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
}

/// Why a command line was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command line is not UTF-8")]
    NotUtf8,
    #[error("unrecognized command {0:?}")]
    Unknown(String),
    #[error("{verb} needs {what}")]
    Syntax {
        verb: &'static str,
        what: &'static str,
    },
    #[error("unsupported {verb} parameter {param:?}")]
    Parameter { verb: &'static str, param: String },
    #[error("{0} takes no arguments")]
    NoArguments(&'static str),
}

impl CommandError {
    /// (code, enhanced status) for the reply.
    pub fn code(&self) -> (u16, &'static str) {
        match self {
            CommandError::Unknown(_) => (500, "5.5.1"),
            CommandError::Parameter { .. } => (555, "5.5.4"),
            _ => (501, "5.5.4"),
        }
    }
}

/// Parses one command line, without its CRLF.
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_start()),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    let no_args = |name: &'static str, cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::NoArguments(name))
        }
    };
    match upper.as_str() {
        "EHLO" | "HELO" => {
            if rest.is_empty() {
                return Err(CommandError::Syntax {
                    verb: if upper == "EHLO" { "EHLO" } else { "HELO" },
                    what: "a domain or address literal",
                });
            }
            let name = rest.to_owned();
            Ok(if upper == "EHLO" {
                Command::Ehlo(name)
            } else {
                Command::Helo(name)
            })
        }
        "MAIL" => mail(rest),
        "RCPT" => rcpt(rest),
        "DATA" => no_args("DATA", Command::Data),
        "RSET" => no_args("RSET", Command::Rset),
        "QUIT" => no_args("QUIT", Command::Quit),
        "STARTTLS" => no_args("STARTTLS", Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        _ => Err(CommandError::Unknown(verb.chars().take(32).collect())),
    }
}

/// `<path>` followed by parameters; returns the address and the parameter text.
fn path<'a>(
    rest: &'a str,
    prefix: &str,
    verb: &'static str,
    what: &'static str,
) -> Result<(&'a str, &'a str), CommandError> {
    let syntax = CommandError::Syntax { verb, what };
    // `get` rather than indexing: the line is the client's, and a character may straddle the prefix's end.
    let Some(rest) = rest
        .get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .and_then(|_| rest.get(prefix.len()..))
    else {
        return Err(syntax);
    };
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('<').ok_or(syntax.clone())?;
    let end = rest.find('>').ok_or(syntax)?;
    let addr = &rest[..end];
    // A source route (`<@a,@b:user@c>`) is ignored, as RFC 5321 §4.1.1.3 allows.
    let addr = match addr.strip_prefix('@') {
        Some(r) => r.split_once(':').map_or(addr, |(_, a)| a),
        None => addr,
    };
    Ok((addr, rest[end + 1..].trim()))
}

fn mail(rest: &str) -> Result<Command, CommandError> {
    let (from, params) = path(rest, "FROM:", "MAIL", "FROM:<address> (or FROM:<>)")?;
    let mut size = None;
    for p in params.split_ascii_whitespace() {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => {
                // RFC 1870 allows 20 digits: a count beyond u64 is simply too large (552 later), not a syntax error.
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                if !digits {
                    return Err(CommandError::Syntax {
                        verb: "MAIL",
                        what: "SIZE=<decimal byte count>",
                    });
                }
                size = Some(value.parse::<u64>().unwrap_or(u64::MAX));
            }
            "BODY"
                if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {
            }
            _ => {
                return Err(CommandError::Parameter {
                    verb: "MAIL",
                    param: p.chars().take(64).collect(),
                });
            }
        }
    }
    Ok(Command::Mail {
        from: from.to_owned(),
        size,
    })
}

fn rcpt(rest: &str) -> Result<Command, CommandError> {
    let (to, params) = path(rest, "TO:", "RCPT", "TO:<local-part@domain>")?;
    if let Some(p) = params.split_ascii_whitespace().next() {
        return Err(CommandError::Parameter {
            verb: "RCPT",
            param: p.chars().take(64).collect(),
        });
    }
    Ok(Command::Rcpt { to: to.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(parse(b"NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse(b"starttls"), Ok(Command::StartTls));
    }

    #[test]
    fn mail_with_parameters() {
        assert_eq!(
            parse(b"MAIL FROM:<a@b.example> SIZE=1234 BODY=8BITMIME"),
            Ok(Command::Mail {
                from: "a@b.example".into(),
                size: Some(1234)
            })
        );
        assert_eq!(
            parse(b"mail from: <>"),
            Ok(Command::Mail {
                from: String::new(),
                size: None
            })
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SMTPUTF8").unwrap_err().to_string(),
            "unsupported MAIL parameter \"SMTPUTF8\""
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SIZE=big").unwrap_err().to_string(),
            "MAIL needs SIZE=<decimal byte count>"
        );
        for bad in ["SIZE=", "SIZE=+5", "SIZE=-1", "SIZE=1e3"] {
            assert!(
                parse(format!("MAIL FROM:<a@b> {bad}").as_bytes()).is_err(),
                "{bad}"
            );
        }
        // A count of 20 digits (RFC 1870) beyond u64 is a size, the largest there is: refused later as too large.
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SIZE=99999999999999999999"),
            Ok(Command::Mail {
                from: "a@b".into(),
                size: Some(u64::MAX)
            })
        );
        assert_eq!(
            parse(b"MAIL TO:<a@b>").unwrap_err().to_string(),
            "MAIL needs FROM:<address> (or FROM:<>)"
        );
    }

    #[test]
    fn rcpt_and_source_routes() {
        assert_eq!(
            parse(b"RCPT TO:<@relay.example:tok@apps.example>"),
            Ok(Command::Rcpt {
                to: "tok@apps.example".into()
            })
        );
        assert!(matches!(
            parse(b"RCPT TO:tok@apps"),
            Err(CommandError::Syntax { .. })
        ));
    }

    #[test]
    fn unknown_and_bad_arguments() {
        assert_eq!(parse(b"XYZZY"), Err(CommandError::Unknown("XYZZY".into())));
        assert_eq!(parse(b"DATA now"), Err(CommandError::NoArguments("DATA")));
        assert!(matches!(parse(b"EHLO"), Err(CommandError::Syntax { .. })));
        assert_eq!(parse(b"\xff"), Err(CommandError::NotUtf8));
    }

    #[test]
    fn a_character_across_the_prefix_end_is_a_syntax_error() {
        // Found by the `smtp_command` fuzz target: `FROM:` / `TO:` compared by byte length used to slice inside
        // the `é` and panic the session.
        for line in [
            "MAIL <\u{e9}p\u{e9}",
            "MAIL FRO\u{e9}:<a@b>",
            "RCPT T\u{e9}<a@b>",
            "RCPT \u{e9}\u{e9}",
        ] {
            assert!(
                matches!(parse(line.as_bytes()), Err(CommandError::Syntax { .. })),
                "{line}"
            );
        }
        assert!(matches!(
            parse("MAIL FROM:<\u{e9}@b.example>".as_bytes()),
            Ok(Command::Mail { .. })
        ));
    }
}
