//! A small SMTP client (RFC 5321, plain TCP): greeting, EHLO, then one transaction per message (MAIL, RCPT,
//! DATA with dot-stuffing and CRLF line endings), QUIT. Enough to inject MCMT messages into an ESMTP listener.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// One SMTP reply: its code and its text (the lines of a multi-line reply joined with spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("SMTP {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("SMTP {addr}: the server closed the connection")]
    Closed { addr: SocketAddr },
    #[error("SMTP {addr}: malformed reply line {line:?}")]
    Malformed { addr: SocketAddr, line: String },
    #[error("SMTP {addr}: {command} was answered {reply}")]
    Unexpected {
        addr: SocketAddr,
        command: &'static str,
        reply: Reply,
    },
}

/// An open SMTP session.
pub struct SmtpClient {
    addr: SocketAddr,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl SmtpClient {
    /// Connects, reads the greeting and says EHLO.
    pub async fn connect(addr: SocketAddr, helo: &str) -> Result<SmtpClient, SmtpError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| SmtpError::Io { addr, source })?;
        let (r, w) = stream.into_split();
        let mut client = SmtpClient {
            addr,
            reader: BufReader::new(r),
            writer: w,
        };
        client.expect("greeting", 220).await?;
        client.command(&format!("EHLO {helo}")).await?;
        client.expect("EHLO", 250).await?;
        Ok(client)
    }

    /// Sends one message to one recipient. `Ok` carries the server's final answer to it: `250` when accepted,
    /// a `4xx`/`5xx` refusal otherwise (the session stays usable). `message` may use LF line endings.
    pub async fn send(&mut self, from: &str, to: &str, message: &str) -> Result<Reply, SmtpError> {
        self.command(&format!("MAIL FROM:<{from}>")).await?;
        let reply = self.reply().await?;
        if reply.code != 250 {
            return Ok(reply);
        }
        self.command(&format!("RCPT TO:<{to}>")).await?;
        let reply = self.reply().await?;
        if reply.code != 250 {
            self.command("RSET").await?;
            self.reply().await?;
            return Ok(reply);
        }
        self.command("DATA").await?;
        let reply = self.reply().await?;
        if reply.code != 354 {
            return Ok(reply);
        }
        self.write(&data_block(message)).await?;
        self.reply().await
    }

    /// Says QUIT and closes.
    pub async fn quit(mut self) -> Result<(), SmtpError> {
        self.command("QUIT").await?;
        self.expect("QUIT", 221).await?;
        Ok(())
    }

    async fn command(&mut self, line: &str) -> Result<(), SmtpError> {
        self.write(&format!("{line}\r\n")).await
    }

    async fn write(&mut self, text: &str) -> Result<(), SmtpError> {
        let addr = self.addr;
        self.writer
            .write_all(text.as_bytes())
            .await
            .map_err(|source| SmtpError::Io { addr, source })
    }

    async fn expect(&mut self, command: &'static str, code: u16) -> Result<Reply, SmtpError> {
        let reply = self.reply().await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(SmtpError::Unexpected {
                addr: self.addr,
                command,
                reply,
            })
        }
    }

    async fn reply(&mut self) -> Result<Reply, SmtpError> {
        let addr = self.addr;
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .await
                .map_err(|source| SmtpError::Io { addr, source })?;
            if n == 0 {
                return Err(SmtpError::Closed { addr });
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let (code, more, rest) =
                parse_reply_line(line).ok_or_else(|| SmtpError::Malformed {
                    addr,
                    line: line.to_owned(),
                })?;
            text.push(rest.to_owned());
            if !more {
                return Ok(Reply {
                    code,
                    text: text.join(" "),
                });
            }
        }
    }
}

/// `250-text` → (250, true, "text"); `250 text` → (250, false, "text").
fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let code = line.get(..3)?.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, false, "")),
        Some(b'-') => Some((code, true, &line[4..])),
        Some(b' ') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// The message as DATA content: CRLF line endings, leading dots doubled, ended by `.`.
fn data_block(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 64);
    for line in message.lines() {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_parse() {
        assert_eq!(
            parse_reply_line("250-SIZE 10"),
            Some((250, true, "SIZE 10"))
        );
        assert_eq!(parse_reply_line("250 ok"), Some((250, false, "ok")));
        assert_eq!(parse_reply_line("354"), Some((354, false, "")));
        assert_eq!(parse_reply_line("25x ok"), None);
        assert_eq!(parse_reply_line("250_ok"), None);
    }

    #[test]
    fn data_is_dot_stuffed_with_crlf() {
        assert_eq!(data_block("a\n.b\r\nc"), "a\r\n..b\r\nc\r\n.\r\n");
    }
}
