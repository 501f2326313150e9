//! Fuzz target: the `/v1.0/inject` template (`herald::inbound::rest::template::Template`). The input is the
//! template text, then a NUL byte, then substitution keys as `key=value` entries separated by NUL bytes. The template
//! is parsed and rendered with those keys (plus `to` and `from` when the keys lack them, as inject.rs does). Any text
//! must parse and render, name a missing key or refuse a rendering past herald's limit, never panic; a rendered
//! message has only CRLF line endings.
#![no_main]

use std::borrow::Cow;
use std::collections::HashMap;

use herald::inbound::rest::template::{MAX_RENDERED, Template, TemplateError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (source, keys) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let keys: HashMap<String, String> = keys
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            Some((k.to_lowercase(), v.to_owned()))
        })
        .collect();
    let template = Template::parse(source);
    for key in template.keys() {
        assert_eq!(key, key.to_lowercase(), "keys are lowercased");
        assert!(
            !key.is_empty() && !key.contains(char::is_whitespace),
            "{key:?}"
        );
    }
    let rendered = template.render(|key| match keys.get(key) {
        Some(v) => Some(Cow::Borrowed(v.as_str())),
        None if key == "to" => Some(Cow::Borrowed("tok@apps.example")),
        None if key == "from" => Some(Cow::Borrowed("")),
        None => None,
    });
    match rendered {
        Ok(out) => {
            let b = out.as_bytes();
            for (i, &c) in b.iter().enumerate() {
                match c {
                    b'\r' => assert_eq!(b.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                    b'\n' => assert!(i > 0 && b[i - 1] == b'\r', "bare LF at {i}"),
                    _ => {}
                }
            }
            // What inject.rs does next with the rendered text.
            let _ = herald::inbound::mcmt::parse(b);
        }
        Err(TemplateError::MissingKey(k)) => assert!(template.keys().any(|t| t == k)),
        // `render` bounds the message by the default limit: the refusal names it.
        Err(TemplateError::TooLarge { limit }) => assert_eq!(limit, MAX_RENDERED),
    }
});
