//! `herald console` sends no password in clear to another machine (docs/operations.md#herald-console): an `auth`
//! line, given as the command or read from standard input, to a TCP host other than loopback without `--tls` is
//! refused before anything goes out, as a password from `$HERALD_CONSOLE_PASSWORD` is; `--plain` sends it.
//!
//! The listener is a stand-in on 127.0.0.1 that records every line it receives. The console decides by the
//! address as written: it is named `127.1`, the short form of 127.0.0.1 that the resolver takes but that is not
//! written as a loopback address, so the console treats it as another machine while the connection stays on this
//! one.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for the stand-in (never a speed assertion).
const WAIT: Duration = Duration::from_secs(20);
/// The line the test itself sends last: once it is answered, every earlier connection has been read to its end.
const SENTINEL: &str = "sentinel";

/// A control listener stand-in: answers `OK` to every line, records the lines, and reads one connection to its
/// end before it takes the next.
struct StandIn {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    async fn start() -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let record = lines.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                while r.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    record.lock().unwrap().push(line.trim_end().to_owned());
                    line.clear();
                    if w.write_all(b"OK 3\nok\n").await.is_err() {
                        break;
                    }
                }
            }
        });
        StandIn { port, lines }
    }

    /// The console address of the stand-in, written so that it does not read as loopback.
    fn address(&self) -> String {
        format!("127.1:{}", self.port)
    }

    /// Every line received so far, once the connections made before this call have all been read to their end.
    async fn received(&self) -> Vec<String> {
        let ask = async {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
            s.write_all(format!("{SENTINEL}\n").as_bytes())
                .await
                .unwrap();
            let mut reply = String::new();
            BufReader::new(s).read_line(&mut reply).await.unwrap();
            assert_eq!(reply, "OK 3\n");
        };
        tokio::time::timeout(WAIT, ask)
            .await
            .expect("the stand-in answers");
        let mut lines = self.lines.lock().unwrap();
        let got: Vec<String> = lines.drain(..).filter(|l| l != SENTINEL).collect();
        got
    }
}

/// What one `herald console` run printed, and whether it succeeded.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `herald console ARGS…` with `stdin` as its standard input, without a password from the environment.
async fn console(args: &[&str], stdin: &str, env_password: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("console")
        .args(args)
        .env_remove("HERALD_CONSOLE_PASSWORD")
        .env_remove("HERALD_CONSOLE_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = env_password {
        cmd.env("HERALD_CONSOLE_PASSWORD", p);
    }
    let stdin = stdin.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        // The console may stop reading (and exit) before it has read everything: that is not an error here.
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The refusal for a password to `address` in clear.
fn refusal(address: &str) -> String {
    format!("{address}: refusing to send the console password in clear to another machine")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_line_goes_to_another_machine_only_over_tls_or_with_plain() {
    let stand_in = StandIn::start().await;
    let address = stand_in.address();

    // As the command: refused, nothing sent (no connection carries it).
    let run = console(&[&address, "auth", "s3cret"], "", None).await;
    assert!(!run.ok, "{run:?}");
    assert!(run.stderr.contains(&refusal(&address)), "{run:?}");
    assert!(run.stderr.contains("--tls"), "{run:?}");
    assert_eq!(stand_in.received().await, Vec::<String>::new());

    // Read from standard input, in any spelling of `auth`: refused where it comes, after the commands before it
    // went out; nothing after it is sent either.
    for auth in [
        "auth s3cret",
        "AUTH s3cret",
        "\"auth\" s3cret",
        "  auth \"two words\"",
    ] {
        let run = console(&[&address], &format!("version\n{auth}\nversion\n"), None).await;
        assert!(!run.ok, "{auth}: {run:?}");
        assert!(run.stderr.contains(&refusal(&address)), "{auth}: {run:?}");
        assert_eq!(run.stdout, "ok\n", "{auth}: {run:?}");
        assert_eq!(stand_in.received().await, ["version"], "{auth}");
    }

    // The same password from the environment was already refused, before connecting.
    let run = console(&[&address, "version"], "", Some("s3cret")).await;
    assert!(
        !run.ok && run.stderr.contains(&refusal(&address)),
        "{run:?}"
    );
    assert_eq!(stand_in.received().await, Vec::<String>::new());

    // With --plain the operator says to send it: it goes, as typed.
    let run = console(&["--plain", &address], "auth s3cret\nversion\n", None).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(stand_in.received().await, ["auth s3cret", "version"]);

    // To loopback written as such, an `auth` line goes without --plain.
    let local = format!("127.0.0.1:{}", stand_in.port);
    let run = console(&[&local, "auth", "s3cret"], "", None).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(stand_in.received().await, ["auth s3cret"]);
}
