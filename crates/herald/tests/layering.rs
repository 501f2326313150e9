//! Dependency direction inside the herald crate. The server starts the control listener and implements the
//! narrow `control::ServerHandle`; console code never names the server, so the two do not import each other.
//! The queue uses the outbound pools and the logs, which never name the queue; the types they share live in the
//! leaf `model`.

use std::path::Path;

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn console_code_does_not_depend_on_the_server() {
    let control = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/control");
    let files = sources(&control);
    assert!(files.len() >= 3, "control/ has its modules");
    for (path, text) in files {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("crate::server") && !code.contains("server::Server"),
                "{path}:{}: console code names the server: {line}",
                n + 1
            );
        }
    }
}

/// Lines of code (comments cut) in the files under `src/<dir>` that name `crate::<module>` for any of `modules`.
fn naming(dir: &str, modules: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let files = sources(&root);
    assert!(!files.is_empty(), "src/{dir} has its modules");
    let mut found = Vec::new();
    for (path, text) in files {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for m in modules {
                if code.contains(&format!("crate::{m}")) {
                    found.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    found
}

/// The queue drives the outbound pools and writes the logs; neither of them reaches back into the queue. The
/// types all three speak (notification, message id, retry schedule) live in the leaf `model`, which names no
/// other module of the crate (docs/architecture.md).
#[test]
fn logs_and_outbound_do_not_depend_on_the_queue_and_model_is_a_leaf() {
    let back = [naming("logs", &["queue"]), naming("outbound", &["queue"])].concat();
    assert!(
        back.is_empty(),
        "modules reaching back into the queue:\n{}",
        back.join("\n")
    );
    let model_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model");
    let mut leaf = Vec::new();
    for (path, text) in sources(&model_root) {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("crate::") && !code.contains("crate::model") {
                leaf.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        leaf.is_empty(),
        "model names other modules:\n{}",
        leaf.join("\n")
    );
    // The queue still uses both: the direction is queue → outbound and queue → logs.
    assert!(!naming("queue", &["outbound"]).is_empty());
    assert!(!naming("queue", &["logs"]).is_empty());
}
