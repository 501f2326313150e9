//! Status lookups across the nodes of a JetStream spool (docs/scale-out.md): each node's status book knows the
//! notifications that node delivered, so an id this node's book holds no state for is asked of the other nodes:
//! one it does not know, and one it takes for expired (its prune mark for the id's run can pass ids that other
//! nodes delivered later or still hold, see [`super::api`]).
//!
//! It owns the questions and answers of those lookups (JSON carried by [`PeerLookup`]): a question is
//! `{"ids": ["01/2A-12345-0000002A", …]}`, an answer `{"found": [status, …], "in_stream": [status, …], "expired":
//! [id, …]}` with the ids the answering node's book holds a state for, and those it takes for expired (their
//! outcomes pruned there), from that book only (a node never asks further, so questions cannot loop); and the
//! merging of the answers ([`merge`]): a state any node holds wins, and an id no node holds a state for is expired
//! when a node says so (the node that delivered a notification is the one that prunes its outcome), unknown
//! otherwise. A node asks at most [`PEER_WAIT`] per lookup; when no answer comes (NATS unreachable, nodes gone),
//! the lookup answers as the book alone does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use herald_spool::{JetStreamSpool, OutcomeKey, PeerLookup};
use serde::{Deserialize, Serialize};

use super::api::MAX_BATCH;
use super::book::{Found, Status, StatusBook};
use super::parse_id;

/// How long a lookup waits for the other nodes' answers at most: one exchange over NATS, normally a few
/// milliseconds; a node that died less than the heartbeats' 15 seconds ago is still counted, and its answer is
/// waited for until then.
pub const PEER_WAIT: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct Question {
    ids: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    /// The states the answering node's book holds.
    found: Vec<Status>,
    /// What the answering node remembers having put in the stream ([`Found::InStream`]): provisional, below a state
    /// of `found` that says as much (a node of an older herald sends none).
    #[serde(default)]
    in_stream: Vec<Status>,
    /// The ids asked that the answering node's book takes for expired ([`Found::Expired`]; a node of an older
    /// herald sends none).
    #[serde(default)]
    expired: Vec<String>,
}

/// What the other nodes said of the ids asked ([`ask_all`]).
#[derive(Debug, Default)]
pub struct PeerAnswers {
    /// The states they hold, merged ([`merge`]).
    pub found: HashMap<OutcomeKey, Status>,
    /// The ids none of them holds a state for and one at least takes for expired: the outcome was kept for
    /// `outcome_retention` and is gone.
    pub expired: HashSet<OutcomeKey>,
}

/// Answers the other nodes' status questions from `book`, for as long as the returned handle lives (it asks them
/// too: [`ask`]).
pub fn serve(spool: &Arc<JetStreamSpool>, book: Arc<StatusBook>) -> Arc<PeerLookup> {
    Arc::new(PeerLookup::start(spool, move |question, limit| {
        answer(&book, question, limit)
    }))
}

/// The answer to another node's question: the states `book` holds for the ids asked (at most [`MAX_BATCH`]; a
/// question that cannot be read gets an empty answer, so the asker does not wait for it), and the ids it takes for
/// expired, in at most `limit` bytes (the states and ids that would not fit are left out: the asker takes them for
/// unknown). It reads the outcome store for each id the book does not follow in memory, so it runs on the blocking
/// pool, never on an async thread: [`PeerLookup`] calls it there.
pub fn answer(book: &StatusBook, question: &[u8], limit: usize) -> Vec<u8> {
    let ids = serde_json::from_slice::<Question>(question)
        .map(|q| q.ids)
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut in_stream = Vec::new();
    let mut expired = Vec::new();
    // The closing of the lists, and the names of the second and third.
    let mut size = "{\"found\":[],\"in_stream\":[],\"expired\":[]}".len();
    for (id, key) in ids
        .iter()
        .take(MAX_BATCH)
        .filter_map(|id| parse_id(id).map(|key| (id, key)))
    {
        let (list, json) = match book.lookup(&key) {
            Ok(Found::Status(status)) => (&mut found, serde_json::to_vec(&*status)),
            Ok(Found::InStream(status)) => (&mut in_stream, serde_json::to_vec(&*status)),
            Ok(Found::Expired) => (&mut expired, serde_json::to_vec(id)),
            _ => continue,
        };
        let Ok(json) = json else {
            continue;
        };
        if size + json.len() + 1 > limit {
            tracing::debug!("a status answer reached {limit} bytes; the rest is left out");
            break;
        }
        size += json.len() + 1;
        list.push(json);
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"found\":[");
    out.extend_from_slice(&found.join(&b','));
    out.extend_from_slice(b"],\"in_stream\":[");
    out.extend_from_slice(&in_stream.join(&b','));
    out.extend_from_slice(b"],\"expired\":[");
    out.extend_from_slice(&expired.join(&b','));
    out.extend_from_slice(b"]}");
    out
}

/// The states the other nodes hold for `ids` (printed ids this node's book holds no state for), by key ([`ask_all`]
/// without the expired ones).
pub async fn ask(peers: &PeerLookup, ids: &[String]) -> HashMap<OutcomeKey, Status> {
    ask_all(peers, ids).await.found
}

/// What the other nodes know of `ids` (printed ids this node's book holds no state for): the states they hold, by
/// key, and the ids they take for expired; empty when no other node is live, when NATS does not answer, or when
/// nobody knows them.
pub async fn ask_all(peers: &PeerLookup, ids: &[String]) -> PeerAnswers {
    let asked: HashSet<OutcomeKey> = ids.iter().filter_map(|id| parse_id(id)).collect();
    let expect = peers.live_peers();
    if asked.is_empty() || expect == 0 {
        return PeerAnswers::default();
    }
    let Ok(question) = serde_json::to_vec(&Question { ids: ids.to_vec() }) else {
        return PeerAnswers::default();
    };
    match peers.ask(question, expect, PEER_WAIT).await {
        Ok(answers) => gather(&answers, &asked),
        Err(e) => {
            tracing::debug!("asking the other nodes for {} ids: {e}", ids.len());
            PeerAnswers::default()
        }
    }
}

/// The states of the `asked` keys in `answers`, merged ([`merge`]), and those of them no answer holds a state for
/// and one takes for expired; an answer that cannot be read, and a state or id not asked, are left out.
fn gather(answers: &[Vec<u8>], asked: &HashSet<OutcomeKey>) -> PeerAnswers {
    let mut found = HashMap::new();
    let mut in_stream = HashMap::new();
    let mut expired = HashSet::new();
    for answer in answers {
        let Ok(answer) = serde_json::from_slice::<Answer>(answer) else {
            continue;
        };
        expired.extend(
            answer
                .expired
                .iter()
                .filter_map(|id| parse_id(id))
                .filter(|k| asked.contains(k)),
        );
        for (list, into) in [
            (answer.found, &mut found),
            (answer.in_stream, &mut in_stream),
        ] {
            for status in list {
                if let Some(key) = parse_id(&status.id).filter(|k| asked.contains(k)) {
                    merge(into, key, status);
                }
            }
        }
    }
    // What a node remembers of the stream counts only where it says more than what the books hold.
    for (key, status) in in_stream {
        if found
            .get(&key)
            .is_none_or(|kept| rank(&status) > rank(kept))
        {
            found.insert(key, status);
        }
    }
    expired.retain(|key| !found.contains_key(key));
    PeerAnswers { found, expired }
}

/// Puts `status` in `found` unless the state there says more: a final state (delivered, failed) wins over
/// `in_flight`, which wins over `queued`, and `delivered` over `failed` (two nodes answer for one id when the stream
/// gave it to a second node while the first still worked on it); between equal states, the one with more attempts,
/// else the first.
pub fn merge(found: &mut HashMap<OutcomeKey, Status>, key: OutcomeKey, status: Status) {
    match found.get(&key) {
        Some(kept) if rank(kept) >= rank(&status) => {}
        _ => {
            found.insert(key, status);
        }
    }
}

/// How much a state says, for [`merge`] and [`settle`].
fn rank(s: &Status) -> (u8, u32) {
    let state = match s.state.as_str() {
        "delivered" => 3,
        "failed" => 2,
        "in_flight" => 1,
        _ => 0,
    };
    (state, s.attempts)
}

/// The answer for a notification this node put in the stream (`local`, what it remembers: [`Found::InStream`])
/// once the other nodes answered (`peer`): theirs unless this node's says more (more attempts than a node that
/// pulled it before this node gave it back).
pub fn settle(local: Status, peer: Option<&Status>) -> Status {
    match peer {
        Some(p) if rank(p) >= rank(&local) => p.clone(),
        _ => local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes::OutcomeListener;
    use crate::outcomes::fixtures::{delivered, notification};
    use crate::outcomes::key_of;
    use crate::queue::message::IdGenerator;
    use herald_spool::OutcomeStore;

    fn status(id: &str, state: &str, attempts: u32) -> Status {
        Status {
            id: id.to_owned(),
            state: state.to_owned(),
            domain: "d.example".into(),
            token: "ab".into(),
            accepted_at: 1,
            attempts,
            last_reason: None,
            next_attempt_at: None,
            finished_at: None,
            apns_id: None,
            reason: None,
            status: None,
            invalid_token: false,
            apns_unique_id: None,
            unregistered_at_ms: None,
        }
    }

    const ID: &str = "01/2A-12345-0000002A";

    /// The state kept after merging `states` in this order.
    fn merged(states: &[(&str, u32)]) -> (String, u32) {
        let key = parse_id(ID).unwrap();
        let mut found = HashMap::new();
        for (state, attempts) in states {
            merge(&mut found, key, status(ID, state, *attempts));
        }
        let s = &found[&key];
        (s.state.clone(), s.attempts)
    }

    #[test]
    fn a_final_state_wins_over_a_queued_or_in_flight_one_in_any_order() {
        for fin in ["delivered", "failed"] {
            for other in ["queued", "in_flight"] {
                assert_eq!(merged(&[(other, 3), (fin, 0)]), (fin.into(), 0));
                assert_eq!(merged(&[(fin, 0), (other, 3)]), (fin.into(), 0));
            }
        }
        assert_eq!(merged(&[("queued", 0), ("in_flight", 0)]).0, "in_flight");
        assert_eq!(merged(&[("in_flight", 0), ("queued", 5)]).0, "in_flight");
        assert_eq!(
            merged(&[("queued", 1), ("queued", 2)]),
            ("queued".into(), 2)
        );
        assert_eq!(merged(&[("delivered", 0), ("failed", 2)]).0, "delivered");
        assert_eq!(merged(&[("failed", 2), ("delivered", 0)]).0, "delivered");
    }

    #[test]
    fn answers_keep_the_ids_asked_and_skip_what_cannot_be_read() {
        let other = "01/2A-12345-0000002B";
        let asked: HashSet<OutcomeKey> = [parse_id(ID).unwrap()].into();
        let answers = vec![
            serde_json::to_vec(&Answer {
                found: vec![status(ID, "queued", 1), status(other, "delivered", 0)],
                in_stream: vec![],
                expired: vec![],
            })
            .unwrap(),
            b"not json".to_vec(),
            // A node of an older herald: no `in_stream`.
            br#"{"found":[{"id":"01/2A-12345-0000002A","state":"delivered","domain":"d.example","token":"ab","accepted_at":1,"attempts":1}]}"#.to_vec(),
        ];
        let found = gather(&answers, &asked).found;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[&parse_id(ID).unwrap()].state, "delivered");
    }

    /// What a node remembers having put in the stream is provisional: a state a book holds wins over it unless it
    /// says more (a retry given back after that node's attempt), in any order of the answers.
    #[test]
    fn a_book_state_wins_over_what_a_node_remembers_of_the_stream_unless_it_says_more() {
        let asked: HashSet<OutcomeKey> = [parse_id(ID).unwrap()].into();
        let answer = |found: Vec<Status>, in_stream: Vec<Status>| {
            serde_json::to_vec(&Answer {
                found,
                in_stream,
                expired: vec![],
            })
            .unwrap()
        };
        let mut remembered = status(ID, "queued", 1);
        remembered.next_attempt_at = Some(1);
        for (book, expected) in [
            (status(ID, "queued", 1), None),
            (status(ID, "in_flight", 1), None),
            (status(ID, "queued", 0), Some(1)),
        ] {
            let answers = [
                answer(vec![], vec![remembered.clone()]),
                answer(vec![book.clone()], vec![]),
            ];
            for order in [answers.to_vec(), answers.iter().rev().cloned().collect()] {
                let found = gather(&order, &asked).found;
                let s = &found[&parse_id(ID).unwrap()];
                assert_eq!(
                    (s.state.as_str(), s.next_attempt_at),
                    (book.state.as_str(), expected).clone(),
                    "{book:?}"
                );
            }
        }
    }

    /// A node answers with what its own book holds: not the ids it does not know, nor text that is no id.
    #[tokio::test]
    async fn a_node_answers_from_its_own_book_only_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let ids = IdGenerator::new(0x2A);
        let queued = notification(ids.next(), "peer.example", 1);
        book.queued(&queued, 0);
        let done = notification(ids.next(), "peer.example", 2);
        book.queued(&done, 0);
        book.outcome(&delivered(&done));
        let unknown = ids.next();
        let question = serde_json::to_vec(&Question {
            ids: vec![
                queued.id.to_string(),
                "not an id".into(),
                unknown.to_string(),
                done.id.to_string(),
            ],
        })
        .unwrap();
        let answered: Answer = serde_json::from_slice(&answer(&book, &question, 1 << 20)).unwrap();
        let states: Vec<(String, String)> = answered
            .found
            .into_iter()
            .map(|s| (s.id, s.state))
            .collect();
        assert_eq!(
            states,
            vec![
                (queued.id.to_string(), "queued".to_owned()),
                (done.id.to_string(), "delivered".to_owned()),
            ]
        );
        let empty: Answer = serde_json::from_slice(&answer(&book, b"{", 1 << 20)).unwrap();
        assert!(empty.found.is_empty());
        // Within a limit that holds one state: the first, and still JSON.
        let whole = answer(&book, &question, 1 << 20);
        let cut: Answer =
            serde_json::from_slice(&answer(&book, &question, whole.len() - 10)).unwrap();
        assert_eq!(cut.found.len(), 1);
        assert_eq!(cut.found[0].id, queued.id.to_string());
    }

    /// A node whose book pruned an outcome (it delivered the notification: docs/api.md "Status of a notification",
    /// kept for `outcome_retention`) says so when asked, and the asking node answers expired instead of unknown; a
    /// state any node holds wins over another node's expired, in any order of the answers.
    #[tokio::test]
    async fn an_id_another_node_pruned_is_expired_unless_a_node_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(30), 1_000_000);
        let ids = IdGenerator::new(0x2A);
        let pruned = notification(ids.next(), "peer.example", 1);
        book.queued(&pruned, 0);
        book.outcome(&delivered(&pruned));
        assert!(book.flush(Duration::from_secs(30)).await);
        assert_eq!(book.store().prune(u64::MAX, u64::MAX).unwrap(), 1);
        let held = notification(ids.next(), "peer.example", 2);
        book.queued(&held, 0);
        let unknown = IdGenerator::new(0x2B).next();
        let asked_ids = [held.id, pruned.id, unknown].map(|id| id.to_string());
        let question = serde_json::to_vec(&Question {
            ids: asked_ids.to_vec(),
        })
        .unwrap();
        let said = answer(&book, &question, 1 << 20);
        let answered: Answer = serde_json::from_slice(&said).unwrap();
        assert_eq!(answered.expired, vec![pruned.id.to_string()]);
        assert_eq!(answered.found.len(), 1);
        // Within a limit that leaves no room for the expired id: left out, still JSON.
        let cut: Answer =
            serde_json::from_slice(&answer(&book, &question, said.len() - 5)).unwrap();
        assert!(cut.expired.is_empty() && cut.found.len() == 1);

        let asked: HashSet<OutcomeKey> = asked_ids.iter().filter_map(|id| parse_id(id)).collect();
        let gathered = gather(std::slice::from_ref(&said), &asked);
        assert_eq!(gathered.expired, [key_of(pruned.id)].into(), "{gathered:?}");
        assert!(gathered.found.contains_key(&key_of(held.id)));
        // Another node holds the pruned id (an older herald's answer too, without `expired`): its state wins.
        let holder = br#"{"found":[{"id":"ID","state":"queued","domain":"d.example","token":"ab","accepted_at":1,"attempts":0}]}"#
            .to_vec();
        let holder = String::from_utf8(holder)
            .unwrap()
            .replace("ID", &pruned.id.to_string())
            .into_bytes();
        for answers in [
            vec![said.clone(), holder.clone()],
            vec![holder.clone(), said.clone()],
        ] {
            let gathered = gather(&answers, &asked);
            assert!(gathered.expired.is_empty(), "{gathered:?}");
            assert_eq!(gathered.found[&key_of(pruned.id)].state, "queued");
        }
        // An expired id not asked is left out.
        let only_held: HashSet<OutcomeKey> = [key_of(held.id)].into();
        assert!(gather(&[said], &only_held).expired.is_empty());
    }
}
