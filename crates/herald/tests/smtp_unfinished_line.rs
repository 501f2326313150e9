//! The ESMTP idle timeout is per line (docs/smtp.md, `timeout`): its `421 4.4.2` says whether nothing came from
//! the client, or a line was begun and not finished within it (a client trickling bytes without an end of line).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// The longest any step of these tests may take; each waits on its condition, never for this long.
const WAIT: Duration = Duration::from_secs(30);

/// A server with one ESMTP listener whose `timeout` is 2 s, and its address.
async fn server(
    dir: &std::path::Path,
) -> (std::sync::Arc<herald::server::Server>, std::net::SocketAddr) {
    let config = dir.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\nesmtp_listener {{ listen \"127.0.0.1:0\" {{ timeout = 2 }} }}\n",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let addr = server.addrs().await.esmtp[0];
    (server, addr)
}

/// One reply: its lines' texts after `CODE-`/`CODE ` joined with a space, and its code.
async fn reply(r: &mut BufReader<OwnedReadHalf>) -> (u16, String) {
    let mut texts = Vec::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .expect("no reply")
            .unwrap();
        assert!(n > 0, "closed before a reply; so far {texts:?}");
        let line = line.trim_end();
        assert!(line.len() >= 4, "{line:?}");
        texts.push(line[4..].to_owned());
        if line.as_bytes()[3] == b' ' {
            return (line[..3].parse().unwrap(), texts.join(" "));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_says_whether_a_line_was_begun() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = server(dir.path()).await;

    // A client that sends a byte of its command every 250 ms, never its end of line: data keeps coming, the line
    // never ends.
    let (r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert_eq!(reply(&mut r).await.0, 220);
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        for byte in b"NOOP waiting for this line to end".iter().cycle() {
            tick.tick().await;
            // The server closes the connection after its reply: the trickle ends there.
            if w.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
        }
    });
    let (code, text) = reply(&mut r).await;
    trickle.abort();
    assert_eq!(code, 421, "{text}");
    assert!(
        text.starts_with("4.4.2 ")
            && text.contains("closing: the client's line was not finished within 2s")
            && text.contains("bytes without an end of line"),
        "{text}"
    );
    assert!(!text.contains("no data"), "{text}");

    // A client that sends nothing is told so.
    let (r, _w) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert_eq!(reply(&mut r).await.0, 220);
    let (code, text) = reply(&mut r).await;
    assert_eq!(code, 421, "{text}");
    assert!(
        text.starts_with("4.4.2 ")
            && text.ends_with("closing: no data from the client for 2s (idle timeout)"),
        "{text}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}
