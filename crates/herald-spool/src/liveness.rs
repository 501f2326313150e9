//! A liveness probe of the NATS connection of a [`crate::JetStreamSpool`], so that a NATS server that hangs (a
//! stopped process, a network path that drops everything without a reset) does not cut its node off.
//!
//! The NATS client pings the server only after its `ping_interval` ([`CLIENT_PING_INTERVAL`], set by
//! [`crate::JetStreamSpool::connect`]) without any command: every publish, ack or request it sends resets that
//! timer, so a busy node never pings, and a hung server, which closes nothing, is never noticed: the node's requests
//! time out one after the other for as long as the server hangs, though the other servers of the cluster answer.
//! The probe makes a round trip through the server the node is connected to every [`PROBE_EVERY`]: it publishes a
//! small message to an inbox subject of its own (`_INBOX.<unique>`, which the node may publish and subscribe to
//! anyway: docs/scale-out.md) and waits
//! [`PROBE_TIMEOUT`] for it to come back. That goes through that one server only: neither a JetStream leader
//! election nor another server of the cluster is needed for the answer. Any echo received counts, a late one of an
//! earlier probe too: the server answered, however slowly.
//!
//! Once the probes have failed for [`silence_limit`] (the node's `request_timeout`, the longest herald waits for a
//! JetStream answer before refusing a sender, plus [`SILENCE_MARGIN`]) and at least [`MIN_FAILED_PROBES`] times in
//! a row ([`should_reconnect`]), the probe says so in a warning naming the server, reports the node not ready
//! ([`JetStreamHealth`], until a probe is answered again: the client itself still takes the connection as open) and
//! makes the client reconnect,
//! to another server of the cluster (it picks at random; should it pick the hung server again, whose port still
//! takes the connection, herald's build of async-nats gives up waiting for that server's greeting after the
//! connection timeout, `spool_nats_timeout`, and tries the next: vendor/async-nats/HERALD-PATCH.md). It goes on
//! probing the new connection. A client stuck writing to the silent server takes no request to reconnect; its own
//! pings end that connection ([`CLIENT_PING_INTERVAL`]). While the
//! client is not connected (it is reconnecting by itself), nothing is counted. It stops with the spool.
//!
//! A server cut off from the rest of its cluster (a network partition that leaves it in the minority) still
//! answers the echo, but not for JetStream: the stream's leader and the cluster's meta leader are on the other
//! side, and every publish through it fails. So, once the spool is set up, each answered probe is followed by a
//! JetStream round trip through the same connection: the stream's info (`$JS.API.STREAM.INFO.<stream>`, answered
//! by the stream's leader), within [`PROBE_TIMEOUT`]. Once those have failed for [`jetstream_limit`]
//! (`request_timeout` plus [`JETSTREAM_MARGIN`], longer than a leader election of a three-server cluster) and at
//! least [`MIN_FAILED_PROBES`] times in a row while the echo came back ([`JetStreamWatch::verdict`]), the node
//! takes JetStream as unavailable through that server: it reports itself not ready ([`JetStreamHealth`]) until
//! JetStream answers again, says so in a warning naming the server, and makes the client reconnect, again every
//! [`jetstream_limit`] while it lasts (the client may pick the same server again: a later round moves it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream;
use futures_util::StreamExt;

/// How often the connection is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long one probe waits for its echo.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// What the probes may fail for beyond `request_timeout` before the client is made to reconnect: a healthy server
/// answers a round trip in milliseconds, a busy one (a leader election, a disk that stalls the server's writes)
/// within `request_timeout` or a little more; a second or two more would be margin enough, five keep a server
/// that is slow for a moment from being left.
pub const SILENCE_MARGIN: Duration = Duration::from_secs(5);
/// Failed probes in a row needed before the client is made to reconnect, however long they span: a single slow
/// probe (a pause of the node's own process) is not enough.
pub const MIN_FAILED_PROBES: u32 = 3;

/// The NATS client's own ping interval ([`crate::JetStreamSpool::connect`]). The client pings only after this long
/// without taking a command or reading anything from the server, and ends the connection at the third unanswered
/// ping. A connection that carries the probes never gets there while it works; one stuck writing to a silent server
/// (its buffers full, so it takes no command: not even the probe's request to reconnect) ends within three of them,
/// about when the probe would leave it ([`silence_limit`]), rather than the half minute the client's default of ten
/// seconds would take.
pub const CLIENT_PING_INTERVAL: Duration = PROBE_EVERY;

/// How long the probes may fail before the client is made to reconnect: `request_timeout` plus [`SILENCE_MARGIN`].
pub fn silence_limit(request_timeout: Duration) -> Duration {
    request_timeout + SILENCE_MARGIN
}

/// What JetStream may stay unanswered beyond `request_timeout`, through a server that answers the echo, before the
/// node takes it as unavailable there: a leader election of a three-server cluster takes 5 to 7 s, during which
/// publishes wait and then go through; ten seconds keep one from making the node leave its server.
pub const JETSTREAM_MARGIN: Duration = Duration::from_secs(10);

/// How long the JetStream checks may fail before the node reports itself not ready and reconnects:
/// `request_timeout` plus [`JETSTREAM_MARGIN`].
pub fn jetstream_limit(request_timeout: Duration) -> Duration {
    request_timeout + JETSTREAM_MARGIN
}

/// Failed probes in a row, since the first of them was sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// When the first failed probe of the streak was sent; `None` while the probes are answered.
    pub since: Option<Instant>,
    /// Failed probes since then.
    pub failures: u32,
}

impl Streak {
    /// A probe sent at `sent` got no echo in time.
    pub fn failed(&mut self, sent: Instant) {
        self.since.get_or_insert(sent);
        self.failures = self.failures.saturating_add(1);
    }

    /// A probe was answered, or the connection is a new one: the count starts again.
    pub fn reset(&mut self) {
        *self = Streak::default();
    }
}

/// Whether the server has been silent long enough to be left: at least [`MIN_FAILED_PROBES`] failed probes in a
/// row, the first of them sent `limit` or more before `now`.
pub fn should_reconnect(streak: Streak, now: Instant, limit: Duration) -> bool {
    match streak.since {
        Some(since) => {
            streak.failures >= MIN_FAILED_PROBES && now.saturating_duration_since(since) >= limit
        }
        None => false,
    }
}

/// What the JetStream checks found: the failed ones in a row, and when the client was last made to reconnect for
/// them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JetStreamWatch {
    /// Failed JetStream checks in a row (each made once the echo came back).
    pub streak: Streak,
    /// When the client was last made to reconnect because JetStream did not answer; `None` since it answered.
    pub reconnected: Option<Instant>,
}

/// What to do about JetStream, as [`JetStreamWatch::verdict`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JetStreamVerdict {
    /// JetStream answers, or has not been silent long enough (a leader election): nothing to do.
    Available,
    /// Silent for the limit: the node is not ready; with `reconnect`, the client is to reconnect now.
    Unavailable { reconnect: bool },
}

impl JetStreamWatch {
    /// A JetStream check was answered: the count starts again.
    pub fn answered(&mut self) {
        *self = JetStreamWatch::default();
    }

    /// A JetStream check sent at `sent` got no answer in time (or an error).
    pub fn failed(&mut self, sent: Instant) {
        self.streak.failed(sent);
    }

    /// The client was made to reconnect at `now`.
    pub fn reconnecting(&mut self, now: Instant) {
        self.reconnected = Some(now);
    }

    /// Whether JetStream counts as unavailable at `now` ([`should_reconnect`] with `limit`, [`jetstream_limit`]),
    /// and if so whether the client is to reconnect: at once, and again once `limit` has passed since the last
    /// time, until JetStream answers.
    pub fn verdict(&self, now: Instant, limit: Duration) -> JetStreamVerdict {
        if !should_reconnect(self.streak, now, limit) {
            return JetStreamVerdict::Available;
        }
        let reconnect = self
            .reconnected
            .is_none_or(|at| now.saturating_duration_since(at) >= limit);
        JetStreamVerdict::Unavailable { reconnect }
    }
}

/// Whether JetStream answers through the node's NATS server, as the probe last found, shared with the spool: it
/// holds why not while the node is to report itself not ready. Two findings count: the server silent (the echo has
/// not come back for [`silence_limit`]), until a probe is answered again; and JetStream not answering through a
/// server that echoes, until it answers.
#[derive(Debug, Default, Clone)]
pub struct JetStreamHealth(Arc<Mutex<Findings>>);

#[derive(Debug, Default)]
struct Findings {
    silent: Option<String>,
    jetstream: Option<String>,
}

impl JetStreamHealth {
    /// Why JetStream is taken as unavailable, `None` while it is not.
    pub fn unavailable(&self) -> Option<String> {
        let findings = self.findings();
        findings
            .silent
            .clone()
            .or_else(|| findings.jetstream.clone())
    }

    fn findings(&self) -> std::sync::MutexGuard<'_, Findings> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// JetStream answers (`None`) or not through a server that echoes; returns what was said before.
    fn set(&self, why: Option<String>) -> Option<String> {
        std::mem::replace(&mut self.findings().jetstream, why)
    }

    /// The server has answered no probe for the limit (`Some`), or answered one again (`None`); returns what was
    /// said before.
    fn set_silent(&self, why: Option<String>) -> Option<String> {
        std::mem::replace(&mut self.findings().silent, why)
    }
}

/// What the probe probes: the spool's client and, once the spool is set up, its JetStream context and stream.
pub struct Target {
    pub client: async_nats::Client,
    pub jetstream: Option<(jetstream::Context, String)>,
}

/// Why the stream cannot take publishes, as the cluster part of its info says: a clustered stream without a leader (a server cut off
/// from the rest of its cluster answers with its own view, in which the stream has none); `None` when it has one,
/// or is not clustered.
pub fn leaderless(cluster: Option<&jetstream::stream::ClusterInfo>) -> Option<String> {
    let cluster = cluster?;
    match cluster.leader.as_deref() {
        Some(leader) if !leader.is_empty() => None,
        _ => Some(format!(
            "the stream has no leader in cluster {:?}",
            cluster.name.as_deref().unwrap_or("")
        )),
    }
}

/// The server the client is connected to (or was, last), as a warning names it.
fn server_of(client: &async_nats::Client) -> String {
    let info = client.server_info();
    let name = if info.server_name.is_empty() {
        info.server_id.as_str()
    } else {
        info.server_name.as_str()
    };
    format!("{name} (port {})", info.port)
}

/// Probes the connection of the client `target_of` gives (none: the spool is gone or closed, and the probe ends)
/// every [`PROBE_EVERY`], and makes it reconnect once [`should_reconnect`] says so with `limit`
/// ([`silence_limit`]); checks JetStream through it after each answered probe, once the spool is set up, and
/// keeps `health` and reconnects as [`JetStreamWatch::verdict`] says with `jetstream_limit` ([`jetstream_limit`]).
/// Ends at once when `stopping` turns true or its sender is dropped (the spool stops or is gone), so its
/// subscription does not keep the connection open.
pub async fn probe<F>(
    target_of: F,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    limit: Duration,
    jetstream_limit: Duration,
    health: JetStreamHealth,
) where
    F: Fn() -> Option<Target>,
{
    let mut streak = Streak::default();
    let mut watch = JetStreamWatch::default();
    let mut echoes: Option<async_nats::Subscriber> = None;
    let mut subject = String::new();
    // The server left after the last warning, until a probe is answered again.
    let mut left: Option<String> = None;
    let mut sequence: u64 = 0;
    loop {
        let Some(Target { client, jetstream }) = target_of() else {
            return;
        };
        let sent = Instant::now();
        if client.connection_state() != State::Connected {
            // The client is reconnecting by itself: nothing to count until it is connected.
            streak.reset();
        } else {
            sequence = sequence.wrapping_add(1);
            let round = tokio::select! {
                answered = round_trip(&client, &mut echoes, &mut subject, sequence) => answered,
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            if round {
                health.set_silent(None);
                if let Some(server) = left.take() {
                    tracing::info!(
                        "the NATS connection answers again, through server {}, after leaving server {server}",
                        server_of(&client)
                    );
                }
                streak.reset();
                let checked = tokio::select! {
                    checked = check_jetstream(&client, jetstream, &mut watch, &health, jetstream_limit) => checked,
                    _ = stopping.wait_for(|stop| *stop) => return,
                };
                if checked {
                    left = Some(server_of(&client));
                }
            } else {
                streak.failed(sent);
                let now = Instant::now();
                if should_reconnect(streak, now, limit) {
                    let server = server_of(&client);
                    let silent = streak
                        .since
                        .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
                    tracing::warn!(
                        server = %server,
                        "NATS server {server} has answered none of this node's last {} probes ({:.0} s): \
                         reconnecting, to another server of the cluster if one answers",
                        streak.failures,
                        silent.as_secs_f64()
                    );
                    // Not ready from now until a probe is answered again: the client may still take the
                    // connection as open (nothing closed it), and publishes through it would wait in vain.
                    health.set_silent(Some(format!(
                        "NATS server {server} has answered none of this node's last {} probes ({:.0} s)",
                        streak.failures,
                        silent.as_secs_f64()
                    )));
                    reconnect(&client).await;
                    left = Some(server);
                    streak.reset();
                }
            }
        }
        drop(client);
        let pause = PROBE_EVERY.saturating_sub(sent.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// Makes the client reconnect. The client takes the request once it reads its commands again; should it not within
/// a probe's time (it is stuck writing to a silent server: its buffers are full, and it takes no command until the
/// server reads), its own pings end that connection: they go out once it has taken no command and read nothing for
/// [`CLIENT_PING_INTERVAL`], and the third unanswered one ends it, [`CLIENT_PING_INTERVAL`] × 3 after it stuck.
async fn reconnect(client: &async_nats::Client) {
    if tokio::time::timeout(PROBE_TIMEOUT, client.force_reconnect())
        .await
        .is_err()
    {
        tracing::warn!(
            "the NATS client takes no command (stuck writing to server {}): its own pings end that connection \
             within {:?} of it sticking, and it reconnects then",
            server_of(client),
            CLIENT_PING_INTERVAL * 3
        );
    }
}

/// The JetStream check after an answered probe: asks for the stream's info (`jetstream`: none before the spool is
/// set up, and nothing is checked), notes the outcome in `watch`, keeps `health` and, when
/// [`JetStreamWatch::verdict`] says so, warns naming the server and makes the client reconnect. Returns whether it
/// did.
async fn check_jetstream(
    client: &async_nats::Client,
    jetstream: Option<(jetstream::Context, String)>,
    watch: &mut JetStreamWatch,
    health: &JetStreamHealth,
    limit: Duration,
) -> bool {
    let Some((context, stream)) = jetstream else {
        watch.answered();
        health.set(None);
        return false;
    };
    let sent = Instant::now();
    let failure = match tokio::time::timeout(PROBE_TIMEOUT, context.get_stream(&stream)).await {
        Ok(Ok(answer)) => leaderless(answer.cached_info().cluster.as_ref()),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    let server = server_of(client);
    let Some(failure) = failure else {
        watch.answered();
        if let Some(why) = health.set(None) {
            tracing::info!(
                "JetStream answers again, through NATS server {server}: the node takes notifications again \
                 (it did not: {why})"
            );
        }
        return false;
    };
    watch.failed(sent);
    let now = Instant::now();
    let JetStreamVerdict::Unavailable { reconnect: leave } = watch.verdict(now, limit) else {
        return false;
    };
    let silent = watch
        .streak
        .since
        .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
    let why = format!(
        "JetStream has not answered through NATS server {server} for {:.0} s (stream {stream:?}: {failure}), \
         though the server answers: it may be cut off from the rest of its cluster",
        silent.as_secs_f64()
    );
    health.set(Some(why.clone()));
    if !leave {
        return false;
    }
    tracing::warn!(
        server = %server,
        "{why}; the node refuses notifications and reconnects, to another server of the cluster if one answers"
    );
    reconnect(client).await;
    watch.reconnecting(Instant::now());
    true
}

/// One probe: publishes to the probe's own inbox subject (subscribed to at the first probe, and again should the
/// subscription be gone) and waits [`PROBE_TIMEOUT`] for any message there. Echoes already waiting (late ones of
/// earlier probes) are dropped first: they say nothing of the server now.
async fn round_trip(
    client: &async_nats::Client,
    echoes: &mut Option<async_nats::Subscriber>,
    subject: &mut String,
    sequence: u64,
) -> bool {
    let attempt = async {
        if echoes.is_none() {
            let inbox = client.new_inbox();
            match client.subscribe(inbox.clone()).await {
                Ok(subscriber) => {
                    *echoes = Some(subscriber);
                    *subject = inbox;
                }
                Err(_) => return false,
            }
        }
        let Some(subscriber) = echoes.as_mut() else {
            return false;
        };
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, subscriber.next()).await {}
        if client
            .publish(subject.clone(), sequence.to_string().into())
            .await
            .is_err()
        {
            return false;
        }
        match subscriber.next().await {
            Some(_) => true,
            None => {
                // The subscription ended (the client dropped it): subscribe again at the next probe.
                *echoes = None;
                false
            }
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    fn streak(since: Option<Instant>, failures: u32) -> Streak {
        Streak { since, failures }
    }

    #[test]
    fn the_limit_is_the_request_timeout_and_a_margin() {
        assert_eq!(
            silence_limit(Duration::from_secs(5)),
            Duration::from_secs(10)
        );
        assert_eq!(
            silence_limit(Duration::from_secs(2)),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn answered_probes_never_make_the_client_reconnect() {
        let now = Instant::now();
        assert!(!should_reconnect(Streak::default(), now, LIMIT));
        assert!(!should_reconnect(
            Streak::default(),
            now + Duration::from_secs(3600),
            LIMIT
        ));
    }

    #[test]
    fn failures_spanning_less_than_the_limit_are_waited_out() {
        let t0 = Instant::now();
        let s = streak(Some(t0), 4);
        assert!(!should_reconnect(s, t0, LIMIT));
        assert!(!should_reconnect(
            s,
            t0 + Duration::from_millis(9_999),
            LIMIT
        ));
        assert!(should_reconnect(s, t0 + LIMIT, LIMIT));
        assert!(should_reconnect(s, t0 + Duration::from_secs(60), LIMIT));
    }

    #[test]
    fn too_few_failures_are_waited_out_however_long_they_span() {
        // Two probes failed, the node's process paused in between: not yet.
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(30);
        assert!(!should_reconnect(streak(Some(t0), 1), later, LIMIT));
        assert!(!should_reconnect(
            streak(Some(t0), MIN_FAILED_PROBES - 1),
            later,
            LIMIT
        ));
        assert!(should_reconnect(
            streak(Some(t0), MIN_FAILED_PROBES),
            later,
            LIMIT
        ));
    }

    #[test]
    fn a_streak_counts_from_its_first_failure_and_an_answer_starts_it_again() {
        let t0 = Instant::now();
        let mut s = Streak::default();
        for i in 0..5 {
            s.failed(t0 + PROBE_EVERY * i);
        }
        assert_eq!(s, streak(Some(t0), 5));
        // Five probes from t0 to t0 + 8 s, the limit not reached; at t0 + 10 s it is.
        assert!(!should_reconnect(s, t0 + PROBE_EVERY * 4, LIMIT));
        assert!(should_reconnect(s, t0 + PROBE_EVERY * 5, LIMIT));
        s.reset();
        assert!(!should_reconnect(s, t0 + PROBE_EVERY * 5, LIMIT));
        s.failed(t0 + PROBE_EVERY * 6);
        assert_eq!(s, streak(Some(t0 + PROBE_EVERY * 6), 1));
    }

    #[test]
    fn an_instant_before_the_streak_began_does_not_count_as_a_long_silence() {
        let t0 = Instant::now() + Duration::from_secs(100);
        assert!(!should_reconnect(
            streak(Some(t0), 10),
            t0 - Duration::from_secs(50),
            LIMIT
        ));
    }

    #[test]
    fn the_jetstream_limit_outlasts_a_leader_election() {
        assert_eq!(
            jetstream_limit(Duration::from_secs(5)),
            Duration::from_secs(15)
        );
        // A leader election of three servers takes 5 to 7 s.
        assert!(jetstream_limit(Duration::ZERO) > Duration::from_secs(7));
    }

    #[test]
    fn jetstream_silent_for_a_leader_election_keeps_the_node_ready() {
        let t0 = Instant::now();
        let mut watch = JetStreamWatch::default();
        // Failed checks every 2 s for 8 s, then an answer.
        for i in 0..5 {
            watch.failed(t0 + PROBE_EVERY * i);
            assert_eq!(
                watch.verdict(t0 + PROBE_EVERY * i, LIMIT),
                JetStreamVerdict::Available
            );
        }
        watch.answered();
        assert_eq!(
            watch.verdict(t0 + Duration::from_secs(60), LIMIT),
            JetStreamVerdict::Available
        );
    }

    #[test]
    fn jetstream_silent_for_the_limit_makes_the_node_unready_and_reconnect_once_a_limit() {
        let t0 = Instant::now();
        let mut watch = JetStreamWatch::default();
        for i in 0..=5 {
            watch.failed(t0 + PROBE_EVERY * i);
        }
        let at_limit = t0 + LIMIT;
        assert_eq!(
            watch.verdict(at_limit, LIMIT),
            JetStreamVerdict::Unavailable { reconnect: true }
        );
        watch.reconnecting(at_limit);
        // Still unavailable after the reconnection (the same server again, say), but no second reconnection
        // before another limit has passed.
        watch.failed(at_limit + PROBE_EVERY);
        assert_eq!(
            watch.verdict(at_limit + PROBE_EVERY, LIMIT),
            JetStreamVerdict::Unavailable { reconnect: false }
        );
        assert_eq!(
            watch.verdict(at_limit + LIMIT, LIMIT),
            JetStreamVerdict::Unavailable { reconnect: true }
        );
        // An answer ends it all.
        watch.answered();
        assert_eq!(watch, JetStreamWatch::default());
        assert_eq!(
            watch.verdict(at_limit + LIMIT, LIMIT),
            JetStreamVerdict::Available
        );
    }

    #[test]
    fn the_health_holds_why_jetstream_is_unavailable_until_cleared() {
        let health = JetStreamHealth::default();
        assert_eq!(health.unavailable(), None);
        assert_eq!(health.clone().set(Some("cut off".into())), None);
        assert_eq!(health.unavailable().as_deref(), Some("cut off"));
        assert_eq!(health.set(None).as_deref(), Some("cut off"));
        assert_eq!(health.unavailable(), None);
    }

    #[test]
    fn a_clustered_stream_without_a_leader_is_unavailable() {
        use jetstream::stream::ClusterInfo;
        let led = ClusterInfo {
            name: Some("c".into()),
            leader: Some("n1".into()),
            ..ClusterInfo::default()
        };
        assert_eq!(leaderless(Some(&led)), None);
        // No cluster part: not clustered, nothing to say.
        assert_eq!(leaderless(None), None);
        let without = ClusterInfo {
            name: Some("c".into()),
            ..ClusterInfo::default()
        };
        let why = leaderless(Some(&without)).unwrap();
        assert!(why.contains("no leader") && why.contains("\"c\""), "{why}");
        let empty = ClusterInfo {
            leader: Some(String::new()),
            ..without
        };
        assert!(leaderless(Some(&empty)).is_some());
    }
}
