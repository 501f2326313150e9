//! Fuzz target: any bytes given to the configuration parser and loader must give a configuration or diagnostics,
//! never a panic, a hang or unbounded memory. A configuration that loads must also survive `render` and parse
//! back to the same tree.
#![no_main]

use herald_conf::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Includes would read the fuzzer's working directory; keep inputs self-contained.
    if data.windows(7).any(|w| w.eq_ignore_ascii_case(b"include")) {
        return;
    }
    if let Ok(config) = Config::parse_bytes("fuzz.conf", data) {
        let shown = config.render();
        match Config::parse_str("shown.conf", &shown) {
            Ok(again) => assert!(
                again.tree() == config.tree(),
                "render changed the tree:\n{shown}"
            ),
            Err(d) => panic!("rendered configuration does not load: {d}\n{shown}"),
        }
    }
});
