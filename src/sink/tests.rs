use super::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sluice_core::event::{Lsn, Position};

fn mock_settings(brokers: String) -> SinkSettings {
    SinkSettings {
        kind: SinkKind::Kafka,
        brokers,
        properties: vec![("linger.ms".into(), "0".into())],
        // The mock broker creates topics on first use and does not answer CreateTopics.
        create_topics: false,
        topic_partitions: 3,
        topic_replication_factor: 1,
    }
}

async fn acknowledged_within(tracker: &AckTracker, timeout: Duration) -> Option<Position> {
    let deadline = Instant::now() + timeout;
    while tracker.acknowledged().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracker.acknowledged()
}

// librdkafka's in-process mock broker: quick checks of how the sink reads delivery reports and admin
// answers. The end-to-end tests run the same code against a real broker.
#[tokio::test]
async fn the_blackhole_acknowledges_every_message_at_once() {
    let tracker = Arc::new(AckTracker::new());
    let settings = SinkSettings {
        kind: SinkKind::Blackhole,
        ..mock_settings(String::new())
    };
    let (mut sink, _failures) = Sink::new(settings, tracker.clone(), Arc::default()).unwrap();
    let (_stop_tx, stop) = watch::channel(false);
    sink.check_reachable(Duration::from_secs(1)).unwrap();
    sink.ensure_topic("shop.public.orders", &stop)
        .await
        .unwrap();
    assert!(sink.probe("shop.dlq").answers(Duration::from_secs(1)));
    let message = Outgoing {
        topic: "shop.public.orders",
        key: Some(b"k"),
        payload: Some(b"v"),
        headers: &[],
    };
    let ordinal = tracker.register();
    sink.send(&message, ordinal, MessageKind::Event)
        .await
        .unwrap();
    let ordinal = tracker.register();
    sink.send(&message, ordinal, MessageKind::Schema)
        .await
        .unwrap();
    sink.schema_delivered(&stop).await.unwrap();
    tracker.close_group(Position::Postgres { lsn: Lsn(0x10) }, None);
    assert_eq!(tracker.outstanding(), 0);
    assert_eq!(
        tracker.acknowledged(),
        Some(Position::Postgres { lsn: Lsn(0x10) })
    );
}

#[tokio::test]
async fn a_position_is_acknowledged_once_its_messages_are_delivered() {
    let cluster = MockCluster::new(1).unwrap();
    let tracker = Arc::new(AckTracker::new());
    let (sink, _failures) = Sink::new(
        mock_settings(cluster.bootstrap_servers()),
        tracker.clone(),
        Arc::default(),
    )
    .unwrap();
    for i in 0..3u8 {
        let ordinal = tracker.register();
        let message = Outgoing {
            topic: "orders",
            key: Some(&[i]),
            payload: Some(b"value"),
            headers: &[("sluice.lsn", b"0/10")],
        };
        sink.send(&message, ordinal, MessageKind::Event)
            .await
            .unwrap();
    }
    let position = Position::Postgres { lsn: Lsn(0x10) };
    tracker.close_group(position.clone(), None);
    assert_eq!(
        acknowledged_within(&tracker, Duration::from_secs(10)).await,
        Some(position)
    );
    assert_eq!(tracker.outstanding(), 0);
}

#[tokio::test]
async fn a_refused_delivery_comes_back_whole_and_holds_the_position() {
    let cluster = MockCluster::new(1).unwrap();
    let tracker = Arc::new(AckTracker::new());
    let (sink, mut failures) = Sink::new(
        mock_settings(cluster.bootstrap_servers()),
        tracker.clone(),
        Arc::default(),
    )
    .unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let ordinal = tracker.register();
    let message = Outgoing {
        topic: "orders",
        key: Some(b"k"),
        payload: Some(b"big"),
        headers: &[("sluice.txid", b"42")],
    };
    sink.send(&message, ordinal, MessageKind::Event)
        .await
        .unwrap();
    tracker.close_group(Position::Postgres { lsn: Lsn(0x20) }, None);

    let failure = tokio::time::timeout(Duration::from_secs(10), failures.recv())
        .await
        .expect("a delivery report")
        .unwrap();
    assert_eq!(failure.ordinal, ordinal);
    assert!(!failure.dead_letter);
    assert_eq!(failure.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(failure.payload.as_deref(), Some(&b"big"[..]));
    assert_eq!(
        failure.headers,
        vec![("sluice.txid".to_owned(), b"42".to_vec())]
    );
    assert!(is_too_large(&failure.error), "{}", failure.error);
    assert_eq!(
        tracker.acknowledged(),
        None,
        "the refused message still holds the position"
    );
}

#[test]
fn user_properties_cannot_drop_the_guarantees_but_can_tune() {
    let settings = SinkSettings {
        kind: SinkKind::Kafka,
        brokers: "127.0.0.1:1".into(),
        properties: vec![
            ("compression.type".into(), "zstd".into()),
            ("linger.ms".into(), "20".into()),
            ("queue.buffering.max.messages".into(), "50000".into()),
        ],
        create_topics: true,
        topic_partitions: 1,
        topic_replication_factor: 1,
    };
    let config = settings.client_config();
    assert_eq!(config.get("acks"), Some("all"));
    assert_eq!(config.get("enable.idempotence"), Some("true"));
    assert_eq!(config.get("partitioner"), Some("murmur2_random"));
    assert_eq!(config.get("compression.type"), Some("zstd"));
    assert_eq!(config.get("linger.ms"), Some("20"));
    assert_eq!(config.get("queue.buffering.max.messages"), Some("50000"));
    assert_eq!(config.get("queue.buffering.max.kbytes"), Some("32768"));

    // The queue always holds the largest message the producer accepts.
    let large = SinkSettings {
        properties: vec![("message.max.bytes".into(), "100000000".into())],
        ..settings
    };
    let kbytes: u64 = large
        .client_config()
        .get("queue.buffering.max.kbytes")
        .unwrap()
        .parse()
        .unwrap();
    assert!(kbytes * 1024 >= 2 * 100_000_000, "{kbytes}");
}

#[test]
fn connection_properties_are_recognised() {
    assert!(is_connection_property("security.protocol"));
    assert!(is_connection_property("sasl.username"));
    assert!(!is_connection_property("compression.type"));
}
