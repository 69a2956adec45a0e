//! The signal collection: where users insert signals (`sluice snapshot` inserts them too) and where the
//! chunk reader inserts its watermarks, since MongoDB has no logical decoding messages (Debezium's MongoDB
//! connector does the same). The stream captures it; its documents are read as instructions, never
//! published. The shapes are pure, so each is a unit test.
//!
//! A signal is `{_id, type, data}` as Debezium writes it: `data` a JSON text, or an embedded document. A
//! watermark is `{_id, type: "snapshot-window-open" | "snapshot-window-close", data: <Watermark::encode>}`.

use mongodb::bson::{doc, Bson, Document};
use sluice_core::incremental::Watermark;
use sluice_core::signal::Signal;

use crate::connection;
use crate::error::MongodbError;
use sluice_core::config::redact_secrets;

/// The `type` of a low watermark (Debezium's name for the document that opens a chunk's window).
pub const WINDOW_OPEN: &str = "snapshot-window-open";
/// The `type` of a high watermark.
pub const WINDOW_CLOSE: &str = "snapshot-window-close";

/// What a document inserted into the signal collection is.
#[derive(Debug, PartialEq)]
pub enum SignalDocument {
    /// A chunk's watermark (this run's, an earlier run's, or another sluice's).
    Watermark(Watermark),
    /// A window document sluice did not write (another tool's): nothing to do.
    ForeignWindow,
    /// A signal, its `data` as JSON text.
    Signal {
        id: Option<String>,
        kind: String,
        data: Option<String>,
    },
    /// Not a signal document: the reason, for the dead letter.
    Malformed(String),
}

/// Reads a document of the signal collection.
pub fn classify(document: &Document) -> SignalDocument {
    let kind = match document.get("type") {
        Some(Bson::String(kind)) => kind.trim().to_owned(),
        Some(other) => {
            return SignalDocument::Malformed(format!(
                "`type` must be a string, found {:?}: signal documents are {{_id, type, data}}",
                other.element_type()
            ))
        }
        None => {
            return SignalDocument::Malformed(
                "the signal has no `type`: signal documents are {_id, type, data}, as in \
                 {\"type\": \"execute-snapshot\", \"data\": \"{\\\"data-collections\\\": [\\\"shop.orders\\\"]}\"}"
                    .into(),
            )
        }
    };
    let data = match document.get("data") {
        None | Some(Bson::Null) => None,
        Some(Bson::String(text)) => Some(text.clone()),
        // Written by hand in the shell, the data is often a document rather than its JSON text.
        Some(Bson::Document(data)) => Some(
            Bson::Document(data.clone())
                .into_relaxed_extjson()
                .to_string(),
        ),
        Some(other) => {
            return SignalDocument::Malformed(format!(
                "`data` must be a JSON text or a document, found {:?}",
                other.element_type()
            ))
        }
    };
    if kind == WINDOW_OPEN || kind == WINDOW_CLOSE {
        let high = kind == WINDOW_CLOSE;
        return match data.as_deref().and_then(Watermark::decode) {
            Some(mark) if mark.high == high => SignalDocument::Watermark(mark),
            _ => SignalDocument::ForeignWindow,
        };
    }
    let id = document.get("_id").map(|id| match id {
        Bson::String(text) => text.clone(),
        other => other.clone().into_relaxed_extjson().to_string(),
    });
    SignalDocument::Signal { id, kind, data }
}

/// The document that carries `mark` into the stream.
pub fn watermark_document(mark: &Watermark) -> Document {
    let data = mark.encode();
    let kind = if mark.high { WINDOW_CLOSE } else { WINDOW_OPEN };
    doc! { "_id": format!("sluice-watermark:{data}"), "type": kind, "data": data }
}

/// `signal` as Debezium writes it into the signal collection, under `id`.
pub fn signal_document(id: &str, signal: &Signal) -> Document {
    let (kind, data) = signal.to_columns();
    let mut document = doc! { "_id": id, "type": kind };
    if let Some(data) = data {
        document.insert("data", data);
    }
    document
}

/// An `additional-conditions` filter: a JSON filter document, as relaxed (or canonical) Extended JSON.
pub fn parse_filter(text: &str) -> Result<Document, String> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|err| {
        format!("the filter `{text}` is not JSON ({err}): write a filter document, for example {{\"status\": \"new\"}}")
    })?;
    match Bson::try_from(json) {
        Ok(Bson::Document(filter)) => Ok(filter),
        Ok(other) => Err(format!(
            "the filter `{text}` is {:?}, not a document: write a filter document, for example {{\"status\": \"new\"}}",
            other.element_type()
        )),
        Err(err) => Err(format!("the filter `{text}` is not Extended JSON: {err}")),
    }
}

/// Inserts `signal` into `collection` (`db.collection`) on the server at `url` (for `sluice snapshot`);
/// returns its id.
pub async fn write(url: &str, collection: &str, signal: &Signal) -> Result<String, MongodbError> {
    let (database, name) = collection.split_once('.').ok_or_else(|| {
        MongodbError::Signal(format!(
            "`{collection}` is not `db.collection`: set `signal_collection` to e.g. `shop.sluice_signals`"
        ))
    })?;
    let client = connection::client(url).await?;
    let id = format!("sluice-{}", sluice_core::positions::now_us());
    client
        .database(database)
        .collection::<Document>(name)
        .insert_one(signal_document(&id, signal))
        .await
        .map_err(|err| {
            MongodbError::Signal(format!(
                "cannot insert the signal into {collection}: {} (the user in source.url needs the insert privilege on it)",
                redact_secrets(&err.to_string())
            ))
        })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(high: bool) -> Watermark {
        Watermark {
            run: "mongo-7-1700".into(),
            reading: 2,
            number: 5,
            high,
        }
    }

    #[test]
    fn watermark_documents_are_recognised_as_watermarks() {
        for high in [false, true] {
            let document = watermark_document(&mark(high));
            assert_eq!(
                document.get_str("type"),
                Ok(if high { WINDOW_CLOSE } else { WINDOW_OPEN })
            );
            assert_eq!(classify(&document), SignalDocument::Watermark(mark(high)));
        }
        // The _ids of a chunk's two watermarks differ, and differ from the next chunk's.
        let next = Watermark {
            number: 6,
            ..mark(false)
        };
        let ids: std::collections::HashSet<String> = [mark(false), mark(true), next]
            .iter()
            .map(|m| watermark_document(m).get_str("_id").unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn window_documents_sluice_did_not_write_are_foreign() {
        // Debezium's own window document, and a close document carrying an open mark.
        let debezium =
            doc! { "_id": "x", "type": WINDOW_OPEN, "data": "{\"openWindowTimestamp\": 1}" };
        assert_eq!(classify(&debezium), SignalDocument::ForeignWindow);
        let crossed = doc! { "_id": "y", "type": WINDOW_CLOSE, "data": mark(false).encode() };
        assert_eq!(classify(&crossed), SignalDocument::ForeignWindow);
        let empty = doc! { "_id": "z", "type": WINDOW_CLOSE };
        assert_eq!(classify(&empty), SignalDocument::ForeignWindow);
    }

    #[test]
    fn signals_with_data_as_text_or_as_a_document() {
        let signal = Signal::ExecuteSnapshot {
            collections: vec!["shop.orders".into()],
            conditions: vec![],
        };
        let written = signal_document("sluice-1", &signal);
        let SignalDocument::Signal { id, kind, data } = classify(&written) else {
            panic!("not a signal: {written}")
        };
        assert_eq!(id.as_deref(), Some("sluice-1"));
        assert_eq!(Signal::parse(&kind, data.as_deref()), Ok(signal.clone()));
        // As a person writes it in the shell: data embedded, an ObjectId for _id.
        let by_hand = doc! {
            "_id": mongodb::bson::oid::ObjectId::parse_str("65f0c0ffee0000000000cafe").unwrap(),
            "type": "execute-snapshot",
            "data": { "data-collections": ["shop.orders"], "type": "incremental" },
        };
        let SignalDocument::Signal { id, kind, data } = classify(&by_hand) else {
            panic!("not a signal")
        };
        assert_eq!(
            id.as_deref(),
            Some(r#"{"$oid":"65f0c0ffee0000000000cafe"}"#)
        );
        assert_eq!(Signal::parse(&kind, data.as_deref()), Ok(signal));
        // No data at all is fine for signals that take none.
        let pause = doc! { "_id": "p", "type": "pause-snapshot" };
        assert!(matches!(
            classify(&pause),
            SignalDocument::Signal { data: None, .. }
        ));
    }

    #[test]
    fn malformed_signal_documents_say_what_is_wrong() {
        let cases = [
            (doc! { "_id": 1, "data": "{}" }, "has no `type`"),
            (doc! { "_id": 1, "type": 5 }, "`type` must be a string"),
            (
                doc! { "_id": 1, "type": "log", "data": [1] },
                "`data` must be a JSON text or a document",
            ),
        ];
        for (document, expected) in cases {
            match classify(&document) {
                SignalDocument::Malformed(reason) => {
                    assert!(reason.contains(expected), "{document}: {reason}")
                }
                other => panic!("{document}: {other:?}"),
            }
        }
    }

    #[test]
    fn filters_are_relaxed_or_canonical_extended_json_documents() {
        assert_eq!(
            parse_filter(r#"{"status": "new"}"#),
            Ok(doc! { "status": "new" })
        );
        assert_eq!(
            parse_filter(r#"{"n": {"$gte": 10}, "at": {"$date": "2024-01-01T00:00:00Z"}}"#)
                .unwrap()
                .get_document("n"),
            Ok(&doc! { "$gte": 10 })
        );
        assert!(matches!(
            parse_filter(r#"{"_id": {"$oid": "65f0c0ffee0000000000cafe"}}"#)
                .unwrap()
                .get("_id"),
            Some(Bson::ObjectId(_))
        ));
        for (text, expected) in [
            ("status = 'new'", "is not JSON"),
            ("[1, 2]", "not a document"),
            (r#"{"_id": {"$oid": "nope"}}"#, "not Extended JSON"),
        ] {
            let err = parse_filter(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
