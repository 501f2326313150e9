//! Questions one node of a JetStream spool asks the other nodes, over core NATS (not the stream): herald's status
//! lookups, which a node answers from its own status book, go through it (docs/scale-out.md).
//!
//! It owns the question subject of a stream ([`subject`]), the subscription every node holds on it (a plain one,
//! not a queue group: every node gets every question), the answering of each question with the bytes a callback
//! of herald's gives, and the asking: one publish with a fresh inbox as its reply subject, then the answers
//! gathered until as many came as were expected or the wait ran out. It carries opaque bytes; what a question and
//! an answer mean is herald's.
//!
//! A node never answers its own questions: each question carries the asking node's name in a header
//! ([`ASKED_BY`]), and each answer the answering node's ([`ANSWERED_BY`]); a message on the inbox without the
//! latter (a server status) is not an answer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;

use crate::jetstream::JetStreamSpool;

/// The largest question a node answers (and asks): a question above it is not answered.
pub const MAX_QUESTION_BYTES: usize = 64 * 1024;

/// Room left in an answer's NATS message for its headers.
const ANSWER_HEADER_ROOM: usize = 4096;

/// Questions one node answers at once; the next ones wait for room.
const ANSWERING_AT_ONCE: usize = 8;

/// Header of a question: the asking node's name.
pub const ASKED_BY: &str = "Herald-Asked-By";
/// Header of an answer: the answering node's name.
pub const ANSWERED_BY: &str = "Herald-Answered-By";

/// The subject of the questions between the nodes of `stream`: `_herald.lookup.<stream>`. No stream of herald's
/// captures it (a question stored in a stream would be answered by the stream's publish ack, and kept): the spool's
/// stream takes `<stream>.notifications`, two tokens where this one has three and another first token, and its
/// key-value buckets take `$KV.<bucket>.>`.
pub fn subject(stream: &str) -> String {
    format!("_herald.lookup.{stream}")
}

/// Why a question got no answers.
#[derive(Debug, thiserror::Error)]
pub enum PeerLookupError {
    #[error("a question of {0} bytes is larger than the {MAX_QUESTION_BYTES} bytes a node answers")]
    TooLarge(usize),
    #[error("not connected to NATS")]
    NotConnected,
    #[error("NATS: {0}")]
    Nats(String),
}

/// This node's end of the questions between the nodes of its JetStream spool: it answers the others' questions
/// (while it exists) and asks its own.
pub struct PeerLookup {
    client: async_nats::Client,
    subject: String,
    node: String,
    spool: Weak<JetStreamSpool>,
    subscribed: Arc<AtomicBool>,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for PeerLookup {
    fn drop(&mut self) {
        self.serving.abort();
        if let Some(spool) = self.spool.upgrade() {
            spool.set_serves_lookups(false);
        }
    }
}

impl PeerLookup {
    /// Subscribes to the questions of `spool`'s stream (in the background: NATS may be unreachable now) and
    /// answers each question from another node with `answer(question, limit)`, run off the async threads (it may
    /// read from disk); `limit` is the most bytes the answer may hold (what the NATS server carries in one message,
    /// less room for headers). Needs a Tokio runtime.
    pub fn start<F>(spool: &Arc<JetStreamSpool>, answer: F) -> PeerLookup
    where
        F: Fn(&[u8], usize) -> Vec<u8> + Send + Sync + 'static,
    {
        let client = spool.context().client();
        let subject = subject(spool.stream_name());
        let node = spool.node_name().to_owned();
        let subscribed = Arc::new(AtomicBool::new(false));
        let serving = tokio::spawn(serve(
            client.clone(),
            subject.clone(),
            node.clone(),
            Arc::new(answer),
            subscribed.clone(),
            Arc::downgrade(spool),
        ));
        PeerLookup {
            client,
            subject,
            node,
            spool: Arc::downgrade(spool),
            subscribed,
            serving,
        }
    }

    /// The subject questions go to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Whether this node's subscription is in place at the server (it answers questions).
    pub fn serving(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// The other nodes with a live heartbeat that says they answer lookups (the spool's [`crate::ClusterView`]):
    /// the answers a question can expect. A node of an older herald, or one that keeps no status book, is not
    /// waited for. 0 while NATS is not reachable.
    pub fn live_peers(&self) -> usize {
        let Some(spool) = self.spool.upgrade() else {
            return 0;
        };
        if !spool.connected() {
            return 0;
        }
        let view = spool.cluster_view();
        view.nodes
            .iter()
            .filter(|n| n.node != view.this_node && n.lookups)
            .count()
    }

    /// Asks the other nodes `question` and returns their answers, once `expect` nodes answered or `within` passed
    /// (what came by then). Asks nothing when `expect` is 0.
    pub async fn ask(
        &self,
        question: Vec<u8>,
        expect: usize,
        within: Duration,
    ) -> Result<Vec<Vec<u8>>, PeerLookupError> {
        if question.len() > MAX_QUESTION_BYTES {
            return Err(PeerLookupError::TooLarge(question.len()));
        }
        if expect == 0 {
            return Ok(Vec::new());
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(PeerLookupError::NotConnected);
        }
        let mut answers = Vec::new();
        let mut answered = HashSet::new();
        // The whole exchange is bounded: the client's own queue may be full (a connection going down).
        let exchange = async {
            let inbox = self.client.new_inbox();
            let mut replies = self
                .client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| PeerLookupError::Nats(e.to_string()))?;
            let mut headers = HeaderMap::new();
            headers.insert(ASKED_BY, self.node.as_str());
            self.client
                .publish_with_reply_and_headers(
                    self.subject.clone(),
                    inbox,
                    headers,
                    question.into(),
                )
                .await
                .map_err(|e| PeerLookupError::Nats(e.to_string()))?;
            while answered.len() < expect {
                let Some(reply) = replies.next().await else {
                    break;
                };
                if let Some(by) = header(&reply, ANSWERED_BY)
                    && by != self.node
                    && answered.insert(by.to_owned())
                {
                    answers.push(reply.payload.to_vec());
                }
            }
            Ok::<(), PeerLookupError>(())
        };
        if let Ok(Err(e)) = tokio::time::timeout(within, exchange).await {
            return Err(e);
        }
        Ok(answers)
    }
}

fn header<'m>(message: &'m async_nats::Message, name: &str) -> Option<&'m str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// Answers the questions of the other nodes until the subscription ends (the client closed) or the task is
/// aborted ([`PeerLookup`] dropped). The client resubscribes by itself after a reconnection.
async fn serve<F>(
    client: async_nats::Client,
    subject: String,
    node: String,
    answer: Arc<F>,
    subscribed: Arc<AtomicBool>,
    spool: Weak<JetStreamSpool>,
) where
    F: Fn(&[u8], usize) -> Vec<u8> + Send + Sync + 'static,
{
    let mut questions = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "cannot subscribe to {subject}: the other nodes' status lookups get no answer from this one: {e}"
            );
            return;
        }
    };
    // The subscription is at the server once the server answered a ping sent after it.
    if client.flush().await.is_ok() {
        subscribed.store(true, Ordering::Relaxed);
    }
    // The heartbeat says so from now on: the other nodes count this one among those they wait for.
    if let Some(spool) = spool.upgrade() {
        spool.set_serves_lookups(true);
    }
    let room = Arc::new(tokio::sync::Semaphore::new(ANSWERING_AT_ONCE));
    while let Some(question) = questions.next().await {
        let Some(reply) = question.reply.clone() else {
            continue;
        };
        if header(&question, ASKED_BY) == Some(node.as_str()) {
            continue;
        }
        if question.payload.len() > MAX_QUESTION_BYTES {
            tracing::debug!(
                "a question of {} bytes on {subject}: larger than {MAX_QUESTION_BYTES}, not answered",
                question.payload.len()
            );
            continue;
        }
        let Ok(permit) = room.clone().acquire_owned().await else {
            return;
        };
        let answer = answer.clone();
        let client = client.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let payload = question.payload;
            let limit = match client.server_info().max_payload {
                0 => 1 << 20,
                n => n,
            }
            .saturating_sub(ANSWER_HEADER_ROOM);
            let Ok(bytes) = tokio::task::spawn_blocking(move || answer(&payload, limit)).await
            else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert(ANSWERED_BY, node.as_str());
            if let Err(e) = client
                .publish_with_headers(reply, headers, bytes.into())
                .await
            {
                tracing::debug!("answering another node's question: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::tests::{connected, nats, wait_for};
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// A node of stream `stream` at `url` that answers `<its name>:<question>`, and how many questions it answered.
    async fn node(url: &str, stream: &str) -> (Arc<JetStreamSpool>, PeerLookup, Arc<AtomicUsize>) {
        let (spool, _deliveries) = connected(url.to_owned(), stream).await;
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let name = spool.node_name().to_owned();
        let lookup = PeerLookup::start(&spool, move |q, _limit| {
            count.fetch_add(1, Ordering::Relaxed);
            [name.as_bytes(), b":", q].concat()
        });
        wait_for("the subscription", Duration::from_secs(20), async || {
            lookup.serving()
        })
        .await;
        (spool, lookup, asked)
    }

    /// A question gets one answer from each other node (as soon as they came, long before the wait's end), none
    /// from the asking node, and lands in no stream. A question above the size bound is not answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_question_gets_the_answer_of_every_other_node_and_none_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(node(&url, "lookup").await);
        }
        wait_for(
            "every node sees the two others",
            Duration::from_secs(20),
            async || nodes.iter().all(|(_, l, _)| l.live_peers() == 2),
        )
        .await;

        let (asker, lookup, asked) = &nodes[0];
        let started = Instant::now();
        let mut answers = lookup
            .ask(
                b"which?".to_vec(),
                lookup.live_peers(),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the ask waited past the answers: {:?}",
            started.elapsed()
        );
        answers.sort();
        let mut expected: Vec<Vec<u8>> = nodes[1..]
            .iter()
            .map(|(s, _, _)| format!("{}:which?", s.node_name()).into_bytes())
            .collect();
        expected.sort();
        assert_eq!(answers, expected);
        assert_eq!(asked.load(Ordering::Relaxed), 0, "a node answered itself");
        let mut stream = asker.context().get_stream("lookup").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 0);

        // From a client that is no node: answered, unless it is too large.
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let answer = client
            .request(lookup.subject().to_owned(), "hello".into())
            .await
            .unwrap();
        assert!(answer.payload.ends_with(b":hello"), "{answer:?}");
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply(
                lookup.subject().to_owned(),
                inbox,
                vec![b'x'; MAX_QUESTION_BYTES + 1].into(),
            )
            .await
            .unwrap();
        let late = tokio::time::timeout(Duration::from_millis(500), replies.next()).await;
        assert!(late.is_err(), "a question too large was answered: {late:?}");
        assert!(matches!(
            lookup
                .ask(vec![0; MAX_QUESTION_BYTES + 1], 2, Duration::from_secs(1))
                .await,
            Err(PeerLookupError::TooLarge(_))
        ));
    }

    /// A node alone gets no answer, not even its own: its question ends when the wait runs out. With no answer
    /// expected it asks nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_question_no_other_node_answers_ends_when_the_wait_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (_spool, lookup, asked) = node(&url, "alone").await;
        let wait = Duration::from_millis(300);
        let started = Instant::now();
        let answers = lookup.ask(b"anyone?".to_vec(), 1, wait).await.unwrap();
        let took = started.elapsed();
        assert!(answers.is_empty(), "{answers:?}");
        assert!(
            took >= wait && took < wait + Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(asked.load(Ordering::Relaxed), 0, "the node answered itself");
        let started = Instant::now();
        let answers = lookup
            .ask(b"anyone?".to_vec(), 0, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(answers.is_empty() && started.elapsed() < Duration::from_secs(1));
    }
}
