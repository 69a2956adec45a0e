//! A private tansu broker (Kafka protocol) per test: own port, own SQLite storage in a temporary
//! directory, killed on drop.
//!
//! tansu differs from Kafka in ways tests must respect: producing does not create topics (use
//! `create_topics`), there are no transactions, snappy-compressed batches cannot be fetched (use lz4 or
//! zstd), and DeleteTopics deletes every topic — never call it.

mod read;
mod tls_front;

pub use read::{read_topic, Record};

use std::fs::OpenOptions;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tempfile::TempDir;

use crate::log_tail::log_tail;
use tls_front::TlsFront;

const TANSU_VERSION: &str = "0.6.0";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a start is tried when the chosen port turns out to be taken.
const START_ATTEMPTS: u32 = 3;
/// What tansu logs when its port is taken (it then exits with status 0).
const ADDR_IN_USE: &str = "Address already in use";
/// How long a created topic may take to show up in metadata with all its partitions.
const TOPIC_VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running tansu broker listening on 127.0.0.1. Dropping it kills the process (even when frozen) and
/// deletes its storage.
pub struct Tansu {
    child: Child,
    /// tansu's own listener.
    port: u16,
    /// How clients reach it: tansu's listener, or the TLS front it advertises.
    access: Access,
    /// Working directory of the broker: its SQLite database and its log. Removed after the kill.
    dir: TempDir,
    _front: Option<TlsFront>,
}

/// How a client reaches a broker: the address it advertises and, for a secured one, the librdkafka
/// properties of TLS and SASL.
#[derive(Clone, Debug)]
pub struct Access {
    pub bootstrap: String,
    pub properties: Vec<(String, String)>,
}

impl Access {
    /// A librdkafka configuration with the address and the security properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

impl From<&str> for Access {
    fn from(bootstrap: &str) -> Access {
        Access {
            bootstrap: bootstrap.to_owned(),
            properties: Vec::new(),
        }
    }
}

impl From<&String> for Access {
    fn from(bootstrap: &String) -> Access {
        Access::from(bootstrap.as_str())
    }
}

/// How a broker started by [`Tansu::start_secured`] is protected.
#[derive(Default)]
pub struct Security {
    /// Serve TLS with this certificate and key (PEM files) through a [`TlsFront`]; the harness's own
    /// clients trust `ca`.
    pub tls: Option<TlsFiles>,
    /// SCRAM users, created before tansu starts requiring authentication; the harness logs in as the
    /// first.
    pub scram_users: Vec<ScramUser>,
}

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Require a client certificate this authority signed.
    pub client_ca: Option<PathBuf>,
    /// The client certificate and key the harness presents to a broker that requires one.
    pub client: Option<(PathBuf, PathBuf)>,
}

pub struct ScramUser {
    pub name: String,
    pub password: String,
    pub mechanism: Scram,
}

/// The SASL mechanisms tansu 0.6 authenticates (it offers no PLAIN).
#[derive(Clone, Copy, Debug)]
pub enum Scram {
    Sha256,
    Sha512,
}

impl Scram {
    /// The name librdkafka's `sasl.mechanisms` takes.
    pub fn mechanism(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn tansu_name(self) -> &'static str {
        match self {
            Scram::Sha256 => "scram256",
            Scram::Sha512 => "scram512",
        }
    }
}

impl Security {
    /// The properties a client of a broker so protected needs, logging in as `user`.
    pub fn client_properties(&self, user: Option<&ScramUser>) -> Vec<(String, String)> {
        let protocol = match (&self.tls, user) {
            (None, None) => return Vec::new(),
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        let mut properties = vec![("security.protocol".to_owned(), protocol.to_owned())];
        if let Some(tls) = &self.tls {
            properties.push(("ssl.ca.location".into(), tls.ca.display().to_string()));
            if let Some((cert, key)) = &tls.client {
                properties.push((
                    "ssl.certificate.location".into(),
                    cert.display().to_string(),
                ));
                properties.push(("ssl.key.location".into(), key.display().to_string()));
            }
        }
        if let Some(user) = user {
            properties.extend([
                ("sasl.mechanisms".into(), user.mechanism.mechanism().into()),
                ("sasl.username".into(), user.name.clone()),
                ("sasl.password".into(), user.password.clone()),
            ]);
        }
        properties
    }
}

impl Tansu {
    /// Starts a broker and waits until it answers a metadata request.
    pub fn start() -> Result<Tansu> {
        Tansu::start_secured(&Security::default())
    }

    /// Starts a broker behind TLS, requiring SCRAM authentication, or both, as `security` says.
    pub fn start_secured(security: &Security) -> Result<Tansu> {
        let binary = tansu_binary()?;
        let mut attempt = 1;
        loop {
            match Tansu::start_once(&binary, crate::free_port(), security) {
                // Between free_port() and the bind, another process may take the port: try another.
                Err(err)
                    if attempt < START_ATTEMPTS && format!("{err:#}").contains(ADDR_IN_USE) =>
                {
                    attempt += 1
                }
                result => return result,
            }
        }
    }

    fn start_once(binary: &Path, port: u16, security: &Security) -> Result<Tansu> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-tansu-")
            .tempdir()
            .context("creating a temporary directory for tansu")?;
        let front = match &security.tls {
            Some(tls) => Some(TlsFront::start(
                &tls.cert,
                &tls.key,
                tls.client_ca.as_deref(),
                port,
            )?),
            None => None,
        };
        let advertised = front.as_ref().map_or(port, TlsFront::port);
        if !security.scram_users.is_empty() {
            // tansu stores users through the Kafka protocol, which it refuses to anyone unauthenticated
            // once authentication is on: create them first, on a broker without it.
            let mut child = spawn(binary, dir.path(), port, port, false)?;
            let created = wait_until_ready(&mut child, dir.path(), &Access::from(&local(port)))
                .and_then(|()| create_users(binary, port, &security.scram_users));
            let _ = child.kill();
            let _ = child.wait();
            created?;
        }
        let access = Access {
            bootstrap: local(advertised),
            properties: security.client_properties(security.scram_users.first()),
        };
        let authentication = !security.scram_users.is_empty();
        let child = spawn(binary, dir.path(), port, advertised, authentication)?;
        let mut broker = Tansu {
            child,
            port,
            access,
            dir,
            _front: front,
        };
        wait_until_ready(&mut broker.child, broker.dir.path(), &broker.access)?;
        broker.index_record_headers()?;
        Ok(broker)
    }

    /// The `bootstrap.servers` value for clients: `127.0.0.1:PORT` (the TLS front's port if it has one).
    pub fn bootstrap(&self) -> String {
        self.access.bootstrap.clone()
    }

    /// The address and security properties the harness's clients use.
    pub fn access(&self) -> Access {
        self.access.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// Creates topics with `partitions` partitions each (replication factor 1) and waits until metadata
    /// shows them. Topics that already exist are fine.
    pub async fn create_topics(&self, names: &[&str], partitions: i32) -> Result<()> {
        let admin = admin_client(&self.access)?;
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(&topics, &options)
            .await
            .with_context(|| format!("CreateTopics {names:?} on tansu at {}", self.bootstrap()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("tansu refused to create topic `{topic}`: {code}"),
            }
        }
        let access = self.access.clone();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        // Metadata calls block: keep them off the runtime's threads, which may be driving the code under test.
        tokio::task::spawn_blocking(move || wait_for_topics(&access, &names, partitions))
            .await
            .context("the topic-metadata check panicked")?
    }

    /// Suspends the broker (SIGSTOP): connections stay open but nothing is answered, as with a hung broker.
    pub fn freeze(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// Resumes a frozen broker (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        crate::signal(self.child.id(), signal).context("signalling tansu")
    }

    /// tansu 0.6 keeps record headers in a table without an index and looks them up once per fetched
    /// record, so reading a topic back costs time quadratic in the headers the broker holds (20,000
    /// messages with one header each: 20 s). The index its schema lacks makes that lookup a seek. It
    /// changes how fast the broker finds headers, not what it stores or returns.
    fn index_record_headers(&self) -> Result<()> {
        let database = self.dir.path().join("tansu.db");
        let output = Command::new("sqlite3")
            .arg(&database)
            // The broker holds the database open: wait for its locks instead of failing on them.
            .args([".timeout 10000", HEADER_INDEX])
            .output()
            .context("running sqlite3 (scripts/provision.sh installs it)")?;
        if !output.status.success() {
            bail!(
                "indexing the broker's record headers in {} failed: {}",
                database.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Starts tansu in `dir` on `port`, advertising `advertised` (a TLS front's port, or its own).
fn spawn(
    binary: &Path,
    dir: &Path,
    port: u16,
    advertised: u16,
    authentication: bool,
) -> Result<Child> {
    let log_path = dir.join("tansu.log");
    // Appended to: a broker that first ran to have its users created keeps that run's log.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(binary);
    command
        .arg("broker")
        .args(["--listener-url", &format!("tcp://{}", local(port))])
        .args([
            "--advertised-listener-url",
            &format!("tcp://{}", local(advertised)),
        ])
        .args(["--storage-engine", "sqlite://tansu.db"]);
    if authentication {
        command.arg("--authentication");
    }
    command
        // The storage URL is relative: the database lands in the broker's own directory.
        .current_dir(dir)
        // Ambient settings for these must not turn on schema validation or telemetry export.
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        // Plain log lines, no ANSI colours, in the log tails of error messages.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("duplicating the tansu log handle")?,
        )
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))
}

/// Waits until the broker answers a metadata request through `access`.
fn wait_until_ready(child: &mut Child, dir: &Path, access: &Access) -> Result<()> {
    let log_path = dir.join("tansu.log");
    let started = Instant::now();
    let mut last_problem = String::from("the port does not accept connections yet");
    while started.elapsed() < START_TIMEOUT {
        if let Some(status) = child.try_wait().context("checking the tansu process")? {
            // Checked in the whole log: a backtrace may follow the error line.
            if std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains(ADDR_IN_USE)
            {
                bail!("tansu could not listen on its port: {ADDR_IN_USE}");
            }
            bail!(
                "tansu exited during startup ({status})\n{}",
                log_tail(&log_path, 30)
            );
        }
        match probe(access) {
            Ok(()) => return Ok(()),
            Err(problem) => last_problem = format!("{problem:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "tansu did not become ready on {} within {START_TIMEOUT:?}: {last_problem}\n{}",
        access.bootstrap,
        log_tail(&log_path, 30)
    )
}

/// Ready means: the address accepts TCP and a metadata request lists a broker.
fn probe(access: &Access) -> Result<()> {
    let address: std::net::SocketAddr =
        access.bootstrap.parse().context("the bootstrap address")?;
    TcpStream::connect_timeout(&address, Duration::from_secs(1))
        .context("connecting to the listener")?;
    let admin = admin_client(access)?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(2))
        .context("fetching cluster metadata")?;
    if metadata.brokers().is_empty() {
        bail!("metadata lists no brokers");
    }
    Ok(())
}

/// Stores SCRAM credentials with `tansu user create`, through the broker on `port`.
fn create_users(binary: &Path, port: u16, users: &[ScramUser]) -> Result<()> {
    for user in users {
        let mut child = Command::new(binary)
            .args([
                "user",
                "create",
                "--broker",
                &format!("tcp://{}", local(port)),
            ])
            .args(["--mechanism", user.mechanism.tansu_name()])
            .args([&user.name, &user.password])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running tansu user create")?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for tansu user create")? {
                break status;
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                bail!(
                    "tansu user create {} did not finish within {START_TIMEOUT:?}",
                    user.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            bail!("tansu user create {} failed: {}", user.name, stderr.trim());
        }
    }
    Ok(())
}

/// The index tansu's header lookup (`r.offset_id = $4` joined on topition and offset) needs.
const HEADER_INDEX: &str =
    "create index if not exists header_by_record on header (topition, offset_id);";

/// The tansu binary: `$SLUICE_TANSU`, else where scripts/provision.sh installs it.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_TANSU") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "SLUICE_TANSU points at {}, which is not a file",
                path.display()
            );
        }
        return Ok(path);
    }
    let path = crate::cache_dir()?
        .join(format!("tansu-{TANSU_VERSION}"))
        .join("bin")
        .join("tansu");
    if !path.is_file() {
        bail!(
            "tansu {TANSU_VERSION} is not installed at {}: run scripts/provision.sh (or set SLUICE_TANSU)",
            path.display()
        );
    }
    Ok(path)
}

fn admin_client(access: &Access) -> Result<AdminClient<DefaultClientContext>> {
    access
        .client_config()
        .create()
        .with_context(|| format!("creating a Kafka admin client for {}", access.bootstrap))
}

/// Blocks until metadata shows every topic with `partitions` partitions.
fn wait_for_topics(access: &Access, names: &[String], partitions: i32) -> Result<()> {
    let admin = admin_client(access)?;
    let started = Instant::now();
    for name in names {
        loop {
            let seen = admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(2))
                .ok()
                .and_then(|metadata| {
                    metadata
                        .topics()
                        .first()
                        .filter(|t| t.error().is_none())
                        .map(|t| t.partitions().len())
                })
                .unwrap_or(0);
            if seen as i32 >= partitions {
                break;
            }
            if started.elapsed() > TOPIC_VISIBLE_TIMEOUT {
                bail!("topic `{name}` shows {seen} of {partitions} partitions in metadata after {TOPIC_VISIBLE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    fn producer(bootstrap: &str) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap()
    }

    #[tokio::test]
    async fn a_produced_message_is_read_back() {
        let broker = Tansu::start().unwrap();
        broker.create_topics(&["orders"], 3).await.unwrap();
        // Creating again is tolerated.
        broker.create_topics(&["orders"], 3).await.unwrap();

        let headers = OwnedHeaders::new().insert(Header {
            key: "op",
            value: Some("c".as_bytes()),
        });
        let record = FutureRecord::to("orders")
            .key("k1")
            .payload("v1")
            .partition(1)
            .headers(headers);
        producer(&broker.bootstrap())
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(err, _)| err)
            .unwrap();

        let records = read_topic(&broker.bootstrap(), "orders", 1, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0];
        assert_eq!(
            (record.topic.as_str(), record.partition, record.offset),
            ("orders", 1, 0)
        );
        assert_eq!(record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"v1"[..]));
        assert_eq!(record.headers, vec![("op".to_owned(), b"c".to_vec())]);
    }

    #[tokio::test]
    async fn read_topic_returns_what_it_has_at_the_timeout() {
        let broker = Tansu::start().unwrap();
        broker.create_topics(&["sparse"], 1).await.unwrap();
        let producer = producer(&broker.bootstrap());
        for i in 0..3 {
            let payload = format!("m{i}");
            producer
                .send(
                    FutureRecord::<(), _>::to("sparse").payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        let started = Instant::now();
        let records = read_topic(&broker.bootstrap(), "sparse", 5, Duration::from_secs(4))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(4));
        let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(values, vec![b"m0".to_vec(), b"m1".to_vec(), b"m2".to_vec()]);
        assert_eq!(
            records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[tokio::test]
    async fn a_frozen_broker_stops_answering_until_thawed() {
        let broker = Tansu::start().unwrap();
        broker.create_topics(&["t"], 1).await.unwrap();
        broker.freeze().unwrap();
        let bootstrap = broker.bootstrap();
        let frozen = tokio::task::spawn_blocking(move || {
            admin_client(&Access::from(&bootstrap))
                .unwrap()
                .inner()
                .fetch_metadata(Some("t"), Duration::from_secs(2))
                .is_err()
        });
        assert!(frozen.await.unwrap(), "a frozen broker answered metadata");
        broker.thaw().unwrap();
        broker.create_topics(&["t"], 1).await.unwrap();
    }

    #[test]
    fn a_taken_port_is_reported_as_such() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = Tansu::start_once(&tansu_binary().unwrap(), port, &Security::default())
            .err()
            .expect("the port is taken");
        assert!(format!("{err:#}").contains(ADDR_IN_USE), "{err:#}");
    }

    #[test]
    fn drop_kills_the_broker() {
        let broker = Tansu::start().unwrap();
        let port = broker.port();
        broker.freeze().unwrap();
        drop(broker);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts"
        );
    }
}
