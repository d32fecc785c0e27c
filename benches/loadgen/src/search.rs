//! The `search` test: seed `--search-messages` messages (a Zipf-like vocabulary of 4,096
//! made-up words, 6–18 words a message) over `--search-rooms` rooms with
//! `--search-concurrency` senders, then time `POST /search` for a fixed set of term queries,
//! one request at a time.

use std::sync::Arc;
use std::time::Instant;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Hs, Result, RunArgs, pct_ms, register_many, round3, run_concurrent};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SearchResult {
    pub messages: usize,
    pub rooms: usize,
    pub seed_concurrency: usize,
    pub seed_seconds: f64,
    pub seed_events_per_sec: f64,
    /// The very first search after seeding (Sparks commits its pending index batch here).
    pub first_search_ms: f64,
    pub samples_per_query: usize,
    pub queries: Vec<QueryResult>,
    /// Over all queries' samples.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct QueryResult {
    pub term: String,
    pub order_by: String,
    /// The server's `count` (total matches).
    pub count: u64,
    pub returned: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const SYLLABLES: [&str; 16] = [
    "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi", "gu", "ha", "je", "bu",
];
const VOCABULARY: usize = 4096;

/// The word of rank `i` (0 = most frequent): three syllables, so no word is a prefix of
/// another (servers that match prefixes, as Synapse on SQLite does, find the same messages).
fn word(i: usize) -> String {
    let i = i % VOCABULARY;
    [i >> 8, (i >> 4) & 15, i & 15]
        .iter()
        .map(|d| SYLLABLES[*d])
        .collect()
}

/// xorshift64*: deterministic, so every server gets the same messages.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Message `i`: 6–18 words, ranks drawn log-uniformly (rank r has weight ~1/r, like
/// natural language).
fn sentence(i: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1);
    let len = 6 + (rng.next() % 13) as usize;
    (0..len)
        .map(|_| {
            let rank = (VOCABULARY as f64).powf(rng.unit()) as usize;
            word(rank.saturating_sub(1))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The timed queries: one very common word, common, medium, rare, two words, and the common
/// word again newest-first.
fn queries() -> Vec<(String, &'static str)> {
    vec![
        (word(0), "rank"),
        (word(5), "rank"),
        (word(60), "rank"),
        (word(700), "rank"),
        (format!("{} {}", word(2), word(30)), "rank"),
        (word(0), "recent"),
    ]
}

async fn search(hs: &Hs, token: &str, term: &str, order_by: &str) -> Result<Value> {
    let body = json!({
        "search_categories": { "room_events": { "search_term": term, "order_by": order_by } }
    });
    let v = hs
        .call(
            Method::POST,
            "/_matrix/client/v3/search",
            Some(token),
            Some(&body),
        )
        .await?;
    Ok(v["search_categories"]["room_events"].clone())
}

pub async fn search_test(hs: &Arc<Hs>, a: &RunArgs, prefix: &str) -> Result<SearchResult> {
    let messages = a.search_messages.max(1);
    let rooms_n = a.search_rooms.max(1);
    let conc = a.search_concurrency.max(1);
    let senders = conc.min(32);
    eprintln!(
        "[{}] search: seeding {messages} messages into {rooms_n} rooms, {conc} at a time",
        a.name
    );
    let users = register_many(hs, prefix, "search", senders, a.setup_concurrency.max(8)).await?;
    let mut rooms = Vec::with_capacity(rooms_n);
    for r in 0..rooms_n {
        rooms.push(
            hs.create_room(
                &users[0],
                json!({ "preset": "public_chat", "name": format!("loadgen search {r}") }),
            )
            .await?,
        );
    }
    for u in &users[1..] {
        for room in &rooms {
            hs.join(u, room).await?;
        }
    }
    let users = Arc::new(users);
    let rooms = Arc::new(rooms);
    let (seed_secs, _) = {
        let (hs, users, rooms) = (hs.clone(), users.clone(), rooms.clone());
        let tag = prefix.to_owned();
        run_concurrent(messages, conc, move |i| {
            let (hs, users, rooms, tag) = (hs.clone(), users.clone(), rooms.clone(), tag.clone());
            async move {
                let user = &users[i % users.len()];
                let room = &rooms[(i / users.len()) % rooms.len()];
                hs.send_msg(user, room, &format!("{tag}-s{i}"), &sentence(i))
                    .await
                    .map(|_| ())
            }
        })
        .await
        .map_err(|e| format!("search seeding: {e}"))?
    };
    eprintln!(
        "[{}] search: seeded in {seed_secs:.1}s ({:.0} events/s)",
        a.name,
        messages as f64 / seed_secs
    );

    let token = users[0].token.clone();
    let started = Instant::now();
    let first = search(hs, &token, &word(0), "rank").await?;
    let first_search_ms = started.elapsed().as_secs_f64() * 1000.0;
    if first["results"].as_array().is_none_or(Vec::is_empty) {
        return Err(format!(
            "search for the most common word found nothing: {first}"
        ));
    }

    let samples = a.search_samples.max(1);
    let mut all = Vec::new();
    let mut results = Vec::new();
    for (term, order_by) in queries() {
        // One untimed request first, like a client that searched once before.
        let warm = search(hs, &token, &term, order_by).await?;
        let mut lats = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            search(hs, &token, &term, order_by).await?;
            lats.push(t.elapsed().as_micros() as u64);
        }
        lats.sort_unstable();
        all.extend_from_slice(&lats);
        let r = QueryResult {
            term: term.clone(),
            order_by: order_by.to_owned(),
            count: warm["count"].as_u64().unwrap_or(0),
            returned: warm["results"].as_array().map_or(0, Vec::len),
            p50_ms: round3(pct_ms(&lats, 50.0)),
            p99_ms: round3(pct_ms(&lats, 99.0)),
        };
        eprintln!(
            "[{}] search: {:?} ({}) count {} p50 {:.2} ms p99 {:.2} ms",
            a.name, r.term, r.order_by, r.count, r.p50_ms, r.p99_ms
        );
        results.push(r);
    }
    all.sort_unstable();
    Ok(SearchResult {
        messages,
        rooms: rooms_n,
        seed_concurrency: conc,
        seed_seconds: round3(seed_secs),
        seed_events_per_sec: round3(messages as f64 / seed_secs),
        first_search_ms: round3(first_search_ms),
        samples_per_query: samples,
        queries: results,
        p50_ms: round3(pct_ms(&all, 50.0)),
        p99_ms: round3(pct_ms(&all, 99.0)),
        max_ms: round3(pct_ms(&all, 100.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_prefix_free_and_varied() {
        let words: Vec<String> = (0..VOCABULARY).map(word).collect();
        let unique: std::collections::HashSet<&String> = words.iter().collect();
        assert_eq!(unique.len(), VOCABULARY);
        assert!(words.iter().all(|w| w.len() == 6));
        let text: Vec<String> = (0..2000).map(sentence).collect();
        let common = text.iter().filter(|s| s.contains(&word(0))).count();
        let rare = text.iter().filter(|s| s.contains(&word(700))).count();
        assert!(
            common > 200 && rare < common / 10,
            "common {common}, rare {rare}"
        );
        assert_eq!(sentence(7), sentence(7));
    }
}
