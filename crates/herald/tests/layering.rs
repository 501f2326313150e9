//! Dependency direction inside the herald crate: the server starts the control listener and implements the
//! narrow `control::ServerHandle`; console code never names the server, so the two do not import each other.

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
