//! The demo's traffic and its verdict: which token goes to which app by which way in, what each one must get
//! (delivered once, failed as unregistered or bad, refused at the door), and the comparison of that with what
//! herald and the simulator report.

use std::collections::{BTreeMap, HashMap, HashSet};

/// How a demo app authenticates and which protocol it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// HTTP/2 with a provider token (`.p8` key).
    H2Token,
    /// HTTP/2 with a client certificate.
    H2Cert,
    /// The legacy binary protocol (client certificate).
    Binary,
}

/// One app of the demo configuration.
#[derive(Debug, Clone, Copy)]
pub struct App {
    pub domain: &'static str,
    pub topic: &'static str,
    pub kind: AppKind,
}

impl App {
    pub fn label(&self) -> &'static str {
        match self.kind {
            AppKind::H2Token => "HTTP/2, token",
            AppKind::H2Cert => "HTTP/2, certificate",
            AppKind::Binary => "binary, certificate",
        }
    }

    /// The permanent-failure reason herald records for a bad token on this app (docs/apns-protocol.md#feedback-service,
    /// docs/apns-protocol.md#binary-error-packet).
    pub fn bad_token_reason(&self) -> &'static str {
        match self.kind {
            AppKind::H2Token | AppKind::H2Cert => "BadDeviceToken",
            AppKind::Binary => "Invalid token",
        }
    }

    fn h2(&self) -> bool {
        self.kind != AppKind::Binary
    }
}

/// The three demo apps.
pub const APPS: [App; 3] = [
    App {
        domain: "token.demo.example",
        topic: "com.example.demo.token",
        kind: AppKind::H2Token,
    },
    App {
        domain: "cert.demo.example",
        topic: "com.example.demo.cert",
        kind: AppKind::H2Cert,
    },
    App {
        domain: "binary.demo.example",
        topic: "com.example.demo.binary",
        kind: AppKind::Binary,
    },
];

/// What a token must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expect {
    /// Delivered exactly once.
    Deliver,
    /// HTTP/2 410 Unregistered: a permanent failure and an invalid token.
    Unregistered,
    /// HTTP/2 400 BadDeviceToken or binary status 8: a permanent failure and an invalid token.
    Bad,
    /// Not a device token at all: refused when offered, never queued.
    Refused,
}

/// The way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Rest,
    Smtp,
}

/// One planned notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Index into [`APPS`].
    pub app: usize,
    pub token: String,
    pub expect: Expect,
}

/// Everything the demo sends.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rest: Vec<Planned>,
    pub smtp: Vec<Planned>,
}

/// A token unique to (source, app, kind, index): 32 bytes of hex.
fn token(source: Source, app: usize, expect: Expect, i: usize) -> String {
    let kind = match expect {
        Expect::Deliver => 0,
        Expect::Unregistered => 1,
        Expect::Bad => 2,
        Expect::Refused => 3,
    };
    let s = match source {
        Source::Rest => 0xa,
        Source::Smtp => 0x5,
    };
    let hex = format!("de{s:x}{app:x}{kind:02x}{i:058x}");
    if expect == Expect::Refused {
        // Two kinds of malformed token: a non-hex character, and an odd number of digits.
        if i.is_multiple_of(2) {
            format!("{}zz", &hex[..62])
        } else {
            hex[..63].to_owned()
        }
    } else {
        hex
    }
}

/// Spreads `n` notifications of one app: `specials` lists how many of each special kind, placed evenly among
/// the deliverable ones.
fn spread(
    source: Source,
    app: usize,
    n: usize,
    specials: &[(Expect, usize)],
    out: &mut Vec<Planned>,
) {
    let kinds: Vec<Expect> = specials
        .iter()
        .flat_map(|&(e, k)| std::iter::repeat_n(e, k))
        .collect();
    let step = (n / kinds.len().max(1)).max(1);
    for j in 0..n {
        let expect = if j % step == 0 {
            kinds.get(j / step).copied().unwrap_or(Expect::Deliver)
        } else {
            Expect::Deliver
        };
        out.push(Planned {
            app,
            token: token(source, app, expect, j),
            expect,
        });
    }
}

impl Plan {
    /// `rest` notifications through REST and `smtp` through SMTP, spread over the three apps: about one in 300
    /// unregistered (HTTP/2 apps), one in 700 bad and one in 700 malformed over REST; over SMTP one in 20
    /// unregistered (HTTP/2 apps) and one in 20 malformed; at least one of each kind per app when the app gets
    /// enough notifications (the special kinds come first, so a tiny run has only those).
    pub fn new(rest: usize, smtp: usize) -> Plan {
        let share =
            |total: usize, app: usize| total / APPS.len() + usize::from(app < total % APPS.len());
        let mut plan = Plan {
            rest: Vec::with_capacity(rest),
            smtp: Vec::with_capacity(smtp),
        };
        for (a, app) in APPS.iter().enumerate() {
            let n = share(rest, a);
            let unregistered = if app.h2() { (n / 333).max(1) } else { 0 };
            let specials = [
                (Expect::Refused, (n / 700).max(1)),
                (Expect::Bad, (n / 700).max(1)),
                (Expect::Unregistered, unregistered),
            ];
            spread(Source::Rest, a, n, &specials, &mut plan.rest);
            let n = share(smtp, a);
            let unregistered = if app.h2() { (n / 20).max(1) } else { 0 };
            let specials = [
                (Expect::Refused, (n / 20).max(1)),
                (Expect::Unregistered, unregistered),
            ];
            spread(Source::Smtp, a, n, &specials, &mut plan.smtp);
        }
        plan
    }

    pub fn all(&self) -> impl Iterator<Item = &Planned> {
        self.rest.iter().chain(&self.smtp)
    }

    /// Tokens the simulator must answer as unregistered.
    pub fn unregistered(&self) -> Vec<String> {
        self.with(Expect::Unregistered)
    }

    /// Tokens the simulator must answer as bad.
    pub fn bad(&self) -> Vec<String> {
        self.with(Expect::Bad)
    }

    fn with(&self, expect: Expect) -> Vec<String> {
        self.all()
            .filter(|p| p.expect == expect)
            .map(|p| p.token.clone())
            .collect()
    }
}

/// How one offered notification fared at the door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Door {
    Accepted,
    /// Refused, with herald's answer.
    Refused(String),
}

/// What herald reports for one app after the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppOutcome {
    pub accepted: u64,
    pub delivered: u64,
    pub transient: u64,
    pub permanent: u64,
    /// Permanent failures by reason.
    pub permanent_by_reason: BTreeMap<String, u64>,
    /// Tokens recorded as invalid (hex).
    pub invalid_tokens: HashSet<String>,
    pub refused: u64,
}

/// Everything observed, for [`verify`].
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Door outcome of each planned notification, in plan order.
    pub rest: Vec<Door>,
    pub smtp: Vec<Door>,
    /// Per app, in [`APPS`] order.
    pub apps: Vec<AppOutcome>,
    /// How often the simulator recorded each token, with its topic.
    pub record: HashMap<String, (usize, String)>,
    /// Whether herald listed invalid tokens per app (`GET /api/v1/tokens/invalid?domain=`); when it did not,
    /// only `invalid_total` is compared.
    pub invalid_per_app: bool,
    /// Invalid tokens in total, as herald's metrics report them.
    pub invalid_total: Option<u64>,
}

/// Compares what happened with the plan; every difference is one line. Empty means every outcome was the
/// expected one.
pub fn verify(plan: &Plan, seen: &Observed) -> Vec<String> {
    let mut problems = Vec::new();
    for (what, planned, doors) in [
        ("REST", &plan.rest, &seen.rest),
        ("SMTP", &plan.smtp, &seen.smtp),
    ] {
        if planned.len() != doors.len() {
            problems.push(format!(
                "{what}: {} outcomes for {} notifications",
                doors.len(),
                planned.len()
            ));
            continue;
        }
        for (p, door) in planned.iter().zip(doors) {
            match (p.expect, door) {
                (Expect::Refused, Door::Refused(r)) if r.contains("device token") => {}
                (Expect::Refused, Door::Refused(r)) => problems.push(format!(
                    "{what}: malformed token {} was refused for another reason: {r}",
                    p.token
                )),
                (Expect::Refused, Door::Accepted) => {
                    problems.push(format!("{what}: malformed token {} was accepted", p.token))
                }
                (_, Door::Accepted) => {}
                (_, Door::Refused(r)) => {
                    problems.push(format!("{what}: token {} was refused: {r}", p.token))
                }
            }
        }
    }
    for (a, app) in APPS.iter().enumerate() {
        let Some(got) = seen.apps.get(a) else {
            problems.push(format!("{}: no statistics", app.domain));
            continue;
        };
        let count = |e: Expect| plan.all().filter(|p| p.app == a && p.expect == e).count() as u64;
        let (deliver, unregistered, bad) = (
            count(Expect::Deliver),
            count(Expect::Unregistered),
            count(Expect::Bad),
        );
        let mut check = |what: &str, got: u64, want: u64| {
            if got != want {
                problems.push(format!("{}: {what} {got}, expected {want}", app.domain));
            }
        };
        check("delivered", got.delivered, deliver);
        check("permanent failures", got.permanent, unregistered + bad);
        let reason = |r: &str| got.permanent_by_reason.get(r).copied().unwrap_or(0);
        check(
            "Unregistered failures",
            reason("Unregistered"),
            unregistered,
        );
        check(
            &format!("{} failures", app.bad_token_reason()),
            reason(app.bad_token_reason()),
            bad,
        );
        let want_invalid: HashSet<String> = plan
            .all()
            .filter(|p| p.app == a && matches!(p.expect, Expect::Unregistered | Expect::Bad))
            .map(|p| p.token.clone())
            .collect();
        if seen.invalid_per_app && got.invalid_tokens != want_invalid {
            let missing = want_invalid.difference(&got.invalid_tokens).count();
            let extra = got.invalid_tokens.difference(&want_invalid).count();
            problems.push(format!(
                "{}: invalid tokens differ: {missing} missing, {extra} unexpected",
                app.domain
            ));
        }
    }
    let want_total = plan
        .all()
        .filter(|p| matches!(p.expect, Expect::Unregistered | Expect::Bad))
        .count() as u64;
    match seen.invalid_total {
        Some(n) if n != want_total => problems.push(format!(
            "herald reports {n} invalid tokens in total, expected {want_total}"
        )),
        None if !seen.invalid_per_app => {
            problems.push("herald reported no invalid tokens at all".to_owned())
        }
        _ => {}
    }
    let mut undelivered = 0;
    let mut duplicated = 0;
    let mut wrong_topic = 0;
    for p in plan.all() {
        let (n, topic) = seen
            .record
            .get(&p.token)
            .map(|(n, t)| (*n, t.as_str()))
            .unwrap_or((0, ""));
        match p.expect {
            Expect::Deliver if n == 0 => undelivered += 1,
            Expect::Deliver if n > 1 => duplicated += 1,
            Expect::Deliver if topic != APPS[p.app].topic => wrong_topic += 1,
            Expect::Deliver => {}
            _ if n > 0 => problems.push(format!(
                "the simulator accepted token {} ({:?} expected)",
                p.token, p.expect
            )),
            _ => {}
        }
    }
    for (what, n) in [
        ("never reached the simulator", undelivered),
        ("reached the simulator more than once", duplicated),
        ("reached the simulator with the wrong topic", wrong_topic),
    ] {
        if n > 0 {
            problems.push(format!("{n} deliverable notifications {what}"));
        }
    }
    let planned: HashSet<&str> = plan.all().map(|p| p.token.as_str()).collect();
    let strangers = seen
        .record
        .keys()
        .filter(|t| !planned.contains(t.as_str()))
        .count();
    if strangers > 0 {
        problems.push(format!(
            "the simulator recorded {strangers} tokens the demo never sent"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_every_kind_over_the_apps() {
        let plan = Plan::new(20_000, 100);
        assert_eq!(plan.rest.len(), 20_000);
        assert_eq!(plan.smtp.len(), 100);
        let tokens: HashSet<&str> = plan.all().map(|p| p.token.as_str()).collect();
        assert_eq!(tokens.len(), 20_100, "tokens are unique");
        for (a, app) in APPS.iter().enumerate() {
            let n = |src: &[Planned], e: Expect| {
                src.iter().filter(|p| p.app == a && p.expect == e).count()
            };
            assert_eq!(n(&plan.rest, Expect::Refused), 9);
            assert_eq!(n(&plan.rest, Expect::Bad), 9);
            assert_eq!(n(&plan.smtp, Expect::Refused), 1);
            let unregistered = n(&plan.rest, Expect::Unregistered);
            assert_eq!(
                unregistered,
                if app.kind == AppKind::Binary { 0 } else { 20 }
            );
        }
        for p in plan.all() {
            let valid = herald_apns::token_hex::DeviceToken::from_hex(&p.token).is_ok();
            assert_eq!(valid, p.expect != Expect::Refused, "{p:?}");
        }
    }

    #[test]
    fn tiny_and_empty_plans_work() {
        let plan = Plan::new(0, 0);
        assert!(plan.rest.is_empty() && plan.smtp.is_empty());
        assert_eq!(verify(&plan, &perfect(&plan)), Vec::<String>::new());
        let plan = Plan::new(4, 1);
        assert_eq!((plan.rest.len(), plan.smtp.len()), (4, 1));
        assert_eq!(plan.rest[0].expect, Expect::Refused);
        assert_eq!(verify(&plan, &perfect(&plan)), Vec::<String>::new());
    }

    #[test]
    fn small_plans_still_have_each_kind() {
        let plan = Plan::new(60, 3);
        for e in [
            Expect::Deliver,
            Expect::Unregistered,
            Expect::Bad,
            Expect::Refused,
        ] {
            assert!(plan.rest.iter().any(|p| p.expect == e), "{e:?}");
        }
        assert!(plan.smtp.iter().any(|p| p.expect == Expect::Refused));
    }

    /// What a perfect run reports.
    fn perfect(plan: &Plan) -> Observed {
        let door = |p: &Planned| match p.expect {
            Expect::Refused => Door::Refused("device token: bad".into()),
            _ => Door::Accepted,
        };
        let mut seen = Observed {
            rest: plan.rest.iter().map(door).collect(),
            smtp: plan.smtp.iter().map(door).collect(),
            invalid_per_app: true,
            invalid_total: Some(plan.unregistered().len() as u64 + plan.bad().len() as u64),
            ..Observed::default()
        };
        for (a, app) in APPS.iter().enumerate() {
            let mut o = AppOutcome::default();
            for p in plan.all().filter(|p| p.app == a) {
                match p.expect {
                    Expect::Deliver => {
                        o.delivered += 1;
                        seen.record.insert(p.token.clone(), (1, app.topic.into()));
                    }
                    Expect::Unregistered | Expect::Bad => {
                        o.permanent += 1;
                        let r = if p.expect == Expect::Bad {
                            app.bad_token_reason()
                        } else {
                            "Unregistered"
                        };
                        *o.permanent_by_reason.entry(r.into()).or_default() += 1;
                        o.invalid_tokens.insert(p.token.clone());
                    }
                    Expect::Refused => o.refused += 1,
                }
            }
            seen.apps.push(o);
        }
        seen
    }

    #[test]
    fn a_perfect_run_verifies_and_each_deviation_is_named() {
        let plan = Plan::new(300, 12);
        let seen = perfect(&plan);
        assert_eq!(verify(&plan, &seen), Vec::<String>::new());

        let mut twice = seen.clone();
        let t = plan
            .rest
            .iter()
            .find(|p| p.expect == Expect::Deliver)
            .unwrap();
        twice.record.get_mut(&t.token).unwrap().0 = 2;
        assert_eq!(
            verify(&plan, &twice),
            ["1 deliverable notifications reached the simulator more than once"]
        );

        let mut accepted = seen.clone();
        let i = plan
            .rest
            .iter()
            .position(|p| p.expect == Expect::Refused)
            .unwrap();
        accepted.rest[i] = Door::Accepted;
        let problems = verify(&plan, &accepted);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("was accepted"), "{problems:?}");

        let mut lost = seen.clone();
        lost.apps[2].delivered -= 1;
        lost.apps[0].invalid_tokens.clear();
        let problems = verify(&plan, &lost);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("binary.demo.example: delivered")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("token.demo.example: invalid tokens differ")),
            "{problems:?}"
        );

        // Without the per-app list, the total from the metrics decides.
        let mut totals_only = seen.clone();
        totals_only.invalid_per_app = false;
        for app in &mut totals_only.apps {
            app.invalid_tokens.clear();
        }
        assert_eq!(verify(&plan, &totals_only), Vec::<String>::new());
        totals_only.invalid_total = Some(1);
        assert_eq!(verify(&plan, &totals_only).len(), 1);
    }
}
