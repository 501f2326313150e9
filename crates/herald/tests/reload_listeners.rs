//! Listeners at a reload and at shutdown (docs/operations.md, "Reloading the configuration"): a listener moved to
//! an address that cannot be bound keeps its old one; the dashboard's event stream ends when its listener stops, so
//! that neither a restart (a port closed for seconds, a revoked key still fed) nor a shutdown (the grace period
//! spent waiting on it) waits on it.
//!
//! herald runs in-process (`Server::start`, `Server::reload`, `Server::shutdown`) on 127.0.0.1; every wait is a
//! loop against a deadline.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(30);

/// Reads an event stream until it ends (`true`), or `within` passes with it still open (`false`).
async fn stream_ends(r: &mut reqwest::Response, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Err(_) => return false,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) => return true,
        }
    }
}

/// Opens the dashboard's event stream with `key` and reads it up to its first tick.
async fn open_events(base: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{base}/dashboard/api/events"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first_tick = async {
        loop {
            let chunk = r
                .chunk()
                .await
                .expect("the stream reads")
                .expect("the stream was cut");
            if String::from_utf8_lossy(&chunk).contains("event: tick") {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, first_tick)
        .await
        .expect("a tick within 30 s");
    r
}

fn listeners_config(dir: &Path, http_port: u16, control: &Path) -> String {
    format!(
        r#"spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:{http_port}" {{ }} }}
control_listener {{ listen "{control}" {{ }} }}
"#,
        spool = dir.join("spool").display(),
        control = control.display(),
    )
}

/// A listener moved to an address it cannot bind (a port another socket holds, a control socket in a directory
/// that does not exist) keeps serving on its old one, and the reload's answer says so; once the address is free,
/// the next reload moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_moved_to_an_address_it_cannot_bind_keeps_its_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let old_port = support::free_port();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let new_port = holder.local_addr().unwrap().port();
    let old_control = dir.path().join("control.sock");
    let new_control = dir.path().join("missing").join("control.sock");
    std::fs::write(
        &config,
        listeners_config(dir.path(), old_port, &old_control),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let client = reqwest::Client::new();
    let healthz = |port: u16| format!("http://127.0.0.1:{port}/healthz");
    assert_eq!(
        client.get(healthz(old_port)).send().await.unwrap().status(),
        200
    );

    std::fs::write(
        &config,
        listeners_config(dir.path(), new_port, &new_control),
    )
    .unwrap();
    let report = server.reload(None).await.unwrap();
    assert!(report.listeners_stopped.is_empty(), "{report:?}");
    assert!(report.listeners_started.is_empty(), "{report:?}");
    assert_eq!(report.listener_errors.len(), 2, "{report:?}");
    let http_error = report
        .listener_errors
        .iter()
        .find(|e| e.starts_with(&format!("Http 127.0.0.1:{new_port}")))
        .unwrap_or_else(|| panic!("no error for the new HTTP address: {report:?}"));
    assert!(
        http_error.to_ascii_lowercase().contains("in use")
            && http_error.contains(&format!(
                "Http 127.0.0.1:{old_port} keeps running with its previous settings"
            )),
        "{http_error}"
    );
    let control_error = report
        .listener_errors
        .iter()
        .find(|e| e.starts_with("Control "))
        .unwrap_or_else(|| panic!("no error for the control listener: {report:?}"));
    assert!(
        control_error.contains(&format!(
            "Control {} keeps running with its previous settings",
            old_control.display()
        )),
        "{control_error}"
    );
    // Both still serve on their old addresses.
    assert_eq!(
        client.get(healthz(old_port)).send().await.unwrap().status(),
        200
    );
    assert!(
        tokio::net::UnixStream::connect(&old_control).await.is_ok(),
        "the old control socket is gone"
    );
    let addrs = server.addrs().await;
    assert_eq!(
        addrs.http,
        vec![format!("127.0.0.1:{old_port}").parse().unwrap()]
    );
    assert_eq!(addrs.control, vec![old_control.display().to_string()]);

    // The address free and the directory made: the next reload moves both.
    drop(holder);
    std::fs::create_dir(new_control.parent().unwrap()).unwrap();
    let report = server.reload(None).await.unwrap();
    assert!(report.listener_errors.is_empty(), "{report:?}");
    assert_eq!(report.listeners_started.len(), 2, "{report:?}");
    assert_eq!(report.listeners_stopped.len(), 2, "{report:?}");
    assert_eq!(
        client.get(healthz(new_port)).send().await.unwrap().status(),
        200
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", old_port))
            .await
            .is_err(),
        "the old HTTP address still accepts"
    );
    assert!(tokio::net::UnixStream::connect(&new_control).await.is_ok());
    server.shutdown(Duration::from_secs(2)).await;
}

/// Probes `/healthz` on new connections until stopped; returns how many answers it got after `from` was set and
/// the longest time the port refused or failed in a row.
fn probe(port: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Duration)> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/healthz");
        let (mut served, mut longest, mut failing_since) = (0, Duration::ZERO, None::<Instant>);
        while !stop.load(Ordering::Relaxed) {
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => {
                    served += 1;
                    if let Some(since) = failing_since.take() {
                        longest = longest.max(since.elapsed());
                    }
                }
                _ => {
                    failing_since.get_or_insert_with(Instant::now);
                    tokio::task::yield_now().await;
                }
            }
        }
        if let Some(since) = failing_since {
            longest = longest.max(since.elapsed());
        }
        (served, longest)
    })
}

fn dashboard_config(dir: &Path, port: u16, keys: &str) -> String {
    format!(
        r#"spool_dir = "{spool}"
http_listener {{
  api_keys = ( {keys} )
  listen "127.0.0.1:{port}" {{ http_services = ( push dashboard ) }}
}}
"#,
        spool = dir.join("spool").display(),
    )
}

/// A reload that restarts an HTTP listener (here: one of its keys revoked) ends the event streams it carries at
/// once: the client reconnects and is authenticated again (the revoked key gets 401), and the restart does not
/// wait on the streams, so the port is closed no longer than a rebind takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_ends_the_event_streams_and_keeps_the_port_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let port = support::free_port();
    std::fs::write(
        &config,
        dashboard_config(dir.path(), port, r#""revoked-key" "kept-key""#),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut revoked = open_events(&base, Some("revoked-key")).await;
    let mut kept = open_events(&base, Some("kept-key")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe(port, stop.clone());
    std::fs::write(&config, dashboard_config(dir.path(), port, r#""kept-key""#)).unwrap();
    let report = server.reload(None).await.unwrap();
    assert_eq!(
        report.listeners_restarted,
        vec![format!("Http 127.0.0.1:{port}")],
        "{report:?}"
    );
    assert!(report.listener_errors.is_empty(), "{report:?}");
    // The new listener: the revoked key is refused, the kept one reads and streams again.
    let session = |key: &'static str| {
        reqwest::Client::new()
            .get(format!("{base}/dashboard/api/session"))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(session("revoked-key").await.unwrap().status(), 401);
    assert_eq!(session("kept-key").await.unwrap().status(), 200);
    let _again = open_events(&base, Some("kept-key")).await;

    // Requests were served across the restart, and the port was never closed for long (a rebind takes well under
    // a millisecond; before, the restart waited 5 s on the streams with the port closed).
    stop.store(true, Ordering::Relaxed);
    let (served, longest_refusal) = tokio::time::timeout(WAIT, prober)
        .await
        .expect("the prober stops")
        .unwrap();
    assert!(served > 0, "no probe was answered");
    assert!(
        longest_refusal < Duration::from_millis(4000),
        "the port refused connections for {longest_refusal:?} in a row"
    );
    assert!(
        stream_ends(&mut revoked, WAIT).await,
        "the revoked key's event stream is still fed"
    );
    assert!(
        stream_ends(&mut kept, WAIT).await,
        "the event stream of the restarted listener goes on"
    );

    server.shutdown(Duration::from_secs(2)).await;
}

/// Shutdown with an event stream open: the stream ends at once, so the listener's stop does not take the grace
/// period; a delivery on its way to APNs finishes, and the shutdown takes about as long as that delivery, not the
/// whole grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_on_an_event_stream() {
    const TOPIC: &str = "com.example.listeners";
    const DOMAIN: &str = "listeners.example";
    const GRACE: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let mut sim_config = SimConfig::from_pki(&pki.manifest).unwrap();
    sim_config.scenario.latency_ms = 1500;
    let sim = Simulator::start(sim_config).await.unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ http_services = ( push dashboard ) }} }}
domain "{DOMAIN}" {{
{credentials}}}
"#,
            spool = dir.path().join("spool").display(),
            credentials = support::token_auth_options(&pki, sim.addrs.h2.port(), TOPIC),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let base = format!("http://{}", server.addrs().await.http[0]);
    let mut events = open_events(&base, None).await;

    let answer = reqwest::Client::new()
        .post(format!("{base}/api/v1/push"))
        .json(&serde_json::json!({
            "domain": DOMAIN,
            "tokens": [format!("{:064x}", 1)],
            "payload": {"aps": {"alert": "shutdown"}},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    // On its way: APNs has the request and answers it after its latency.
    let deadline = Instant::now() + WAIT;
    while sim.counters().streams_total.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the notification never reached APNs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    server.shutdown(GRACE).await;
    let took = started.elapsed();
    assert!(
        stream_ends(&mut events, Duration::from_secs(5)).await,
        "the event stream outlived the shutdown"
    );
    assert_eq!(
        server.summary().delivered,
        1,
        "the delivery on its way did not finish"
    );
    // Before, the listener's stop waited on the stream for the whole grace period.
    assert!(
        took < GRACE / 2,
        "shutdown took {took:?} of a {GRACE:?} grace period"
    );
    sim.shutdown().await;
}

/// A reload whose caller goes away (a dashboard request whose client hung up, the request's watchdog) still
/// finishes: the new configuration is in force, the server knows every listener it runs, with its new settings, and
/// the next reload has nothing to trip over.
///
/// The runtime has one thread, so the test decides when the caller's future is polled. First it polls it until the
/// reload holds the listeners (it is stopping the control listener, which cannot finish before the test yields) and
/// drops it there, or sees it finish first (the reload runs on a task of its own, which the scheduler may drive to
/// its end meanwhile). Then it drops a reload's future right after its first poll.
#[tokio::test]
async fn a_reload_whose_caller_goes_away_finishes() {
    use futures_util::FutureExt;
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let http_port = support::free_port();
    let control = dir.path().join("control.sock");
    let write = |mode: &str| {
        std::fs::write(
            &config,
            format!(
                r#"spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:{http_port}" {{ }} }}
control_listener {{ listen "{control}" {{ file_mode = {mode} }} }}
"#,
                spool = dir.path().join("spool").display(),
                control = control.display(),
            ),
        )
        .unwrap()
    };
    let mode = || std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    write("0600");
    let server = Server::start(&config).await.unwrap();
    let before = server.addrs().await;

    // A new file mode: the control listener is stopped and bound again. The caller goes away while the reload
    // rebinds it.
    write("0640");
    let mut reload = Box::pin(server.reload(None));
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(done) = (&mut reload).now_or_never() {
            done.unwrap();
            break;
        }
        if server.addrs().now_or_never().is_none() {
            // The reload holds the listeners.
            drop(reload);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never reached its listeners"
        );
        tokio::task::yield_now().await;
    }
    // Waits for the listeners, which the reload gives back once it is done with them.
    let after = tokio::time::timeout(WAIT, server.addrs())
        .await
        .expect("the reload gives the listeners back");
    assert_eq!(after, before, "the server forgot listeners it runs");
    assert_eq!(
        mode(),
        0o640,
        "the control listener runs with its new settings"
    );
    assert_eq!(server.generation(), 1);

    // The caller goes away at once: the reload is done all the same.
    write("0600");
    let mut reload = Box::pin(server.reload(None));
    assert!((&mut reload).now_or_never().is_none());
    drop(reload);
    let deadline = Instant::now() + WAIT;
    while server.generation() < 2 || mode() != 0o600 {
        assert!(
            Instant::now() < deadline,
            "the reload whose caller went away did not finish"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        tokio::time::timeout(WAIT, server.addrs()).await.unwrap(),
        before
    );

    // The next reload rebinds the control listener again, without an address in use.
    write("0640");
    let report = server.reload(None).await.unwrap();
    assert!(report.listener_errors.is_empty(), "{report:?}");
    assert_eq!(
        report.listeners_restarted,
        vec![format!("Control {}", control.display())],
        "{report:?}"
    );
    assert_eq!(server.addrs().await, before);
    assert_eq!(mode(), 0o640);
    assert!(tokio::net::UnixStream::connect(&control).await.is_ok());
    server.shutdown(Duration::from_secs(2)).await;
}
