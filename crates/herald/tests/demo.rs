//! `herald demo` as a newcomer runs it (smaller counts): it must exit 0, print the summary table and where the
//! logs are, and the logs must agree with the table.

use std::process::Command;

/// The numbers of one table row: accepted, delivered, transient, permanent, invalid, refused. The invalid
/// column is `-` when herald has no per-app list of invalid tokens; it reads as `u64::MAX` here.
fn row(stdout: &str, first: &str) -> Vec<u64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(first))
        .unwrap_or_else(|| panic!("no {first} row in:\n{stdout}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .rev()
        .take(6)
        .map(|n| match n {
            "-" => u64::MAX,
            n => n.parse().unwrap_or_else(|_| panic!("{line}")),
        })
        .collect();
    numbers.into_iter().rev().collect()
}

#[test]
fn the_demo_runs_and_every_outcome_is_the_expected_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["demo", "--count", "500", "--smtp-count", "10", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("result: every outcome is the expected one (510 notifications"),
        "{stdout}"
    );

    // 500 REST notifications over three apps plus 10 over SMTP; the plan refuses at least one malformed token
    // per app and way in, and fails at least one bad token per app and one unregistered per HTTP/2 app.
    let apps = [
        row(&stdout, "token.demo.example"),
        row(&stdout, "cert.demo.example"),
        row(&stdout, "binary.demo.example"),
    ];
    let total = row(&stdout, "total");
    let per_app_invalid = apps.iter().all(|a| a[4] != u64::MAX);
    for (i, name) in [
        "accepted",
        "delivered",
        "transient",
        "permanent",
        "invalid",
        "refused",
    ]
    .iter()
    .enumerate()
    {
        if i == 4 && !per_app_invalid {
            continue;
        }
        assert_eq!(
            apps.iter().map(|a| a[i]).sum::<u64>(),
            total[i],
            "{name} column adds up"
        );
    }
    assert_eq!(total[0] + total[5], 510, "accepted + refused = sent");
    for a in &apps {
        assert_eq!(
            a[0],
            a[1] + a[3],
            "every accepted notification has its final outcome"
        );
        if per_app_invalid {
            assert_eq!(a[3], a[4], "each permanent failure is an invalid token");
        }
        assert!(a[5] >= 2, "malformed tokens are refused over REST and SMTP");
    }
    assert!(apps[0][3] >= 2 && apps[1][3] >= 2 && apps[2][3] >= 1);
    assert_eq!(
        total[4], total[3],
        "herald's invalid-token total matches the failures"
    );
    assert!(stdout.contains("permanent: 1 BadDeviceToken"), "{stdout}");
    assert!(stdout.contains("permanent: 1 Invalid token"), "{stdout}");
    assert!(stdout.contains("refused at the door (malformed tokens): 3 over REST, 3 over SMTP"));

    // The logs are where the demo says, and agree with the table.
    let root = dir.path().canonicalize().unwrap();
    let mainlog = root.join("logs/mainlog.ec");
    assert!(
        stdout.contains(&format!("logs: mainlog {}", mainlog.display())),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&mainlog).unwrap();
    let count = |kind: &str| {
        text.lines()
            .filter(|l| l.split('@').nth(4) == Some(kind))
            .count() as u64
    };
    assert_eq!(count("R"), total[0]);
    assert_eq!(count("D"), total[1]);
    assert_eq!(count("P"), total[3]);
    let apnlog = std::fs::read_to_string(root.join("logs/apnlog.ec")).unwrap();
    assert!(apnlog.lines().any(|l| l.contains("@D@")), "{apnlog}");
}

#[test]
fn a_tiny_demo_still_checks_every_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["demo", "--count", "4", "--smtp-count", "1", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("result: every outcome is the expected one (5 notifications"),
        "{stdout}"
    );
    // The first token of each app is a malformed one: 3 over REST (one per app), 1 over SMTP.
    assert!(
        stdout.contains("refused at the door (malformed tokens): 3 over REST, 1 over SMTP"),
        "{stdout}"
    );
    let total = row(&stdout, "total");
    assert_eq!(total[0] + total[5], 5);
}

/// The cluster demo sends over REST only and its nodes serve no dashboard: `--smtp-count` and `--linger` with
/// `--cluster` are refused as a usage error (exit 2) rather than silently ignored, before anything starts.
#[test]
fn the_cluster_demo_refuses_the_options_it_does_not_use() {
    for extra in [["--linger", "5"], ["--smtp-count", "3"]] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["demo", "--cluster"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(extra[0]) && stderr.contains("--cluster"),
            "{extra:?}: {stderr}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{extra:?}"
        );
    }
}

/// `--dir` used again: the second run starts from a clean spool and logs (the first run's invalid tokens and
/// notifications are not read back), so both runs check out, each with its own numbers. Files of the directory
/// that the demo does not write stay.
#[test]
fn a_second_run_in_the_same_directory_checks_out_too() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("notes.txt");
    std::fs::write(&mine, "kept").unwrap();
    for (count, smtp, total) in [("40", "4", 44), ("70", "3", 73)] {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["demo", "--count", count, "--smtp-count", smtp, "--dir"])
            .arg(dir.path())
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "--count {count}: {stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!(
                "result: every outcome is the expected one ({total} notifications"
            )),
            "{stdout}"
        );
        let sums = row(&stdout, "total");
        assert_eq!(sums[0] + sums[5], total, "{stdout}");
        let mainlog =
            std::fs::read_to_string(dir.path().canonicalize().unwrap().join("logs/mainlog.ec"))
                .unwrap();
        let received = mainlog
            .lines()
            .filter(|l| l.split('@').nth(4) == Some("R"))
            .count() as u64;
        assert_eq!(
            received, sums[0],
            "the mainlog holds this run's notifications only"
        );
    }
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "kept");
}

/// `--linger`: the table and the result line come as soon as the outcomes are checked, with the time the run
/// took; then the demo says how long it lingers and how to stop it, and Ctrl-C (SIGINT) ends it with the run's
/// exit code. (The table used to come only after the linger, its time including it.)
#[cfg(unix)]
#[test]
fn with_linger_the_result_comes_before_the_lingering_and_ctrl_c_ends_it() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    enum Line {
        Out(String),
        Err(String),
    }
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "demo",
            "--count",
            "4",
            "--smtp-count",
            "1",
            "--linger",
            "3600",
            "--dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx_err = tx.clone();
    let read_out = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(Line::Out(line));
        }
    });
    let read_err = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx_err.send(Line::Err(line));
        }
    });

    // The result line and the lingering notice, long before the linger could end. The result is written (and
    // flushed) before the notice: once the notice is read, the result line is at most a moment behind on its pipe.
    let mut deadline = started + Duration::from_secs(180);
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut result = None;
    let mut lingering = false;
    while result.is_none() || !lingering {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(Line::Out(l)) => {
                if l.starts_with("result: ") {
                    result = Some((l.clone(), started.elapsed()));
                }
                stdout.push_str(&l);
                stdout.push('\n');
            }
            Ok(Line::Err(l)) => {
                // The notice of the lingering, saying for how long.
                if l.contains("3600 s") && !lingering {
                    lingering = true;
                    deadline = deadline.min(Instant::now() + Duration::from_secs(10));
                }
                stderr.push_str(&l);
                stderr.push('\n');
            }
            Err(e) => {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = child.wait();
                panic!(
                    "no result line or no lingering notice while the demo lingered ({e}):\n{stdout}\n{stderr}"
                );
            }
        }
    }
    let (result, seen_after) = result.unwrap();
    assert!(
        result.starts_with("result: every outcome is the expected one (5 notifications, "),
        "{stdout}"
    );
    // The time in the result line is the run's, not more than the test saw pass.
    let secs: f64 = result
        .rsplit_once(", ")
        .and_then(|(_, t)| t.strip_suffix(" s)"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{result}"));
    assert!(secs <= seen_after.as_secs_f64() + 0.1, "{result}");
    let total = row(&stdout, "total");
    assert_eq!(total[0] + total[5], 5, "{stdout}");
    assert!(stderr.contains("lingering for 3600 s"), "{stderr}");
    assert!(stderr.contains("/dashboard/"), "{stderr}");
    assert!(stderr.contains("Ctrl-C"), "{stderr}");
    assert!(child.try_wait().unwrap().is_none(), "it should linger");

    // Ctrl-C ends the lingering; the exit code is the run's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = match exited.recv_timeout(Duration::from_secs(60)) {
        Ok(status) => status.unwrap(),
        Err(e) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the demo did not stop within 60 s of SIGINT ({e}):\n{stdout}\n{stderr}");
        }
    };
    assert!(status.success(), "{status:?}\n{stdout}\n{stderr}");
    // Nothing more of the run is printed after the linger (the readers end at the end of the output).
    read_out.join().unwrap();
    read_err.join().unwrap();
    let after: Vec<String> = lines
        .try_iter()
        .filter_map(|l| match l {
            Line::Out(l) => Some(l),
            Line::Err(_) => None,
        })
        .collect();
    assert!(
        after.iter().all(|l| !l.starts_with("result: ")),
        "{after:?}"
    );
}

/// `--dir` holding an operator's `herald.conf` and `pki/`: refused as a usage error (exit 2) naming the file,
/// before anything is written, and both are left as they were.
#[test]
fn a_directory_with_an_operator_s_configuration_and_pki_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let ca = dir.path().join("pki/ca.pem");
    std::fs::create_dir_all(dir.path().join("pki")).unwrap();
    std::fs::write(&config, "my production config\n").unwrap();
    std::fs::write(&ca, "mine\n").unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["demo", "--count", "3", "--dir"])
            .arg(dir.path())
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("herald.conf"), "{stderr}");
    assert!(stderr.contains("did not write"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "my production config\n"
    );
    assert_eq!(std::fs::read_to_string(&ca).unwrap(), "mine\n");

    // Without the configuration, the PKI alone is refused.
    std::fs::remove_file(&config).unwrap();
    let out = run();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pki"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&ca).unwrap(), "mine\n");
    assert!(!config.exists());
}
