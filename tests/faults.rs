//! Faults under a continuous write load, against a real PostgreSQL and tansu: the daemon killed twenty
//! times, the broker frozen for a minute, PostgreSQL restarted, and a SIGTERM under load. Each test checks
//! that every committed row reaches the topic, and that repeats come only from what was not yet
//! acknowledged.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{decode_all, http_get, Daemon, Event, Services, DATABASE};
use sluice_testkit::broker::Record;
use sluice_testkit::config::ConfigFile;
use tokio::task::JoinHandle;

const SCHEMA: &str = "CREATE TABLE load (id bigint PRIMARY KEY, payload text NOT NULL)";
const TOPIC: &str = "shop.public.load";
/// The writer's pace: about 250 rows a second, enough to keep every fault mid-stream without making
/// the catch-up through tansu slow.
const ROWS_PER_TRANSACTION: i64 = 5;
const PAUSE_BETWEEN_TRANSACTIONS: Duration = Duration::from_millis(20);

/// What the writer did: rows whose COMMIT succeeded, and rows whose COMMIT got no answer (the server went
/// away), which may or may not have committed.
#[derive(Default)]
struct Written {
    committed: BTreeSet<i64>,
    in_doubt: BTreeSet<i64>,
}

/// Inserts rows in small transactions until finished, reconnecting through server restarts.
struct Writer {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Written>,
}

impl Writer {
    fn start(url: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut written = Written::default();
            let mut client = None;
            let mut next = 1i64;
            while !stopped.load(Ordering::Relaxed) {
                let Some(connected) = &client else {
                    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok((connected, connection)) => {
                            tokio::spawn(connection);
                            client = Some(connected);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    continue;
                };
                let (first, last) = (next, next + ROWS_PER_TRANSACTION - 1);
                next = last + 1;
                let inserted = connected
                    .execute(
                        "INSERT INTO load SELECT g, 'row ' || g FROM generate_series($1::bigint, $2::bigint) g",
                        &[&first, &last],
                    )
                    .await;
                match inserted {
                    Ok(_) => written.committed.extend(first..=last),
                    Err(_) => {
                        written.in_doubt.extend(first..=last);
                        client = None;
                    }
                }
                tokio::time::sleep(PAUSE_BETWEEN_TRANSACTIONS).await;
            }
            written
        });
        Writer { stop, task }
    }

    async fn finish(self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the writer panicked")
    }
}

/// The LSN in the position file.
fn stored_lsn(services: &Services) -> u64 {
    let file = services.position_file().expect("a position is stored");
    common::lsn(file["position"]["lsn"].as_str().expect("position.lsn"))
}

fn row_id(event: &Event) -> i64 {
    event.after().expect("an insert")["id"].as_i64().unwrap()
}

/// The services, sluice streaming `public.load` with `configure`'s changes to the config, and the writer
/// running, its first rows on the topic.
async fn under_load(
    configure: impl FnOnce(&mut ConfigFile),
) -> (Services, PathBuf, Daemon, Writer) {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let mut config = services.config(&["public.load"]);
    configure(&mut config);
    let config = services.write(&config);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    let writer = Writer::start(services.pg.url(DATABASE));
    services.read(TOPIC, 250, Duration::from_secs(60)).await;
    (services, config, daemon, writer)
}

/// Every committed row is on the topic, and nothing that was never written; `log` is shown on failure.
fn assert_complete(events: &[Event], written: &Written, log: &str) {
    let tail = (log.len().saturating_sub(6000)..log.len())
        .find(|i| log.is_char_boundary(*i))
        .unwrap_or(0);
    let log = &log[tail..];
    let ids: BTreeSet<i64> = events.iter().map(row_id).collect();
    let missing: Vec<&i64> = written.committed.difference(&ids).collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed rows are missing ({} events read), e.g. {:?}; the daemon's log ends:\n{log}",
        missing.len(),
        written.committed.len(),
        events.len(),
        &missing[..missing.len().min(10)]
    );
    let unknown: Vec<&i64> = ids
        .iter()
        .filter(|id| !written.committed.contains(id) && !written.in_doubt.contains(id))
        .collect();
    assert!(unknown.is_empty(), "rows nobody wrote: {unknown:?}\n{log}");
}

/// The topic once every committed row is on it (or after `timeout`). Counting records is not enough:
/// repeats make up the count before the last rows arrive.
async fn read_rows(services: &Services, written: &Written, timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let records = services.read(TOPIC, written.committed.len(), left).await;
        let ids: BTreeSet<i64> = decode_all(services, &records).iter().map(row_id).collect();
        if written.committed.is_subset(&ids) || Instant::now() >= deadline {
            return records;
        }
    }
}

/// Rows that arrived more than once.
fn repeated(events: &[Event]) -> Vec<i64> {
    let mut seen = HashMap::new();
    for event in events {
        *seen.entry(row_id(event)).or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect()
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    let (_, body) = http_get(daemon, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
        .parse()
        .unwrap()
}

/// Polls `/health/ready` until its status line contains `status`.
async fn wait_ready_status(daemon: &mut Daemon, status: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = daemon.exited() {
            panic!("sluice exited ({exit}):\n{}", daemon.log());
        }
        let (line, body) = http_get(daemon, "/health/ready");
        if line.contains(status) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/health/ready stayed `{line}` ({body}) for {within:?}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One daemon process: when it ran (wall clock, as the envelope's `ts_ms` tells) and the position it
/// resumed from.
struct Run {
    started_ms: i64,
    ended_ms: i64,
    resumed_from: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_under_load_lose_nothing_and_repeat_only_the_unacknowledged() {
    const KILLS: u64 = 20;
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let mut config = services.config(&["public.load"]);
    // One partition: the topic's order is the order things were published in.
    config.topic_partitions = 1;
    let config = services.write(&config);
    let mut started_ms = now_ms();
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    let writer = Writer::start(services.pg.url(DATABASE));

    let mut runs = Vec::new();
    let mut resumed_from = stored_lsn(&services);
    for kill in 0..KILLS {
        // Kills land at varied points: mid-transaction, mid-acknowledgement, right after a start.
        tokio::time::sleep(Duration::from_millis(200 + kill * 389 % 1300)).await;
        daemon.kill();
        runs.push(Run {
            started_ms,
            ended_ms: now_ms(),
            resumed_from,
        });
        let stored = stored_lsn(&services);
        assert!(stored >= resumed_from, "the stored position went back");
        resumed_from = stored;
        started_ms = now_ms();
        daemon = Daemon::start(&config);
        services.wait_streaming(&mut daemon).await;
    }
    let written = writer.finish().await;
    let records = read_rows(&services, &written, Duration::from_secs(240)).await;
    daemon.stop_cleanly();
    runs.push(Run {
        started_ms,
        ended_ms: now_ms(),
        resumed_from,
    });

    let events = decode_all(&services, &records);
    assert_complete(&events, &written, &daemon.log());
    let mut per_run = vec![0usize; runs.len()];
    for event in &events {
        let ts_ms = event.value.as_ref().unwrap()["ts_ms"].as_i64().unwrap();
        let run = runs
            .iter()
            .position(|run| (run.started_ms..=run.ended_ms).contains(&ts_ms))
            .unwrap_or_else(|| panic!("event published outside every run: {event:?}"));
        per_run[run] += 1;
        // A run starts from the stored position: what it publishes committed at or after it. An event
        // from before would be a repeat of something already acknowledged.
        let commit_lsn = common::lsn(&event.headers["sluice.commit_lsn"]);
        assert!(
            commit_lsn >= runs[run].resumed_from,
            "run {run} published a transaction committed at {} before its stored position {}",
            event.headers["sluice.commit_lsn"],
            runs[run].resumed_from
        );
    }
    let repeats = repeated(&events);
    eprintln!(
        "{KILLS} kills: {} rows committed, {} events; events per run {per_run:?}; {} rows repeated (all \
         from unacknowledged windows)",
        written.committed.len(),
        events.len(),
        repeats.len()
    );
    assert!(
        per_run.iter().filter(|n| **n > 0).count() as u64 > KILLS / 2,
        "most runs published something: {per_run:?}"
    );
}

// Not in CI: after a minute's freeze under load, tansu 0.6 fails at its end of the check. Two of the
// topic's three partitions can no longer be read from offset 0, not even the rows a reader had read
// before the freeze; the consumer gets neither records nor an error, while tansu runs at 100% CPU
// answering fetches. In CI and here it failed 5 of 8 runs with the same picture (about 9,300 of 27,500
// rows readable), with the producer queue at 10,000 or 2,000 and with one request in flight. Run it
// with `-- --ignored`; against a Kafka broker it is the test of a frozen broker.
#[ignore = "tansu 0.6 stops serving partitions after the freeze; see the comment"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_frozen_for_a_minute_holds_the_flow_and_loses_nothing() {
    let (services, _config, mut daemon, writer) = under_load(|config| {
        config.api_address = Some("127.0.0.1:0".into());
        // Requests sent before the freeze are answered after it. librdkafka would otherwise time them out at
        // 60 s and send them again, and tansu 0.6 stops answering after it rejects the second copies as
        // duplicate sequence numbers (a Kafka broker acknowledges them as already written).
        config.set_kafka("socket.timeout.ms", "180000");
    })
    .await;
    wait_ready_status(&mut daemon, "200", Duration::from_secs(30)).await;

    services.broker.freeze().unwrap();
    let frozen_at = Instant::now();
    let why = wait_ready_status(&mut daemon, "503", Duration::from_secs(30)).await;
    assert!(why.contains("broker is unreachable"), "{why}");
    while frozen_at.elapsed() < Duration::from_secs(60) {
        assert!(
            daemon.exited().is_none(),
            "sluice must wait for the broker, not exit:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        metric(&daemon, "sluice_source_lag_bytes") > 0.0,
        "rows written while the broker was frozen are not acknowledged"
    );
    services.broker.thaw().unwrap();

    wait_ready_status(&mut daemon, "200", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = writer.finish().await;
    let records = read_rows(&services, &written, Duration::from_secs(240)).await;
    let events = decode_all(&services, &records);
    assert_complete(&events, &written, &daemon.log());
    assert_eq!(
        repeated(&events),
        Vec::<i64>::new(),
        "no restart, so no repeats"
    );
    // Keepalives went on while reading paused: PostgreSQL never dropped the replication connection.
    assert_eq!(metric(&daemon, "sluice_source_reconnects_total"), 0.0);
    assert!(
        daemon.log().contains("broker unreachable"),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("broker reachable again"),
        "{}",
        daemon.log()
    );
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_is_followed_by_a_resume_without_loss_or_repeats() {
    let (services, _config, mut daemon, writer) = under_load(|config| {
        config.api_address = Some("127.0.0.1:0".into());
    })
    .await;

    services.pg.restart().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_ready_status(&mut daemon, "200", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = writer.finish().await;
    let records = read_rows(&services, &written, Duration::from_secs(120)).await;
    assert!(
        daemon.exited().is_none(),
        "sluice must reconnect, not exit:\n{}",
        daemon.log()
    );
    let events = decode_all(&services, &records);
    assert_complete(&events, &written, &daemon.log());
    assert_eq!(repeated(&events), Vec::<i64>::new(), "{}", daemon.log());
    assert!(metric(&daemon, "sluice_source_reconnects_total") >= 1.0);
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_within_the_bound_and_the_restart_repeats_nothing() {
    const BOUND: Duration = Duration::from_secs(10);
    let (services, config, mut daemon, writer) = under_load(|config| {
        config.sink_extra = format!("shutdown_timeout_secs = {}", BOUND.as_secs());
    })
    .await;

    let signalled = Instant::now();
    let status = daemon.terminate(BOUND * 2);
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(took <= BOUND, "the stop took {took:?}, over {BOUND:?}");
    let stored = services.position_file().expect("a position is stored");
    assert_eq!(
        services.confirmed_flush().await.as_deref(),
        stored["position"]["lsn"].as_str(),
        "the server was told the stored position"
    );

    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = writer.finish().await;
    let records = read_rows(&services, &written, Duration::from_secs(120)).await;
    daemon.stop_cleanly();
    let events = decode_all(&services, &records);
    assert_complete(&events, &written, &daemon.log());
    assert_eq!(repeated(&events), Vec::<i64>::new());
    eprintln!(
        "SIGTERM under load: exit 0 after {took:?}; {} rows, none repeated",
        written.committed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_frozen_ends_at_the_bound_with_the_position_stored() {
    const BOUND: Duration = Duration::from_secs(6);
    let (services, config, mut daemon, writer) = under_load(|config| {
        config.sink_extra = format!("shutdown_timeout_secs = {}", BOUND.as_secs());
        // As in the one-minute freeze: no resent requests for tansu to choke on.
        config.set_kafka("socket.timeout.ms", "180000");
    })
    .await;

    services.broker.freeze().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = stored_lsn(&services);
    let signalled = Instant::now();
    let status = daemon.terminate(BOUND * 3);
    let took = signalled.elapsed();
    // The bound, plus the process's own start-up of the stop and its exit.
    assert!(
        took <= BOUND + Duration::from_secs(1),
        "the stop took {took:?}:\n{}",
        daemon.log()
    );
    assert_eq!(
        status.code(),
        Some(1),
        "unacknowledged messages at the bound: exit 1\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains("shutdown bound"), "{}", daemon.log());
    assert!(stored_lsn(&services) >= before);
    services.broker.thaw().unwrap();

    // What the broker had not acknowledged is sent again by the next run.
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = writer.finish().await;
    let records = read_rows(&services, &written, Duration::from_secs(180)).await;
    let events = decode_all(&services, &records);
    assert_complete(&events, &written, &daemon.log());
    daemon.stop_cleanly();
    eprintln!("SIGTERM with the broker frozen: exit 1 after {took:?}, nothing lost on restart");
}
