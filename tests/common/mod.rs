//! Shared pieces of the end-to-end tests: the three services, a config file pointing at them, the sluice
//! daemon as a child process, and decoding what it published.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use sluice::avro::SchemaRef;
use sluice::tail::ParsedSchema;
use sluice_testkit::broker::{read_topic, Record, Tansu};
use sluice_testkit::config::ConfigFile;
use sluice_testkit::postgres::PgCluster;
use sluice_testkit::registry::RegistryDouble;

pub const DATABASE: &str = "shop";
pub const PREFIX: &str = "shop";
pub const DEAD_LETTERS: &str = "shop.dlq";

/// A private PostgreSQL, a tansu broker and the registry test double, plus a scratch directory.
pub struct Services {
    pub pg: PgCluster,
    pub broker: Tansu,
    pub registry: RegistryDouble,
    pub dir: tempfile::TempDir,
}

impl Services {
    pub async fn start() -> Services {
        Services::with(
            Tansu::start().expect("start tansu"),
            RegistryDouble::start().expect("start the registry double"),
        )
        .await
    }

    /// The services around a broker the test started itself (secured, for instance).
    pub async fn start_with_broker(broker: Tansu) -> Services {
        let registry = RegistryDouble::start().expect("start the registry double");
        Services::with(broker, registry).await
    }

    /// The services with this registry double (e.g. one serving TLS) in place of the plain one.
    pub async fn start_with_registry(registry: RegistryDouble) -> Services {
        Services::with(Tansu::start().expect("start tansu"), registry).await
    }

    async fn with(broker: Tansu, registry: RegistryDouble) -> Services {
        let pg = PgCluster::start().expect("start PostgreSQL");
        pg.create_database(DATABASE).await.expect("create database");
        Services {
            pg,
            broker,
            registry,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub async fn sql(&self, sql: &str) {
        let client = self.pg.client(DATABASE).await.expect("connect");
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }

    /// Writes a config for `tables` and returns its path.
    pub fn write_config(&self, tables: &[&str]) -> PathBuf {
        self.write_config_with(tables, &[])
    }

    /// Writes a config for `tables` with extra `[sink.kafka]` properties and returns its path.
    pub fn write_config_with(&self, tables: &[&str], kafka: &[(&str, &str)]) -> PathBuf {
        self.write_config_source(tables, "", kafka)
    }

    /// Writes a config for `tables` with extra `[source]` lines and `[sink.kafka]` properties.
    pub fn write_config_source(
        &self,
        tables: &[&str],
        source: &str,
        kafka: &[(&str, &str)],
    ) -> PathBuf {
        let mut config = self.config(tables);
        config.source_extra = source.to_owned();
        for (key, value) in kafka {
            config.set_kafka(key, value);
        }
        self.write(&config)
    }

    /// The config the tests start from: these services, slot and publication `sluice_test`, prefix `shop`,
    /// three partitions per topic, the registry double.
    pub fn config(&self, tables: &[&str]) -> ConfigFile {
        let mut config = ConfigFile::local(
            self.pg.url(DATABASE),
            self.broker.bootstrap(),
            Some(self.registry.url()),
            self.dir.path().join("positions"),
        );
        config.slot = "sluice_test".into();
        config.publication = "sluice_test".into();
        config.tables = tables.iter().map(ToString::to_string).collect();
        config.topic_prefix = PREFIX.into();
        config.topic_partitions = 3;
        config
    }

    /// Writes `config` as this test's `sluice.toml` and returns its path.
    pub fn write(&self, config: &ConfigFile) -> PathBuf {
        self.write_as(config, "sluice.toml")
    }

    /// Writes `config` under `name` in this test's directory and returns its path.
    pub fn write_as(&self, config: &ConfigFile, name: &str) -> PathBuf {
        config
            .write(&self.dir.path().join(name))
            .expect("write config")
    }

    /// Every record of `topic` once at least `min` are there (or after `timeout`, whatever is there).
    pub async fn read(&self, topic: &str, min: usize, timeout: Duration) -> Vec<Record> {
        read_topic(self.broker.access(), topic, min, timeout)
            .await
            .expect("read topic")
    }

    /// Asserts that the dead-letter topic is empty (or was never written).
    pub async fn assert_no_dead_letters(&self) {
        let letters = self.read(DEAD_LETTERS, 0, Duration::from_secs(1)).await;
        assert!(letters.is_empty(), "dead letters: {letters:?}");
    }

    /// Decodes a Confluent-framed Avro body with the schema the registry double holds for its id.
    pub fn decode(&self, body: &[u8]) -> Json {
        decode_registered(&self.registry, body)
    }

    /// Waits up to `timeout` for the dead-letter topic, asserts that it holds exactly `count` letters, and
    /// returns them decoded.
    pub async fn dead_letters(&self, count: usize, timeout: Duration) -> Vec<Json> {
        let records = self.read(DEAD_LETTERS, count, timeout).await;
        assert_eq!(records.len(), count, "dead letters");
        records.iter().map(|r| self.dead_letter(r)).collect()
    }

    /// A dead letter decoded, with its `key` and `change` JSON texts parsed.
    pub fn dead_letter(&self, record: &Record) -> Json {
        let mut letter = self.decode(record.value.as_deref().expect("a dead letter has a value"));
        for field in ["key", "change"] {
            if let Some(text) = letter[field].as_str() {
                letter[field] = serde_json::from_str(text).expect("JSON in a dead letter");
            }
        }
        letter
    }

    /// Waits until sluice's slot is being streamed from.
    pub async fn wait_streaming(&self, daemon: &mut Daemon) {
        self.wait_streaming_slot(daemon, "sluice_test").await
    }

    /// Waits until `slot` is being streamed from by `daemon`.
    pub async fn wait_streaming_slot(&self, daemon: &mut Daemon, slot: &str) {
        wait_slot_active(&self.pg, daemon, slot).await
    }

    /// Where sluice keeps its position.
    pub fn position_path(&self) -> PathBuf {
        self.dir.path().join("positions/sluice_test.position.json")
    }

    /// The stored position file, as JSON (None when there is none yet).
    pub fn position_file(&self) -> Option<Json> {
        let text = std::fs::read_to_string(self.position_path()).ok()?;
        Some(serde_json::from_str(&text).expect("position file is JSON"))
    }

    /// The slot's confirmed_flush_lsn, as text.
    pub async fn confirmed_flush(&self) -> Option<String> {
        let client = self.pg.client(DATABASE).await.expect("connect");
        client
            .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sluice_test'", &[])
            .await
            .expect("query slots")
            .and_then(|row| row.get(0))
    }
}

/// The services with `schema` applied, and sluice streaming `tables` with extra `[source]` lines and
/// `[sink.kafka]` properties; returns the config's path too.
pub async fn streaming(
    schema: &str,
    tables: &[&str],
    source: &str,
    kafka: &[(&str, &str)],
) -> (Services, PathBuf, Daemon) {
    let services = Services::start().await;
    services.sql(schema).await;
    let config = services.write_config_source(tables, source, kafka);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    (services, config, daemon)
}

/// Waits until `slot` in the `shop` database of `pg` is being streamed from by `daemon`.
pub async fn wait_slot_active(pg: &PgCluster, daemon: &mut Daemon, slot: &str) {
    wait_slot_active_within(pg, daemon, slot, Duration::from_secs(60)).await
}

/// As [`wait_slot_active`], for a start that takes longer (a large snapshot comes first).
pub async fn wait_slot_active_within(
    pg: &PgCluster,
    daemon: &mut Daemon,
    slot: &str,
    within: Duration,
) {
    let client = pg.client(DATABASE).await.expect("connect");
    let deadline = Instant::now() + within;
    loop {
        let active = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("query slots")
            .is_some_and(|row| row.get::<_, bool>(0));
        if active {
            return;
        }
        if let Some(status) = daemon.exited() {
            panic!(
                "sluice exited ({status}) before streaming:\n{}",
                daemon.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "sluice did not start streaming:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An LSN as PostgreSQL and sluice print it (`16/B374D848`), as a number.
pub fn lsn(text: &str) -> u64 {
    text.parse::<sluice_core::event::Lsn>()
        .unwrap_or_else(|err| panic!("`{text}` is not an LSN: {err}"))
        .0
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// Runs `sluice ARGS` to completion; returns (exit status, stdout, stderr).
pub fn sluice(args: &[&str]) -> (ExitStatus, String, String) {
    let output = Command::new(sluice_bin())
        .args(args)
        .output()
        .expect("run sluice");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// GET `path` from the `[api]` endpoint the daemon logged it listens on; (status line, body).
pub fn http_get(daemon: &Daemon, path: &str) -> (String, String) {
    sluice_testkit::http_get(&daemon.api_address(), path)
        .unwrap_or_else(|err| panic!("GET {path}: {err:#}"))
}

/// `sluice run` as a child process, its log in a file.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with(config, &[], &[])
    }

    /// `sluice ARGS run -c CONFIG` with more environment variables.
    pub fn start_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = config.with_file_name(format!(
            "sluice-{}.log",
            std::process::id() as u128 + now_nanos()
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(sluice_bin())
            .args(args)
            .args(["run", "-c"])
            .arg(config)
            .env("SLUICE_LOG", "info,sluice=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn sluice");
        Daemon { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `[api]` address the daemon logged it listens on.
    pub fn api_address(&self) -> String {
        let log = self.log();
        log.lines()
            .find(|l| l.contains("api listening"))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the daemon logged no api address:\n{log}"))
            .to_owned()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn signal(&self, name: &str) {
        if let Err(err) = sluice_testkit::signal(self.child.id(), name) {
            panic!("{err:#}");
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, and the clean exit (status 0) a stop must end in.
    pub fn stop_cleanly(&mut self) {
        let status = self.terminate(Duration::from_secs(30));
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM must end sluice cleanly:\n{}",
            self.log()
        );
    }

    /// SIGTERM, then wait for the exit (bounded).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait(within)
    }

    /// Waits (up to 60 s) for sluice to stop by itself with exit 1, its log saying each of `said`; returns the log.
    pub fn fails_saying(&mut self, said: &[&str]) -> String {
        let status = self.wait(Duration::from_secs(60));
        let log = self.log();
        assert_eq!(status.code(), Some(1), "{log}");
        for text in said {
            assert!(log.contains(text), "expected `{text}` in the log:\n{log}");
        }
        log
    }

    /// Waits for sluice to exit by itself (bounded).
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Decodes a Confluent-framed Avro body with the schema `registry` holds for its id.
pub fn decode_registered(registry: &RegistryDouble, body: &[u8]) -> Json {
    let Some((SchemaRef::RegistryId(id), datum)) = SchemaRef::split(body) else {
        panic!("not Confluent-framed: {body:?}");
    };
    registered_schema(registry, id)
        .decode(datum)
        .unwrap_or_else(|err| panic!("decode with schema {id}: {err}"))
}

/// The registry double's schema `id`, parsed once per thread: a million-row topic decodes with a handful
/// of schemas.
fn registered_schema(registry: &RegistryDouble, id: u32) -> Arc<ParsedSchema> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<(String, u32), Arc<ParsedSchema>>> = Default::default();
    }
    let key = (registry.url(), id);
    if let Some(found) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return found;
    }
    let text = registry
        .schemas()
        .into_iter()
        .find(|(i, _)| *i == id)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("schema id {id} is not in the registry"));
    let parsed = Arc::new(
        ParsedSchema::parse(&format!("id {id}"), &text)
            .unwrap_or_else(|err| panic!("schema {id}: {err}")),
    );
    CACHE.with(|c| c.borrow_mut().insert(key, parsed.clone()));
    parsed
}

/// A decoded change event, reduced to what the tests compare.
#[derive(Debug, Clone)]
pub struct Event {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Json>,
    /// None for a tombstone.
    pub value: Option<Json>,
    pub headers: HashMap<String, String>,
}

impl Event {
    pub fn op(&self) -> Option<&str> {
        self.value.as_ref()?.get("op")?.as_str()
    }
    pub fn after(&self) -> Option<&Json> {
        self.value.as_ref()?.get("after").filter(|v| !v.is_null())
    }
    pub fn before(&self) -> Option<&Json> {
        self.value.as_ref()?.get("before").filter(|v| !v.is_null())
    }
}

pub fn decode_all(services: &Services, records: &[Record]) -> Vec<Event> {
    records
        .iter()
        .map(|r| Event {
            partition: r.partition,
            offset: r.offset,
            key: r.key.as_deref().map(|k| services.decode(k)),
            value: r.value.as_deref().map(|v| services.decode(v)),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        })
        .collect()
}
