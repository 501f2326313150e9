//! `herald serve` with its spool on an ext4 image whose file system is frozen (`fsfreeze -f`) under traffic: the
//! write in progress does not return. Once it has not returned for the spool's stall bound (5 s), `/readyz` answers
//! 503 naming the stuck commit and its age, `herald_spool_writable` is 0, the console's summary says so, new
//! notifications are refused at once (REST 503, SMTP 451 4.3.0) instead of waiting behind the stuck commit, and a
//! warning is logged; once the file system thaws, the stuck request is answered, all of that clears by itself, and
//! a warning says the disk answers again.
//!
//! The test mounts its own loop image and freezes it (root); where that is refused it prints why and passes, except
//! when `CI` is set on a machine with loop devices, where it fails.
//!
//! A stop while the disk is frozen prints what it left undone, but the process cannot end before the thaw: its
//! threads wait in the kernel (uninterruptibly) for the frozen file system.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_sim::Pki;
use support::{free_port, token_auth_options};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const TOPIC: &str = "com.example.hung";
const WAIT: Duration = Duration::from_secs(60);
const STALL_STARTED: &str = "the spool's disk has not completed a write for";
const STALL_ENDED: &str = "the disk answers again";

/// An ext4 image mounted at a directory; unmounted (lazily) when dropped.
struct Ext4(PathBuf);

impl Drop for Ext4 {
    fn drop(&mut self) {
        // Thawed already, unless the test failed while frozen.
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The file system at a directory frozen: writes to it wait until it is thawed, when this is dropped.
struct Frozen(PathBuf);

impl Frozen {
    fn freeze(dir: &Path) -> Frozen {
        let status = Command::new("fsfreeze")
            .arg("-f")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "fsfreeze -f {}: {status}", dir.display());
        Frozen(dir.to_path_buf())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).status();
    }
}

fn run_quietly(program: &str, args: &[&std::ffi::OsStr]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes a 64 MiB ext4 image in `dir` and mounts it at `dir/spool`, which supports `fsfreeze`; needs root and the
/// e2fsprogs and util-linux tools. Where that is refused it says the test is skipped and gives `None`, except when
/// `CI` is set, where it fails.
fn mount_ext4(dir: &Path) -> Option<Ext4> {
    let image = dir.join("spool.img");
    let mount = dir.join("spool");
    std::fs::create_dir_all(&mount).unwrap();
    let made = std::fs::File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .is_ok()
        && run_quietly(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        )
        && run_quietly(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mount.as_os_str(),
            ],
        );
    if !made {
        // A machine without loop devices at all cannot run it, in CI too; one that has them must.
        assert!(
            std::env::var_os("CI").is_none() || !Path::new("/dev/loop-control").exists(),
            "CI is set but an ext4 image cannot be mounted at {}: the hung-disk test must run in CI",
            mount.display()
        );
        eprintln!(
            "SKIPPED: cannot mount an ext4 loop image at {} (needs root, mkfs.ext4 and loop devices); the hung-disk \
             case is not tested here",
            mount.display()
        );
        return None;
    }
    Some(Ext4(mount))
}

/// A `herald serve` process with its standard error in a file; killed when dropped.
struct Herald {
    child: Child,
    http: String,
    esmtp: String,
    stderr: PathBuf,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Herald {
    fn start(config: &Path, dir: &Path) -> Herald {
        let stderr = dir.join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "-c"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "ready line {line:?}: {e}; stderr: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
        Herald {
            child,
            http: v["http"][0].as_str().unwrap().to_owned(),
            esmtp: v["esmtp"][0].as_str().unwrap().to_owned(),
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn write_config(dir: &Path, spool: &Path, pki: &Pki, h2_port: u16) -> PathBuf {
    let path = dir.join("herald.conf");
    let text = format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = allow }} }}
control_listener {{ listen "{sock}" {{ file_mode = 0600 }} }}
domain "hung.example" {{
{credentials}  retry_interval = 1
  max_retry_interval = 1
}}
"#,
        spool = spool.display(),
        log = dir.join("mainlog.ec").display(),
        sock = dir.join("control.sock").display(),
        credentials = token_auth_options(pki, h2_port, TOPIC),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn token(i: usize) -> String {
    format!("{:064x}", 0x4a96_0000_0000u64 + i as u64)
}

/// Posts one notification for `token`; returns the status and the body.
async fn post(http: String, token: String) -> (u16, String) {
    let body = serde_json::json!({
        "domain": "hung.example",
        "tokens": [token],
        "payload": {"aps": {"alert": "hung disk"}},
    });
    let r = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn readyz(http: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{http}/readyz")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn metric(http: &str, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn spool_state(socket: &Path) -> String {
    let socket = socket.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("console")
            .arg(&socket)
            .arg("summary")
            .env_remove("HERALD_CONSOLE_PASSWORD")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Spool State:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// Polls `check` until it holds, for at most [`WAIT`].
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one MCMT message for `token` over SMTP; returns the reply to the end of DATA.
async fn smtp_send(esmtp: &str, token: &str) -> String {
    let stream = tokio::net::TcpStream::connect(esmtp).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    async fn reply(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
    ) -> String {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }
    reply(&mut lines).await;
    for cmd in [
        "EHLO test.example".to_owned(),
        "MAIL FROM:<sender@example.com>".to_owned(),
        format!("RCPT TO:<{token}@hung.example>"),
        "DATA".to_owned(),
    ] {
        write
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .unwrap();
        let r = reply(&mut lines).await;
        assert!(r.starts_with('2') || r.starts_with('3'), "{cmd}: {r}");
    }
    let message = format!(
        "From: sender@example.com\r\nTo: {token}@hung.example\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n--B\r\n\
         Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: {token}\r\n\r\n\
         {{\"aps\":{{\"alert\":\"smtp\"}}}}\r\n--B--\r\n.\r\n"
    );
    write.write_all(message.as_bytes()).await.unwrap();
    let r = reply(&mut lines).await;
    let _ = write.write_all(b"QUIT\r\n").await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_disk_that_stops_answering_turns_the_node_unready_and_refuses_intake_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = mount_ext4(dir.path()) else {
        return;
    };
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    // No APNs: what is accepted stays held, retried every second.
    let config = write_config(dir.path(), &mount.0, &pki, free_port());
    let socket = dir.path().join("control.sock");
    let herald = Herald::start(&config, dir.path());
    assert_eq!(readyz(&herald.http).await, (200, "ready".to_owned()));
    let (status, text) = post(herald.http.clone(), token(0)).await;
    assert_eq!(status, 202, "{text}");

    // The disk stops answering; a request now waits for a commit that does not return.
    let frozen = Frozen::freeze(&mount.0);
    let stuck = tokio::spawn(post(herald.http.clone(), token(1)));

    wait_for("/readyz to say 503", || async {
        readyz(&herald.http).await.0 == 503
    })
    .await;
    let (_, body) = readyz(&herald.http).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = v["error"].as_str().unwrap();
    assert!(error.starts_with("not ready for intake"), "{error}");
    assert!(error.contains(STALL_STARTED), "{error}");
    assert!(
        error.contains("(a commit is stuck in write/fsync)"),
        "{error}"
    );
    assert_eq!(metric(&herald.http, "herald_spool_writable").await, Some(0));
    let state = spool_state(&socket).await;
    assert!(
        state.starts_with("refusing new notifications") && state.contains(STALL_STARTED),
        "{state}"
    );

    // New notifications are refused at once, not queued behind the stuck commit (which waits until the thaw).
    let (status, text) = tokio::time::timeout(WAIT, post(herald.http.clone(), token(2)))
        .await
        .expect("refused without waiting for the disk");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains(STALL_STARTED), "{text}");
    let reply = tokio::time::timeout(WAIT, smtp_send(&herald.esmtp, &token(3)))
        .await
        .expect("refused without waiting for the disk");
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    wait_for("the warning that the stall started", || async {
        herald.log().contains(STALL_STARTED)
    })
    .await;
    assert!(!stuck.is_finished(), "the request before the freeze waits");

    // The disk answers again: the waiting request is answered, and the node is ready by itself.
    drop(frozen);
    let (status, text) = tokio::time::timeout(WAIT, stuck)
        .await
        .expect("answered once the disk answers")
        .unwrap();
    assert_eq!(status, 202, "{text}");
    wait_for("/readyz to say 200 again", || async {
        readyz(&herald.http).await.0 == 200
    })
    .await;
    assert_eq!(metric(&herald.http, "herald_spool_writable").await, Some(1));
    assert_eq!(spool_state(&socket).await, "writable");
    let (status, text) = post(herald.http.clone(), token(4)).await;
    assert_eq!(status, 202, "{text}");
    wait_for("the warning that the stall ended", || async {
        herald.log().contains(STALL_ENDED)
    })
    .await;
    let log = herald.log();
    assert_eq!(log.matches(STALL_STARTED).count(), 1, "{log}");
    assert_eq!(log.matches(STALL_ENDED).count(), 1, "{log}");
}
