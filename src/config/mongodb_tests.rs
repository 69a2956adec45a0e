//! The config file with a MongoDB source.

use super::*;

const GOOD: &str = r#"
[source]
kind = "mongodb"
url = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
collections = ["shop.*", "crm.people.v2"]
exclude_collections = ["shop.audit*"]
before = "when_available"

[sink]
kind = "kafka"
brokers = "127.0.0.1:9092"
topic_prefix = "app"
dead_letter_topic = "app.dlq"

[positions]
dir = "/tmp/sluice"
"#;

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Err(ParseError::Invalid(problems)) => problems.iter().map(|p| p.to_string()).collect(),
        Err(ParseError::Syntax(message)) => vec![message],
        Ok(_) => Vec::new(),
    }
}

#[test]
fn a_mongodb_source_parses_with_its_defaults() {
    let config = Config::parse(GOOD).unwrap();
    let Source::Mongodb(source) = &config.source else {
        panic!("{:?}", config.source)
    };
    assert_eq!(*source.capture.get_ref(), Capture::ChangeStreams);
    assert_eq!(source.full_document, FullDocument::UpdateLookup);
    assert_eq!(source.before, BeforeImage::WhenAvailable);
    assert_eq!(*source.snapshot.get_ref(), SnapshotMode::Initial);
    assert_eq!(*source.snapshot_connections.get_ref(), 2);
    assert_eq!(*source.snapshot_chunk_documents.get_ref(), 100_000);
    assert!(config.postgres().is_none());
    let selection = source.selection();
    assert!(selection.includes("shop", "orders"));
    assert!(!selection.includes("shop", "audit_2024"), "excluded");
    assert!(
        selection.includes("crm", "people.v2"),
        "a dot belongs to the collection"
    );
    assert!(!selection.includes("crm", "people"));
    assert!(!selection.includes("other", "orders"));
}

#[test]
fn postgres_keys_are_refused_under_a_mongodb_source_and_the_other_way_round() {
    let with_slot = GOOD.replace("before =", "slot = \"s\"\nbefore =");
    let found = problems(&with_slot);
    assert!(found[0].contains("unknown field `slot`"), "{found:?}");
    assert!(found[0].starts_with("line 7"), "{found:?}");
    let unknown_kind = GOOD.replace("\"mongodb\"", "\"mysql\"");
    let found = problems(&unknown_kind);
    assert!(
        found[0].contains("unknown variant `mysql`, expected `postgres` or `mongodb`"),
        "{found:?}"
    );
}

#[test]
fn bad_values_are_reported_with_their_lines() {
    let text = GOOD
        .replace("mongodb://127.0.0.1:27017/?replicaSet=rs0", "postgres://x")
        .replace("\"shop.*\", ", "\"shop\", ")
        .replace(
            "before = \"when_available\"",
            "capture = \"oplog\"\nbefore = \"required\"\nsnapshot_chunk_documents = 10",
        );
    let found = problems(&text);
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(
        found[0].starts_with("line 4") && found[0].contains("must start with `mongodb://`"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("line 5") && found[1].contains("`shop` is not `db.collection`"),
        "{found:?}"
    );
    assert!(
        found[2].starts_with("line 7") && found[2].contains("\"oplog\" has no pre-images"),
        "{found:?}"
    );
    assert!(
        found[3].starts_with("line 9")
            && found[3].contains("source.snapshot_chunk_documents")
            && found[3].contains("is 10; must be at least 1000"),
        "{found:?}"
    );

    let empty = GOOD.replace("[\"shop.*\", \"crm.people.v2\"]", "[]");
    assert!(problems(&empty)[0].contains("lists no collections"));
    let no_host = GOOD.replace("127.0.0.1:27017", "");
    assert!(
        problems(&no_host)[0].contains("names no host"),
        "{:?}",
        problems(&no_host)
    );
    let bad_option = GOOD.replace("replicaSet=rs0", "w=banana&journal=maybe");
    assert!(
        problems(&bad_option)[0].starts_with("line 4"),
        "{:?}",
        problems(&bad_option)
    );
}

#[test]
fn the_password_never_appears_in_a_url_problem() {
    let text = GOOD.replace(
        "mongodb://127.0.0.1:27017/?replicaSet=rs0",
        "mongodb://u:hunter2@127.0.0.1:27017/?journal=maybe",
    );
    let found = problems(&text);
    assert!(!found.is_empty());
    assert!(!found.join(" ").contains("hunter2"), "{found:?}");
}

#[test]
fn debeziums_representation_is_refused_for_documents() {
    let debezium = format!("{GOOD}\n[avro]\nlogical_types = \"debezium\"\n");
    let found = problems(&debezium);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("avro.logical_types") && found[0].contains("MongoDB documents"),
        "{found:?}"
    );
    let avro = format!("{GOOD}\n[avro]\nlogical_types = \"avro\"\n");
    assert!(problems(&avro).is_empty());
    let unknown = format!("{GOOD}\n[avro]\nlogical_types = \"connect\"\n");
    assert!(problems(&unknown)[0].contains("unknown variant `connect`"));
}
