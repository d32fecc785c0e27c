//! The tantivy side of search: schema, analyzer, documents, and turning a search term into a
//! tantivy query.
//!
//! One document per searchable event: the text of `content.body` (`m.room.message`),
//! `content.name` (`m.room.name`) or the topic (`m.room.topic`) in its own field, plus the
//! room, sender, type, timestamp, and stream position (`count`, a fast field for "recent"
//! ordering and pagination). Each commit stores `{version, position}` as its payload: every
//! event at or below `position` is in the index (see the worker).

use std::{ops::Bound, path::Path};

use ruma::{OwnedRoomId, OwnedUserId, events::TimelineEventType};
use serde::{Deserialize, Serialize};
use tantivy::{
    Index, Term,
    directory::MmapDirectory,
    query::{
        BooleanQuery, BoostQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query, RangeQuery,
        TermQuery, TermSetQuery,
    },
    schema::{
        FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
        TextOptions,
    },
    tokenizer::{
        AsciiFoldingFilter, LowerCaser, RemoveLongFilter, TextAnalyzer, Token, TokenStream,
        Tokenizer,
    },
};

use crate::rooms::pdu::Pdu;

/// Bump when the schema, the analyzer or what is extracted from events changes: the index is
/// then rebuilt from the database on start.
pub const SCHEMA_VERSION: u32 = 1;
const ANALYZER: &str = "sparks_text";
/// Query words per request (the rest are ignored).
const MAX_CLAUSES: usize = 16;
/// Terms a prefix expands to.
const PREFIX_EXPANSIONS: u32 = 100;

#[derive(Clone, Copy)]
pub struct Fields {
    pub event_id: Field,
    pub room_id: Field,
    pub sender: Field,
    pub kind: Field,
    pub body: Field,
    pub name: Field,
    pub topic: Field,
    pub ts: Field,
    pub count: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        event_id: builder.add_text_field("event_id", STRING | STORED),
        room_id: builder.add_text_field("room_id", STRING),
        sender: builder.add_text_field("sender", STRING),
        kind: builder.add_text_field("type", STRING),
        body: builder.add_text_field("body", text.clone()),
        name: builder.add_text_field("name", text.clone()),
        topic: builder.add_text_field("topic", text),
        ts: builder.add_u64_field("origin_server_ts", FAST),
        count: builder.add_u64_field("count", INDEXED | FAST),
    };
    (builder.build(), fields)
}

/// Words split on anything not alphanumeric (each Chinese/Japanese character a word of its
/// own), lowercased, accents folded; words over 40 bytes (hashes, base64) are dropped.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(WordTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// Han ideographs, hiragana and katakana: scripts written without spaces between words, so
/// each character is indexed as a word and a query matches them as a phrase.
fn is_cjk(c: char) -> bool {
    matches!(
        u32::from(c),
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F
    )
}

/// Runs of alphanumeric characters, and single CJK characters.
#[derive(Clone, Default)]
pub struct WordTokenizer {
    token: Token,
}

pub struct WordStream<'a> {
    text: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    token: &'a mut Token,
}

impl Tokenizer for WordTokenizer {
    type TokenStream<'a> = WordStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> WordStream<'a> {
        self.token.reset();
        WordStream {
            text,
            chars: text.char_indices().peekable(),
            token: &mut self.token,
        }
    }
}

impl TokenStream for WordStream<'_> {
    fn advance(&mut self) -> bool {
        self.token.text.clear();
        self.token.position = self.token.position.wrapping_add(1);
        while let Some((from, c)) = self.chars.next() {
            if !c.is_alphanumeric() {
                continue;
            }
            let mut to = from + c.len_utf8();
            if !is_cjk(c) {
                while let Some(&(at, next)) = self.chars.peek() {
                    if !next.is_alphanumeric() || is_cjk(next) {
                        break;
                    }
                    to = at + next.len_utf8();
                    self.chars.next();
                }
            }
            self.token.offset_from = from;
            self.token.offset_to = to;
            self.token.text.push_str(&self.text[from..to]);
            return true;
        }
        false
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

pub fn tokens(text: &str) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    stream.process(&mut |token| out.push(token.text.clone()));
    out
}

/// What a commit records: the schema version and the stream position indexed up to.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    pub version: u32,
    pub position: u64,
}

/// An opened index and what its last commit covers.
pub struct Opened {
    pub index: Index,
    pub fields: Fields,
    /// Every event at or below this stream position is indexed (0: rebuild everything).
    pub position: u64,
}

/// Opens the index at `path`, or creates it (empty, position 0) when it is missing, unreadable
/// or of another schema version.
pub fn open(path: &Path) -> Result<Opened, String> {
    std::fs::create_dir_all(path).map_err(|e| {
        format!(
            "cannot create search index directory {}: {e}",
            path.display()
        )
    })?;
    let (schema, fields) = schema();
    match open_existing(path, &schema) {
        Ok(Some((index, position))) => {
            register(&index);
            return Ok(Opened {
                index,
                fields,
                position,
            });
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "search index unreadable; rebuilding it");
        }
    }
    wipe(path)?;
    let directory = MmapDirectory::open(path)
        .map_err(|e| format!("cannot open search index directory {}: {e}", path.display()))?;
    let index = Index::create(directory, schema, Default::default())
        .map_err(|e| format!("cannot create search index in {}: {e}", path.display()))?;
    register(&index);
    Ok(Opened {
        index,
        fields,
        position: 0,
    })
}

fn open_existing(path: &Path, schema: &Schema) -> tantivy::Result<Option<(Index, u64)>> {
    let directory = MmapDirectory::open(path)?;
    if !Index::exists(&directory)? {
        return Ok(None);
    }
    let index = Index::open(directory)?;
    if index.schema() != *schema {
        tracing::info!("search index schema changed; rebuilding it");
        return Ok(None);
    }
    let payload = index
        .load_metas()?
        .payload
        .and_then(|p| serde_json::from_str::<Payload>(&p).ok());
    match payload {
        Some(payload) if payload.version == SCHEMA_VERSION => Ok(Some((index, payload.position))),
        _ => {
            tracing::info!("search index version changed; rebuilding it");
            Ok(None)
        }
    }
}

fn register(index: &Index) {
    index.tokenizers().register(ANALYZER, analyzer());
}

/// Removes the files of an index (the directory belongs to the index).
fn wipe(path: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read search index directory {}: {e}", path.display()))?;
    for entry in entries.flatten() {
        let file = entry.path();
        if file.is_file() {
            std::fs::remove_file(&file)
                .map_err(|e| format!("cannot remove {}: {e}", file.display()))?;
        }
    }
    Ok(())
}

/// The searchable text of an event, if it has any.
#[derive(Clone, Debug, Default)]
pub struct Text {
    pub body: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
}

pub fn extract(pdu: &Pdu) -> Option<Text> {
    let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let text = match &pdu.kind {
        TimelineEventType::RoomMessage => Text {
            body: non_empty(pdu.content_str("body")),
            ..Text::default()
        },
        TimelineEventType::RoomName if pdu.state_key.as_deref() == Some("") => Text {
            name: non_empty(pdu.content_str("name")),
            ..Text::default()
        },
        TimelineEventType::RoomTopic if pdu.state_key.as_deref() == Some("") => Text {
            topic: non_empty(crate::directory::topic_text(&pdu.content_value())),
            ..Text::default()
        },
        _ => return None,
    };
    (text.body.is_some() || text.name.is_some() || text.topic.is_some()).then_some(text)
}

pub fn event_term(fields: &Fields, event_id: &str) -> Term {
    Term::from_field_text(fields.event_id, event_id)
}

/// One part of a search term: a word (matched as a prefix too), a quoted phrase, or either
/// negated with a leading `-`.
#[derive(Debug, PartialEq)]
pub struct Clause {
    pub tokens: Vec<String>,
    pub phrase: bool,
    pub negated: bool,
}

/// Splits a search term into clauses: `"quoted phrases"`, `-excluded` words or phrases, and
/// words. Every clause is required (words AND together).
pub fn parse(term: &str) -> Vec<Clause> {
    let mut clauses = Vec::new();
    let mut rest = term.trim_start();
    while !rest.is_empty() && clauses.len() < MAX_CLAUSES {
        let negated = rest.starts_with('-');
        if negated {
            rest = &rest[1..];
        }
        let (text, phrase, next) = if let Some(inner) = rest.strip_prefix('"') {
            match inner.find('"') {
                Some(end) => (&inner[..end], true, &inner[end + 1..]),
                None => (inner, true, ""),
            }
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (&rest[..end], false, &rest[end..])
        };
        let tokens = tokens(text);
        if !tokens.is_empty() {
            clauses.push(Clause {
                tokens,
                phrase,
                negated,
            });
        }
        rest = next.trim_start();
    }
    clauses
}

/// Restrictions on which documents may match.
pub struct Scope<'a> {
    pub rooms: &'a [OwnedRoomId],
    pub senders: Option<&'a [OwnedUserId]>,
    pub not_senders: &'a [OwnedUserId],
    /// Only events with `count` below this (pagination of "recent").
    pub below_count: Option<u64>,
}

/// The tantivy query for `clauses` over `text_fields` within `scope`, or `None` when nothing
/// can match (no positive clause, no room).
pub fn build_query(
    fields: &Fields,
    clauses: &[Clause],
    text_fields: &[Field],
    scope: &Scope<'_>,
) -> Option<Box<dyn Query>> {
    if scope.rooms.is_empty() || text_fields.is_empty() || clauses.iter().all(|c| c.negated) {
        return None;
    }
    let mut parts: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    for clause in clauses {
        let per_field: Vec<(Occur, Box<dyn Query>)> = text_fields
            .iter()
            .filter_map(|field| clause_query(*field, clause))
            .map(|q| (Occur::Should, q))
            .collect();
        if per_field.is_empty() {
            continue;
        }
        let occur = if clause.negated {
            Occur::MustNot
        } else {
            Occur::Must
        };
        parts.push((occur, Box::new(BooleanQuery::new(per_field))));
    }
    if !parts.iter().any(|(occur, _)| *occur == Occur::Must) {
        return None;
    }
    let rooms = scope
        .rooms
        .iter()
        .map(|r| Term::from_field_text(fields.room_id, r.as_str()));
    parts.push((Occur::Must, Box::new(TermSetQuery::new(rooms))));
    if let Some(senders) = scope.senders {
        if senders.is_empty() {
            return None;
        }
        let senders = senders
            .iter()
            .map(|s| Term::from_field_text(fields.sender, s.as_str()));
        parts.push((Occur::Must, Box::new(TermSetQuery::new(senders))));
    }
    if !scope.not_senders.is_empty() {
        let senders = scope
            .not_senders
            .iter()
            .map(|s| Term::from_field_text(fields.sender, s.as_str()));
        parts.push((Occur::MustNot, Box::new(TermSetQuery::new(senders))));
    }
    if let Some(below) = scope.below_count {
        parts.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_u64(fields.count, below)),
            )),
        ));
    }
    Some(Box::new(BooleanQuery::new(parts)))
}

fn clause_query(field: Field, clause: &Clause) -> Option<Box<dyn Query>> {
    let terms: Vec<Term> = clause
        .tokens
        .iter()
        .map(|t| Term::from_field_text(field, t))
        .collect();
    let exact = |term: Term| -> Box<dyn Query> {
        Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))
    };
    match terms.len() {
        0 => None,
        1 => {
            let term = terms.into_iter().next()?;
            // Exact matches rank above prefix matches; negations and one-letter words are
            // exact only (a one-letter prefix matches half the index).
            if clause.negated || clause.tokens[0].chars().count() < 2 {
                return Some(exact(term));
            }
            let mut prefix = PhrasePrefixQuery::new(vec![term.clone()]);
            prefix.set_max_expansions(PREFIX_EXPANSIONS);
            Some(Box::new(BooleanQuery::new(vec![
                (Occur::Should, Box::new(BoostQuery::new(exact(term), 2.0))),
                (Occur::Should, Box::new(prefix)),
            ])))
        }
        _ if clause.phrase || clause.negated => Some(Box::new(PhraseQuery::new(terms))),
        _ => {
            // A word the analyzer splits (`e-mail`, `foo.bar`): its parts in order, the last
            // one as a prefix.
            let mut query = PhrasePrefixQuery::new(terms);
            query.set_max_expansions(PREFIX_EXPANSIONS);
            Some(Box::new(query))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words_phrases_and_negations() {
        let clauses = parse(r#"Hello "big World" -spam -"bad thing" e-mail"#);
        assert_eq!(clauses.len(), 5);
        assert_eq!(clauses[0].tokens, vec!["hello"]);
        assert!(clauses[1].phrase && !clauses[1].negated);
        assert_eq!(clauses[1].tokens, vec!["big", "world"]);
        assert!(clauses[2].negated);
        assert!(clauses[3].negated && clauses[3].phrase);
        assert_eq!(clauses[4].tokens, vec!["e", "mail"]);
    }

    #[test]
    fn odd_input_does_not_panic() {
        for term in [
            "", "\"", "-", "--", "\"\"", "-\"", "   ", "!!!", "ü", "\"a", "a\"b\"c",
        ] {
            let clauses = parse(term);
            let (_, fields) = schema();
            let rooms = [OwnedRoomId::try_from("!r:x").expect("room id")];
            let scope = Scope {
                rooms: &rooms,
                senders: None,
                not_senders: &[],
                below_count: Some(3),
            };
            let _ = build_query(&fields, &clauses, &[fields.body, fields.name], &scope);
        }
    }

    #[test]
    fn analyzer_folds_case_and_accents() {
        assert_eq!(tokens("Café DÉJÀ-vu"), vec!["cafe", "deja", "vu"]);
        assert_eq!(
            tokens("x1 日本語テキストabc 한국어"),
            vec![
                "x1",
                "日",
                "本",
                "語",
                "テ",
                "キ",
                "ス",
                "ト",
                "abc",
                "한국어"
            ]
        );
    }
}
