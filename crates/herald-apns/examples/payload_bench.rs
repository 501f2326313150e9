//! Payload checks per notification: `infer_push_type` and `validate` against serde_json reading the same bytes
//! into a `Value` (the reference, measured in the same run). Run by `bench/payload/run.sh`; prints one Markdown
//! row per payload with nanoseconds per call and the ratios to the reference.
//!
//!   cargo run --release -p herald-apns --example payload_bench [ITERATIONS]

use std::hint::black_box;
use std::time::Instant;

use herald_apns::payload::{infer_push_type, validate};
use herald_apns::push::{Priority, Protocol, PushType};

fn per_call(iterations: u32, mut f: impl FnMut() -> bool) -> f64 {
    let mut hits = 0u32;
    let start = Instant::now();
    for _ in 0..iterations {
        hits += u32::from(f());
    }
    black_box(hits);
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let items = (0..40)
        .map(|i| format!(r#"{{"sku":"S{i}","qty":{i}}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let app_data = format!(
        r#"{{"aps":{{"alert":{{"title":"Order shipped","body":"Your parcel is on its way"}},"badge":1}},"order":{{"id":"A-1","items":[{items}]}}}}"#
    );
    let payloads: Vec<(&str, Vec<u8>, PushType, Priority)> = vec![
        (
            "alert string",
            br#"{"aps":{"alert":"Hello there"}}"#.to_vec(),
            PushType::Alert,
            Priority::Immediate,
        ),
        (
            "alert dictionary, badge, sound, app data",
            br#"{"aps":{"alert":{"title":"Hello","body":"You have a new message from the demo"},"badge":3,"sound":"default"},"acme":{"id":12345}}"#.to_vec(),
            PushType::Alert,
            Priority::Immediate,
        ),
        (
            "background",
            br#"{"aps":{"content-available":1}}"#.to_vec(),
            PushType::Background,
            Priority::Conserve,
        ),
        (
            "alert with 40 items of app data",
            app_data.into_bytes(),
            PushType::Alert,
            Priority::Immediate,
        ),
    ];
    println!(
        "| payload | serde_json Value (ns) | infer_push_type (ns) | validate (ns) | infer / Value | validate / Value |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, p, push_type, priority) in &payloads {
        let (mut reference, mut infer, mut check) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            reference.push(per_call(iterations, || {
                serde_json::from_slice::<serde_json::Value>(black_box(p)).is_ok()
            }));
            infer.push(per_call(iterations, || {
                infer_push_type(black_box(p)) == PushType::Background
            }));
            check.push(per_call(iterations, || {
                validate(black_box(p), *push_type, Protocol::Http2, *priority).is_ok()
            }));
        }
        let (r, i, c) = (median(reference), median(infer), median(check));
        println!(
            "| {name} ({} bytes) | {r:.0} | {i:.0} | {c:.0} | {:.2} | {:.2} |",
            p.len(),
            i / r,
            c / r
        );
    }
}
