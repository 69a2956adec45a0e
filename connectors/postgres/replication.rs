//! A streaming-replication connection: startup and authentication, the few replication commands sluice
//! needs, and the CopyBoth stream of WAL data and keepalives.
//!
//! tokio-postgres cannot open replication connections, so this speaks the protocol itself, reusing
//! `postgres-protocol` (rust-postgres' message codec and SCRAM) for the framing and the crypto. Owning the
//! socket lets the reader decide when to read (backpressure) while it keeps sending status updates.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use super::connection::{self, PgConnection, SslMode};
use sluice_core::event::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The longest message length a server sends: PostgreSQL builds each message in memory of at most 1 GiB
/// (MaxAllocSize). A longer one is a corrupt stream, and reading it would first reserve up to 4 GiB.
const MAX_MESSAGE_LEN: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot connect to PostgreSQL at {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("PostgreSQL asked for {0} authentication, which sluice does not support (use scram-sha-256, md5 or password)")]
    UnsupportedAuth(String),
    #[error("PostgreSQL asked for a password but the source URL has none")]
    PasswordMissing,
    #[error("{0}")]
    Server(#[from] ServerError),
    #[error("replication protocol error: {0}")]
    Protocol(String),
    #[error("connection to PostgreSQL failed: {0}")]
    Io(#[from] io::Error),
    #[error("PostgreSQL closed the replication connection")]
    Closed,
    #[error("TLS to PostgreSQL at {address}: {reason}")]
    Tls { address: String, reason: String },
}

impl ReplicationError {
    /// Worth reconnecting for: the connection failed or was cut, or the server is (re)starting.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::Io(_)
            | ReplicationError::Closed => true,
            ReplicationError::Server(err) => is_retryable_sqlstate(&err.code),
            _ => false,
        }
    }

    /// The server's SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(err) => Some(&err.code),
            _ => None,
        }
    }
}

/// Connection exceptions (08), operator intervention — shutdown, crash, starting up (57P), too many
/// connections (53300), and a slot still active for the server process of a cut connection (55006).
pub fn is_retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code == "53300" || code == "55006"
}

/// An ErrorResponse from the server.
#[derive(Debug, Clone, thiserror::Error)]
#[error("PostgreSQL error {code}: {message}{}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(), hint.as_deref().map(|h| format!("; hint: {h}")).unwrap_or_default())]
pub struct ServerError {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    fn from_body(body: &backend::ErrorResponseBody) -> ServerError {
        let mut error = ServerError {
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        error
    }
}

/// What the server sends once streaming.
#[derive(Debug)]
pub enum Frame {
    /// A chunk of decoded WAL: one pgoutput message.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// The server's position; `reply_requested` means it wants a status update now.
    Keepalive { wal_end: Lsn, reply_requested: bool },
    /// The server ended the stream.
    CopyDone,
}

/// How long a created slot lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotLifetime {
    /// Until dropped: it keeps the WAL a stopped reader has not read.
    Permanent,
    /// As long as the connection that created it.
    Temporary,
}

/// `CREATE_REPLICATION_SLOT`'s answer.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub consistent_point: Lsn,
    /// The exported snapshot, when one was asked for.
    pub snapshot_name: Option<String>,
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub wal_position: Lsn,
    pub database: Option<String>,
}

/// Fixed output formats for every connection whose text values sluice parses (the stream and snapshots):
/// the value decoders read ISO dates in UTC, round-trip floats and hex bytea.
pub const OUTPUT_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "iso_8601"),
    // money prints as `$1,234.50` whatever the server's locale.
    ("lc_monetary", "C"),
];

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

pub struct ReplicationConnection {
    stream: Box<dyn Stream>,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl ReplicationConnection {
    /// Opens a `replication=database` connection with the session settings the text decoders rely on.
    pub async fn connect(
        connection: &PgConnection,
    ) -> Result<ReplicationConnection, ReplicationError> {
        let config = &connection.config;
        let stream = open_stream(connection).await?;
        let mut conn = ReplicationConnection {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(256),
        };
        conn.startup(config).await?;
        Ok(conn)
    }

    async fn startup(&mut self, config: &tokio_postgres::Config) -> Result<(), ReplicationError> {
        let user = config.get_user().unwrap_or("postgres");
        let database = config.get_dbname().unwrap_or(user);
        let application = config.get_application_name().unwrap_or("sluice");
        let params = [
            ("user", user),
            ("database", database),
            ("replication", "database"),
            ("application_name", application),
            ("client_encoding", "UTF8"),
            // The connection that created a slot idles inside the transaction of the snapshot it exported
            // until streaming starts (the whole snapshot, for a temporary slot): a server-wide timeout
            // must not end it.
            ("idle_in_transaction_session_timeout", "0"),
        ];
        frontend::startup_message(
            params.iter().chain(OUTPUT_SETTINGS).copied(),
            &mut self.write_buf,
        )?;
        self.flush().await?;
        self.authenticate(user, config.get_password()).await?;
        let mut server_version = 0;
        loop {
            match self.next_message().await? {
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::ErrorResponse(body) => {
                    return Err(ServerError::from_body(&body).into())
                }
                backend::Message::ParameterStatus(status) if status.name()? == "server_version" => {
                    server_version = major_version(status.value()?);
                }
                _ => {}
            }
        }
        // Between commands (while the catalog work before a slot is created runs, or while a temporary
        // slot's connection waits for streaming) the connection is idle. The setting exists from
        // PostgreSQL 14 on; the startup packet cannot carry it to older servers.
        if server_version >= 14 {
            self.simple_query("SET idle_session_timeout = 0").await?;
        }
        Ok(())
    }

    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ReplicationError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_message().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    let password = password.ok_or(ReplicationError::PasswordMissing)?;
                    frontend::password_message(password, &mut self.write_buf)?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let password = password.ok_or(ReplicationError::PasswordMissing)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let password = password.ok_or(ReplicationError::PasswordMissing)?;
                    let mechanisms: Vec<String> =
                        body.mechanisms().map(|m| Ok(m.to_owned())).collect()?;
                    if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(ReplicationError::UnsupportedAuth(mechanisms.join(", ")));
                    }
                    // Channel binding needs TLS; without it the server accepts plain SCRAM-SHA-256.
                    let state = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        state.message(),
                        &mut self.write_buf,
                    )?;
                    scram = Some(state);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL continue before SASL start"))?;
                    state.update(body.data())?;
                    frontend::sasl_response(state.message(), &mut self.write_buf)?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL final before SASL start"))?;
                    state.finish(body.data())?;
                    continue;
                }
                backend::Message::ErrorResponse(body) => {
                    return Err(ServerError::from_body(&body).into())
                }
                backend::Message::AuthenticationGss | backend::Message::AuthenticationSspi => {
                    return Err(ReplicationError::UnsupportedAuth("GSSAPI/SSPI".into()))
                }
                backend::Message::AuthenticationKerberosV5 => {
                    return Err(ReplicationError::UnsupportedAuth("Kerberos V5".into()))
                }
                _ => return Err(protocol("unexpected message during authentication")),
            }
            self.flush().await?;
        }
    }

    /// Runs one simple-protocol command and returns its rows as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.next_message().await? {
                backend::Message::DataRow(body) => {
                    let buffer = body.buffer();
                    let row = body
                        .ranges()
                        .map(|range| {
                            Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()))
                        })
                        .collect()?;
                    rows.push(row);
                }
                backend::Message::ErrorResponse(body) => {
                    failure = Some(ServerError::from_body(&body))
                }
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match failure {
            Some(err) => Err(err.into()),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| protocol("IDENTIFY_SYSTEM returned no row"))?;
        let text = |i: usize| row.get(i).cloned().flatten();
        let wal_position = text(2).ok_or_else(|| protocol("IDENTIFY_SYSTEM without xlogpos"))?;
        Ok(SystemIdentity {
            system_id: text(0).unwrap_or_default(),
            timeline: text(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            wal_position: wal_position.parse().map_err(protocol)?,
            database: text(3),
        })
    }

    /// Creates a logical slot for pgoutput. Changes committed after its consistent point are streamed; with
    /// `export_snapshot`, the answer also names a snapshot of the database at exactly that point, which
    /// other connections can adopt (`SET TRANSACTION SNAPSHOT`) until this connection runs its next command.
    /// A temporary slot belongs to this connection: the server drops it when the connection ends.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        lifetime: SlotLifetime,
        export_snapshot: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        let snapshot = if export_snapshot {
            "EXPORT_SNAPSHOT"
        } else {
            "NOEXPORT_SNAPSHOT"
        };
        let temporary = match lifetime {
            SlotLifetime::Permanent => "",
            SlotLifetime::Temporary => " TEMPORARY",
        };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput {snapshot}",
            quote_ident(slot)
        );
        let rows = self.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| protocol("CREATE_REPLICATION_SLOT returned no row"))?;
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| protocol("CREATE_REPLICATION_SLOT returned no consistent point"))?
            .parse()
            .map_err(protocol)?;
        let snapshot_name = row.get(2).cloned().flatten();
        if export_snapshot && snapshot_name.is_none() {
            return Err(protocol("CREATE_REPLICATION_SLOT exported no snapshot"));
        }
        Ok(CreatedSlot {
            consistent_point,
            snapshot_name,
        })
    }

    /// Drops a slot, waiting for a previous user of it to let go.
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), ReplicationError> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(slot)))
            .await
            .map(drop)
    }

    /// Enters streaming. The server resumes at the later of `start` and the slot's confirmed position;
    /// with `messages`, logical decoding messages come too.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
        messages: bool,
    ) -> Result<(), ReplicationError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '1', \"publication_names\" {}{})",
            quote_ident(slot),
            start,
            quote_literal(&quote_ident(publication)),
            if messages { ", \"messages\" 'true'" } else { "" },
        );
        frontend::query(&sql, &mut self.write_buf)?;
        self.flush().await?;
        loop {
            if self.take_copy_both_response().await? {
                return Ok(());
            }
            match self.next_message().await? {
                backend::Message::ErrorResponse(body) => {
                    let err = ServerError::from_body(&body);
                    // Drain to ReadyForQuery so the connection stays usable for the caller's next step.
                    while !matches!(
                        self.next_message().await?,
                        backend::Message::ReadyForQuery(_)
                    ) {}
                    return Err(err.into());
                }
                backend::Message::NoticeResponse(_) | backend::Message::ParameterStatus(_) => {}
                _ => return Err(protocol("unexpected answer to START_REPLICATION")),
            }
        }
    }

    /// The next frame of the replication stream. Cancel-safe: bytes read before a cancellation stay buffered.
    pub async fn next_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if let Some(frame) = parse_frame(&mut self.read_buf)? {
                return Ok(frame);
            }
            self.read_more().await?;
        }
    }

    /// Standby status update: `flushed` is what the server may forget (confirmed_flush_lsn of the slot).
    pub async fn send_status(
        &mut self,
        flushed: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        let payload = standby_status_update(flushed, now_pg_micros(), reply_requested);
        self.write_buf.put_u8(b'd');
        self.write_buf.put_i32(4 + payload.len() as i32);
        self.write_buf.put_slice(&payload);
        self.flush().await
    }

    /// Ends streaming politely: CopyDone, then Terminate.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::copy_done(&mut self.write_buf);
        frontend::terminate(&mut self.write_buf);
        self.flush().await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// postgres-protocol has no CopyBothResponse ('W'), the answer that starts streaming: recognise it here.
    /// Returns false, consuming nothing, when the next message is something else.
    async fn take_copy_both_response(&mut self) -> Result<bool, ReplicationError> {
        loop {
            if self.read_buf.len() >= 5 {
                if self.read_buf[0] != b'W' {
                    return Ok(false);
                }
                let len = u32::from_be_bytes([
                    self.read_buf[1],
                    self.read_buf[2],
                    self.read_buf[3],
                    self.read_buf[4],
                ]);
                if len > MAX_MESSAGE_LEN {
                    return Err(protocol(format!(
                        "a CopyBothResponse of {len} bytes, longer than a server sends"
                    )));
                }
                let total = len as usize + 1;
                if self.read_buf.len() >= total {
                    self.read_buf.advance(total);
                    return Ok(true);
                }
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.stream.write_all(&self.write_buf).await?;
        self.write_buf.clear();
        self.stream.flush().await?;
        Ok(())
    }

    async fn next_message(&mut self) -> Result<backend::Message, ReplicationError> {
        loop {
            if let Some(message) = parse_message(&mut self.read_buf)? {
                return Ok(message);
            }
            self.read_more().await?;
        }
    }

    /// Reads what the server sent next into the buffer; an error when the connection closed.
    async fn read_more(&mut self) -> Result<(), ReplicationError> {
        // Grow for large messages (a wide row) instead of reading in tiny steps.
        if let Ok(Some(header)) = backend::Header::parse(&self.read_buf) {
            let wanted = header.len() as usize + 1;
            if wanted > self.read_buf.capacity() {
                self.read_buf.reserve(wanted - self.read_buf.len());
            }
        }
        if self.read_buf.capacity() - self.read_buf.len() < 8 * 1024 {
            self.read_buf.reserve(64 * 1024);
        }
        if self.stream.read_buf(&mut self.read_buf).await? == 0 {
            return Err(ReplicationError::Closed);
        }
        Ok(())
    }
}

/// The major version in `server_version` ("15.4 (Debian 15.4-1)" → 15); 0 when it cannot be read.
fn major_version(server_version: &str) -> u32 {
    server_version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or(0)
}

const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// TCP keepalives as the URL asks (`keepalives`, `keepalives_idle`, `keepalives_interval`,
/// `keepalives_retries`; on by default, as in libpq), so that a connection a network device dropped
/// silently is noticed.
fn set_keepalive(
    stream: &tokio::net::TcpStream,
    config: &tokio_postgres::Config,
) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    if !config.get_keepalives() {
        return socket.set_keepalive(false);
    }
    let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        keepalive = keepalive.with_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        keepalive = keepalive.with_retries(retries);
    }
    socket.set_tcp_keepalive(&keepalive)
}

async fn open_stream(connection: &PgConnection) -> Result<Box<dyn Stream>, ReplicationError> {
    let config = &connection.config;
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let mut last_error = None;
    for (i, host) in hosts.iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        match host {
            Host::Tcp(name) => {
                let address = format!("{name}:{port}");
                // Like libpq, `connect_timeout` bounds each host; without it an unanswered SYN waits for
                // the kernel's retries (minutes).
                let timeout = config
                    .get_connect_timeout()
                    .copied()
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
                let connected =
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address))
                        .await
                        .unwrap_or_else(|_| {
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no answer within {timeout:?}"),
                            ))
                        });
                match connected {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        set_keepalive(&stream, config)?;
                        return start_tls(stream, name, &address, connection).await;
                    }
                    Err(source) => last_error = Some(ReplicationError::Connect { address, source }),
                }
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(stream) => return Ok(Box::new(stream)),
                    Err(source) => {
                        last_error = Some(ReplicationError::Connect {
                            address: path.display().to_string(),
                            source,
                        })
                    }
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| protocol("the source URL names no host")))
}

/// The SSLRequest code: asks the server to switch the connection to TLS before the startup message.
const SSL_REQUEST_CODE: i32 = 80_877_103;

/// Switches a fresh TCP connection to TLS when `sslmode` asks for it: what libpq and tokio-postgres do
/// before the startup message. A server without TLS answers `N`: fine for prefer, an error otherwise.
async fn start_tls(
    mut stream: tokio::net::TcpStream,
    host: &str,
    address: &str,
    connection: &PgConnection,
) -> Result<Box<dyn Stream>, ReplicationError> {
    let Some(tls) = connection.tls.client_config() else {
        return Ok(Box::new(stream));
    };
    let tls_error = |reason: String| ReplicationError::Tls {
        address: address.to_owned(),
        reason,
    };
    let mut request = BytesMut::with_capacity(8);
    request.put_i32(8);
    request.put_i32(SSL_REQUEST_CODE);
    stream.write_all(&request).await?;
    match stream.read_u8().await? {
        b'S' => {}
        b'N' if connection.tls.mode == SslMode::Prefer => return Ok(Box::new(stream)),
        b'N' => {
            return Err(tls_error(format!(
                "the server does not accept TLS connections, and sslmode={} requires one (enable ssl on \
                 the server, or use sslmode=prefer or disable on a trusted network)",
                connection.tls.mode.as_str()
            )))
        }
        other => return Err(tls_error(format!("unexpected answer {other:#x} to the TLS request"))),
    }
    let name = connection::server_name(host).map_err(|err| tls_error(err.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(|err| tls_error(err.to_string()))?;
    Ok(Box::new(stream))
}

/// The next frame of the replication stream in `buf`, taking its bytes out of it: None until `buf` holds a
/// whole message. Notices and parameter changes are taken out and passed over. Pure (the reader's I/O is
/// around it), so that the fuzz target in `fuzz/` reaches it.
pub fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ReplicationError> {
    while let Some(message) = parse_message(buf)? {
        match message {
            backend::Message::CopyData(body) => {
                return parse_copy_data(body.into_bytes()).map(Some)
            }
            backend::Message::CopyDone => return Ok(Some(Frame::CopyDone)),
            backend::Message::ErrorResponse(body) => {
                return Err(ServerError::from_body(&body).into())
            }
            backend::Message::NoticeResponse(_) | backend::Message::ParameterStatus(_) => {}
            // A walsender told to shut down (a server stop or restart) sends what it has, then ends
            // the COPY with CommandComplete and closes: the same as a lost connection.
            backend::Message::CommandComplete(_) => return Err(ReplicationError::Closed),
            _ => return Err(protocol("unexpected message in the replication stream")),
        }
    }
    Ok(None)
}

/// The next whole backend message in `buf`, taking it out; None until it is all there. A length beyond
/// what a server sends is an error before anything is reserved for it.
fn parse_message(buf: &mut BytesMut) -> Result<Option<backend::Message>, ReplicationError> {
    if let [_, a, b, c, d, ..] = buf[..] {
        let len = u32::from_be_bytes([a, b, c, d]);
        if len > MAX_MESSAGE_LEN {
            return Err(protocol(format!(
                "a message of {len} bytes, longer than a server sends (1 GiB at most)"
            )));
        }
    }
    Ok(backend::Message::parse(buf)?)
}

fn parse_copy_data(mut data: Bytes) -> Result<Frame, ReplicationError> {
    if data.is_empty() {
        return Err(protocol("empty CopyData message"));
    }
    match data.get_u8() {
        b'w' if data.len() >= 24 => {
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(Frame::XLogData {
                wal_start,
                wal_end,
                data,
            })
        }
        b'k' if data.len() >= 17 => {
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(Frame::Keepalive {
                wal_end,
                reply_requested: data.get_u8() == 1,
            })
        }
        b'w' | b'k' => Err(protocol("truncated XLogData or keepalive message")),
        other => Err(protocol(format!(
            "unknown replication message type {:?}",
            other as char
        ))),
    }
}

/// The payload of a standby status update ('r'): written, flushed and applied positions, the client's clock.
fn standby_status_update(flushed: Lsn, clock_pg_micros: i64, reply_requested: bool) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    // Written = flushed = applied: sluice reports only what the broker acknowledged.
    out[1..9].copy_from_slice(&flushed.0.to_be_bytes());
    out[9..17].copy_from_slice(&flushed.0.to_be_bytes());
    out[17..25].copy_from_slice(&flushed.0.to_be_bytes());
    out[25..33].copy_from_slice(&clock_pg_micros.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

fn now_pg_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since_unix.as_micros() as i64 - PG_EPOCH_OFFSET_US
}

fn protocol(message: impl Into<String>) -> ReplicationError {
    ReplicationError::Protocol(message.into())
}

/// Double-quotes an identifier for SQL and replication commands.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Single-quotes a string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_reads_what_servers_report() {
        assert_eq!(major_version("15.4 (Debian 15.4-1.pgdg120+1)"), 15);
        assert_eq!(major_version("14beta2"), 14);
        assert_eq!(major_version("9.6.24"), 9);
        assert_eq!(major_version(""), 0);
    }

    #[test]
    fn keepalive_and_xlogdata_parse() {
        let mut keepalive = vec![b'k'];
        keepalive.extend_from_slice(&0x1_0000_0020u64.to_be_bytes());
        keepalive.extend_from_slice(&7i64.to_be_bytes());
        keepalive.push(1);
        match parse_copy_data(Bytes::from(keepalive)).unwrap() {
            Frame::Keepalive {
                wal_end,
                reply_requested,
            } => {
                assert_eq!(wal_end, Lsn(0x1_0000_0020));
                assert!(reply_requested);
            }
            other => panic!("{other:?}"),
        }
        let mut xlog = vec![b'w'];
        xlog.extend_from_slice(&10u64.to_be_bytes());
        xlog.extend_from_slice(&20u64.to_be_bytes());
        xlog.extend_from_slice(&0i64.to_be_bytes());
        xlog.extend_from_slice(b"B...");
        match parse_copy_data(Bytes::from(xlog)).unwrap() {
            Frame::XLogData {
                wal_start,
                wal_end,
                data,
            } => {
                assert_eq!((wal_start, wal_end), (Lsn(10), Lsn(20)));
                assert_eq!(&data[..], b"B...");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_copy_data(Bytes::from_static(b"k\0\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"x")).is_err());
        assert!(parse_copy_data(Bytes::new()).is_err());
    }

    #[test]
    fn frames_are_taken_out_whole_and_notices_passed_over() {
        let mut buf = BytesMut::new();
        // A ParameterStatus, CopyData with a keepalive, CopyDone, then half a message.
        buf.extend_from_slice(b"S\0\0\0\x08a\0b\0");
        buf.extend_from_slice(b"d\0\0\0\x16k");
        buf.extend_from_slice(&[0; 16]);
        buf.extend_from_slice(&[1]);
        buf.extend_from_slice(b"c\0\0\0\x04d\0");
        assert!(matches!(
            parse_frame(&mut buf).unwrap(),
            Some(Frame::Keepalive {
                reply_requested: true,
                ..
            })
        ));
        assert!(matches!(
            parse_frame(&mut buf).unwrap(),
            Some(Frame::CopyDone)
        ));
        assert!(parse_frame(&mut buf).unwrap().is_none());
        assert_eq!(&buf[..], b"d\0");
    }

    #[test]
    fn a_length_beyond_what_a_server_sends_is_an_error() {
        // Found by the replication_stream fuzz target (fuzz/): the server's length was reserved before
        // the message was read, 3 GiB here.
        let mut buf = BytesMut::from(&[b'd', 0xC8, 0, 0, 0x36, b'w', 0, 0][..]);
        let err = parse_frame(&mut buf).unwrap_err();
        assert_eq!(
            err.to_string(),
            "replication protocol error: a message of 3355443254 bytes, longer than a server sends (1 GiB at most)"
        );
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn status_update_layout() {
        let payload = standby_status_update(Lsn(0x0102_0304_0506_0708), 99, false);
        assert_eq!(payload[0], b'r');
        for at in [1, 9, 17] {
            assert_eq!(&payload[at..at + 8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        }
        assert_eq!(i64::from_be_bytes(payload[25..33].try_into().unwrap()), 99);
        assert_eq!(payload[33], 0);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("my\"slot"), "\"my\"\"slot\"");
        assert_eq!(quote_literal("o'neil"), "'o''neil'");
    }
}
