//! The config file with a PostgreSQL source, and what every source shares.

use super::*;

const GOOD: &str = r#"
[source]
kind = "postgres"
url = "postgres://replicator:secret@127.0.0.1:5432/shop"
slot = "sluice"
publication = "sluice"
tables = ["public.orders", "public.*"]

[sink]
kind = "kafka"
brokers = "127.0.0.1:9092"
topic_prefix = "shop"
dead_letter_topic = "shop.dlq"
[sink.kafka]
"compression.type" = "zstd"
"linger.ms" = 5

[avro]
registry_url = "http://127.0.0.1:8081"

[positions]
dir = "/var/lib/sluice"
"#;

fn syntax_error(text: &str) -> String {
    match Config::parse(text) {
        Err(ParseError::Syntax(message)) => message,
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text) {
        Err(ParseError::Invalid(problems)) => problems,
        other => panic!("expected value problems, got {other:?}"),
    }
}

#[test]
fn a_temporary_slot_is_not_also_dropped_on_stop() {
    let temporary = GOOD.replace(
        "tables = [",
        "temporary_slot = true\ndrop_slot_on_stop = true\ntables = [",
    );
    let found = problems(&temporary);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "source.temporary_slot");
    assert!(found[0].message.contains("Keep one"), "{found:?}");
    assert_eq!(found[0].line, 7, "reported at `temporary_slot`");

    let config = Config::parse(&temporary.replace("drop_slot_on_stop = true\n", ""))
        .expect("a temporary slot alone is fine");
    assert!(*config.postgres().unwrap().temporary_slot.get_ref());
}

#[test]
fn a_kafka_sink_needs_brokers_and_the_blackhole_none() {
    let without_brokers = GOOD.replace("brokers = \"127.0.0.1:9092\"\n", "");
    let found = problems(&without_brokers);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "sink.brokers");
    assert!(found[0].message.contains("required with kind = \"kafka\""));
    assert_eq!(found[0].line, 10, "reported at `kind`");

    let blackhole = without_brokers.replace("kind = \"kafka\"", "kind = \"blackhole\"");
    let config = Config::parse(&blackhole).expect("the blackhole needs no brokers");
    assert_eq!(*config.sink.kind.get_ref(), SinkKind::Blackhole);
    assert_eq!(config.sink.brokers(), "");
}

#[test]
fn avro_settings_that_cannot_work_together_are_named() {
    let without_registry = GOOD.replace(
        "registry_url = \"http://127.0.0.1:8081\"",
        "registry_username = \"u\"\nschemas_topic = \"shop schemas\"",
    );
    let found: Vec<(String, String)> = problems(&without_registry)
        .into_iter()
        .map(|p| (p.key, p.message))
        .collect();
    assert_eq!(
        found,
        [
            (
                "avro.registry_username".to_owned(),
                "has no effect without `avro.registry_url`".to_owned()
            ),
            (
                "avro.schemas_topic".to_owned(),
                problems(
                    &GOOD.replace("topic_prefix = \"shop\"", "topic_prefix = \"shop schemas\"")
                )
                .remove(0)
                .message
            ),
        ]
    );
    let half_auth = GOOD.replace(
        "registry_url = \"http://127.0.0.1:8081\"",
        "registry_url = \"https://r\"\nregistry_password = \"p\"\nregistry_bearer_token = \"t\"",
    );
    let keys: Vec<String> = problems(&half_auth).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["avro.registry_password"]);

    // Without a registry, the schemas topic follows the topic prefix.
    let free =
        Config::parse(&GOOD.replace("registry_url = \"http://127.0.0.1:8081\"", "")).unwrap();
    assert_eq!(free.schemas_topic(), "shop.schemas");
    assert_eq!(free.contracts_dir(), PathBuf::from("schemas/contracts"));
}

#[test]
fn the_documented_shape_parses() {
    let config = Config::parse(GOOD).unwrap();
    let source = config.postgres().unwrap();
    assert!(matches!(config.source, Source::Postgres(_)));
    assert_eq!(config.sink.topic_prefix.get_ref().as_str(), "shop");
    assert!(config.sink.create_topics);
    assert_eq!(*source.status_interval_secs.get_ref(), 10);
    assert_eq!(source.snapshot, SnapshotMode::Initial);
    let props: Vec<_> = config.kafka_properties().collect();
    assert_eq!(
        props,
        vec![("compression.type", "zstd"), ("linger.ms", "5")]
    );
    let patterns = source.selection().tables;
    assert_eq!(patterns.len(), 2);
    assert!(patterns[1].matches("public", "anything"));
    assert!(!patterns[0].matches("public", "orders2"));
}

#[test]
fn exclusions_narrow_the_selection() {
    let text = GOOD.replace(
        "tables = [\"public.orders\", \"public.*\"]",
        "tables = [\"public.*\"]\nexclude_tables = [\"public.audit_*\"]\n\
             exclude_columns = [\"public.customers.email\", \"*.*.password\"]",
    );
    let selection = Config::parse(&text)
        .unwrap()
        .postgres()
        .unwrap()
        .selection();
    assert!(selection.includes("public", "orders"));
    assert!(!selection.includes("public", "audit_log"));
    assert!(!selection.includes("sales", "orders"));
    assert!(selection.excludes_column("public", "customers", "email"));
    assert!(selection.excludes_column("sales", "users", "password"));
    assert!(!selection.excludes_column("public", "orders", "email"));

    let text = GOOD.replace(
            "tables = [\"public.orders\", \"public.*\"]",
            "tables = [\"public.*\"]\nexclude_tables = [\"audit\"]\nexclude_columns = [\"public.email\"]",
        );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        (found[0].key.as_str(), found[0].line),
        ("source.exclude_tables", 8)
    );
    assert!(
        found[1].message.contains("is not `schema.table.column`"),
        "{}",
        found[1]
    );
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = GOOD.replace("slot = \"sluice\"", "slot = \"sluice\"\nslots = 3");
    let message = syntax_error(&text);
    assert!(message.contains("line 6, column 1"), "{message}");
    assert!(message.contains("unknown field `slots`"), "{message}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let text = GOOD.replace(
        "tables = [\"public.orders\", \"public.*\"]",
        "tables = \"public.orders\"",
    );
    let message = syntax_error(&text);
    assert!(message.contains("line 7"), "{message}");
    assert!(
        message.contains("tables") || message.contains("sequence"),
        "{message}"
    );
}

#[test]
fn snapshot_modes_parse_and_an_unknown_one_is_named() {
    let with = |mode: &str| {
        GOOD.replace(
            "slot = \"sluice\"",
            &format!("slot = \"sluice\"\nsnapshot = \"{mode}\""),
        )
    };
    for (text, mode) in [
        ("never", SnapshotMode::Never),
        ("initial_only", SnapshotMode::InitialOnly),
        ("when_needed", SnapshotMode::WhenNeeded),
    ] {
        let config = Config::parse(&with(text)).unwrap();
        assert_eq!(config.postgres().unwrap().snapshot, mode);
    }
    let config = Config::parse(GOOD).unwrap();
    assert_eq!(config.shutdown_timeout(), Duration::from_secs(25));
    let text = GOOD.replace(
        "dead_letter_topic = \"shop.dlq\"",
        "dead_letter_topic = \"shop.dlq\"\nshutdown_timeout_secs = 1",
    );
    let found = problems(&text);
    assert_eq!(found[0].key, "sink.shutdown_timeout_secs");
    assert!(
        found[0].message.contains("at least 2"),
        "{}",
        found[0].message
    );
    let text = GOOD.replace(
        "slot = \"sluice\"",
        "slot = \"sluice\"\nsnapshot_connections = 0",
    );
    let found = problems(&text);
    assert_eq!(found[0].key, "source.snapshot_connections");
    assert_eq!(found[0].line, 6);
    let message = syntax_error(&with("sometimes"));
    assert!(message.contains("line 6"), "{message}");
    assert!(
        message.contains("sometimes") && message.contains("initial_only"),
        "{message}"
    );
}

#[test]
fn missing_section_is_named() {
    let text = GOOD.replace("[positions]\ndir = \"/var/lib/sluice\"\n", "");
    let message = syntax_error(&text);
    assert!(message.contains("missing field `positions`"), "{message}");
}

#[test]
fn bad_url_is_reported_with_its_line_and_without_the_password() {
    let text = GOOD.replace(
        "postgres://replicator:secret@127.0.0.1:5432/shop",
        "mysql://u:secret@h/db",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "source.url");
    assert_eq!(found[0].line, 4);
    assert!(!found[0].message.contains("secret"), "{}", found[0].message);
    let text = GOOD.replace("127.0.0.1:5432/shop", "127.0.0.1:5432");
    assert!(problems(&text)[0].message.contains("names no database"));
}

#[test]
fn every_value_problem_is_reported_at_once() {
    let text = GOOD
        .replace("slot = \"sluice\"", "slot = \"Sluice-1\"")
        .replace("topic_prefix = \"shop\"", "topic_prefix = \"sh op\"")
        .replace("brokers = \"127.0.0.1:9092\"", "brokers = \"localhost\"")
        .replace("\"linger.ms\" = 5", "acks = 1")
        .replace("http://127.0.0.1:8081", "ftp://x")
        .replace("\"public.*\"", "\"orders\"");
    let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "source.slot",
            "source.tables",
            "sink.brokers",
            "sink.topic_prefix",
            "sink.kafka.\"acks\"",
            "avro.registry_url"
        ]
    );
}

#[test]
fn numeric_settings_are_located_at_their_own_line() {
    let text = GOOD
        .replace(
            "tables = [\"public.orders\", \"public.*\"]",
            "tables = [\"public.orders\", \"public.*\"]\nstatus_interval_secs = 120",
        )
        .replace(
            "dead_letter_topic = \"shop.dlq\"",
            "dead_letter_topic = \"shop.dlq\"\ntopic_partitions = 0\ntopic_replication_factor = -3",
        );
    let found = problems(&text);
    let located: Vec<(&str, usize)> = found.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        located,
        [
            ("source.status_interval_secs", 8),
            ("sink.topic_partitions", 15),
            ("sink.topic_replication_factor", 16)
        ]
    );
    assert!(
        found[0].message.contains("wal_sender_timeout"),
        "{}",
        found[0].message
    );
}

#[test]
fn settings_that_would_drop_or_hide_events_are_refused() {
    let text = GOOD.replace("\"linger.ms\" = 5", "\"message.timeout.ms\" = 30000");
    let found = problems(&text);
    assert_eq!(found[0].key, "sink.kafka.\"message.timeout.ms\"");
    assert!(
        found[0].message.contains("drop events"),
        "{}",
        found[0].message
    );

    let text = GOOD.replace("5432/shop", "5432/shop?sslmode=verify-full");
    let found = problems(&text);
    assert_eq!(found[0].key, "source.url");
    assert!(
        found[0].message.contains("sslrootcert"),
        "{}",
        found[0].message
    );
    assert!(Config::parse(&GOOD.replace("5432/shop", "5432/shop?sslmode=require")).is_ok());
}

#[test]
fn environment_references_are_expanded() {
    let lookup = |name: &str| (name == "PW").then(|| "s3cret".to_owned());
    assert_eq!(expand_env("a:${PW}@h", lookup).unwrap(), "a:s3cret@h");
    assert_eq!(
        expand_env("cost $$5 and $x", lookup).unwrap(),
        "cost $5 and $x"
    );
    assert!(expand_env("${MISSING}", lookup)
        .unwrap_err()
        .contains("`MISSING` is not set"));
    assert!(expand_env("${PW", lookup).unwrap_err().contains("unclosed"));
    assert!(expand_env("${A-B}", lookup)
        .unwrap_err()
        .contains("not a valid"));
}

#[test]
fn a_missing_environment_variable_is_a_located_error() {
    let text = GOOD.replace("secret@", "${SLUICE_TEST_SURELY_UNSET_VAR}@");
    let message = syntax_error(&text);
    assert!(
        message.contains("SLUICE_TEST_SURELY_UNSET_VAR"),
        "{message}"
    );
    assert!(message.contains("line 4"), "{message}");
}

#[test]
fn secrets_are_redacted() {
    assert_eq!(
        redact_secrets("postgres://u:pw@h:1/db"),
        "postgres://u:***@h:1/db"
    );
    assert_eq!(
        redact_secrets("url = \"postgres://u@h/db\""),
        "url = \"postgres://u@h/db\""
    );
    assert_eq!(
        redact_secrets("a http://x:y@z/p and https://k:v@w"),
        "a http://x:***@z/p and https://k:***@w"
    );
}

#[test]
fn a_source_without_a_kind_is_asked_for_one() {
    let text = "[source]\nurl = \"mongodb://h/\"\ncollections = [\"a.*\"]\n\n[sink]\nkind = \"blackhole\"\n\
                    topic_prefix = \"app\"\ndead_letter_topic = \"app.dlq\"\n\n[positions]\ndir = \"/tmp/p\"\n";
    match Config::parse(text) {
        Err(ParseError::Invalid(found)) => {
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!((found[0].key.as_str(), found[0].line), ("source.kind", 1));
            assert!(
                found[0].message.contains("`kind = \"mongodb\"`"),
                "{}",
                found[0].message
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn incremental_snapshot_settings_are_checked() {
    let source = |extra: &str| {
        GOOD.replace(
            "tables = [\"public.orders\", \"public.*\"]",
            &format!("tables = [\"public.orders\", \"public.*\"]\n{extra}"),
        )
    };
    let config = Config::parse(&source("")).unwrap();
    let Source::Postgres(pg) = &config.source else {
        panic!("a PostgreSQL source")
    };
    assert!(pg.signal_table.is_none());
    assert_eq!(*pg.incremental_chunk_rows.get_ref(), 1024);
    assert!(pg.snapshot_new_tables);

    let found = problems(&source(
        "signal_table = \"public.sig*\"\nincremental_chunk_rows = 0",
    ));
    let located: Vec<(&str, usize)> = found.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        located,
        [
            ("source.signal_table", 8),
            ("source.incremental_chunk_rows", 9)
        ]
    );
    assert!(
        found[0].message.contains("wildcard"),
        "{}",
        found[0].message
    );
    let found = problems(&source("signal_table = \"sluice_signals\""));
    assert!(
        found[0].message.contains("schema.table"),
        "{}",
        found[0].message
    );
    assert!(Config::parse(&source("signal_table = \"public.sluice_signals\"")).is_ok());
}

#[test]
fn a_sasl_login_by_password_needs_the_user_and_the_password() {
    let sasl = GOOD.replace(
        "\"linger.ms\" = 5\n",
        "\"linger.ms\" = 5\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"sluice\"\n",
    );
    let found = problems(&sasl);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "sink.kafka.\"security.protocol\"");
    assert_eq!(
        found[0].message,
        "SASL SCRAM-SHA-512 needs sasl.password in [sink.kafka]"
    );
    Config::parse(&sasl.replace(
        "\"sasl.username\" = \"sluice\"\n",
        "\"sasl.username\" = \"sluice\"\n\"sasl.password\" = \"pw\"\n",
    ))
    .expect("with both");
    let kerberos = problems(&sasl.replace("SCRAM-SHA-512", "GSSAPI"));
    assert_eq!(kerberos[0].key, "sink.kafka.\"sasl.mechanisms\"");
    assert_eq!(
        kerberos[0].message,
        "`GSSAPI` is not a SASL mechanism sluice has: use one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER"
    );
    let unnamed = problems(&sasl.replace("\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n", ""));
    assert_eq!(unnamed[0].key, "sink.kafka.\"security.protocol\"");
    assert!(
        unnamed[0].message.contains("needs `sasl.mechanisms`"),
        "{unnamed:?}"
    );
}
