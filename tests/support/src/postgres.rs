//! Private PostgreSQL 15 clusters for tests: one initdb'd data directory per cluster, its own port and
//! socket directory, configured for logical decoding, stopped and deleted on drop.
//!
//! TCP connections authenticate with SCRAM-SHA-256 and a per-cluster password, so the code under test
//! goes through the same authentication as in production; the Unix socket (used by `psql` fixtures)
//! trusts local users.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::log_tail::log_tail;

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The database superuser, and the OS user the server runs as when we are root.
const POSTGRES_USER: &str = "postgres";
/// Seconds pg_ctl waits for a start or stop before giving up.
const PG_CTL_TIMEOUT: &str = "60";

/// How often a start is tried when the chosen port turns out to be taken.
const START_ATTEMPTS: u32 = 3;
const ADDR_IN_USE: &str = "Address already in use";

/// Server settings every test cluster gets; `start_with` settings are appended after them and win.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("wal_level", "logical"),
    ("max_replication_slots", "10"),
    ("max_wal_senders", "10"),
    ("listen_addresses", "127.0.0.1"),
    // Durability is pointless for a throwaway cluster and fsync makes tests slow.
    ("fsync", "off"),
    ("shared_buffers", "64MB"),
];

/// The server's current WAL insert position, as text (`0/1925588`): where the writes so far end.
pub async fn current_wal_lsn(client: &tokio_postgres::Client) -> Result<String> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("asking for pg_current_wal_lsn()")?;
    Ok(row.get(0))
}

/// Where a PostgreSQL 15 program (`initdb`, `pg_recvlogical`, …) is installed.
pub fn program_path(program: &str) -> PathBuf {
    Path::new(BIN_DIR).join(program)
}

/// A running PostgreSQL cluster in a temporary directory. Dropping it stops the server (immediate mode)
/// and deletes the directory.
pub struct PgCluster {
    /// Holds the data directory, the socket and the server log; removed on drop, after the stop.
    dir: TempDir,
    port: u16,
    password: String,
}

impl PgCluster {
    /// Starts a cluster with the standard test settings (`wal_level=logical` and friends).
    pub fn start() -> Result<PgCluster> {
        PgCluster::start_with(&[])
    }

    /// Starts a cluster with extra `postgresql.conf` settings, which override the standard ones
    /// (e.g. `("wal_level", "replica")` for a cluster that cannot do logical decoding).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<PgCluster> {
        let mut attempt = 1;
        loop {
            match PgCluster::start_once(settings, crate::free_port()) {
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

    fn start_once(settings: &[(&str, &str)], port: u16) -> Result<PgCluster> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .context("creating a temporary directory for a PostgreSQL cluster")?;
        let cluster = PgCluster {
            dir,
            port,
            password: crate::random_hex(),
        };
        // From here on, Drop stops whatever got started if a later step fails.
        cluster.init()?;
        cluster.configure(settings)?;
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (user `postgres`), required on TCP connections.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A connection URL for database `db` over TCP, with the superuser's credentials.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{POSTGRES_USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log (what pg_ctl redirects the server's output to).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Where the server puts its Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects to `db` over TCP (SCRAM) as the superuser; the connection runs on a spawned tokio task.
    pub async fn client(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .with_context(|| {
                format!(
                    "connecting to database `{db}` at 127.0.0.1:{} as postgres",
                    self.port
                )
            })?;
        // Errors of the connection (e.g. the server restarting) surface on the client's next call.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn create_database(&self, name: &str) -> Result<()> {
        let client = self.client("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .with_context(|| format!("creating database `{name}`"))
    }

    /// Runs `sql` with psql over the Unix socket and returns its output: unaligned, tuples only, command
    /// tags suppressed, so `SHOW wal_level` gives `logical`. Statements run one by one (not in one
    /// transaction) and the first error fails the call.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let port = self.port.to_string();
        let mut child = self
            .pg_command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .args(["-h".as_ref(), self.socket_dir().as_os_str()])
            .args(["-p", &port, "-U", POSTGRES_USER, "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning psql")?;
        // Closing stdin (dropping it) is what tells psql the script is complete.
        child
            .stdin
            .take()
            .expect("psql stdin is piped")
            .write_all(sql.as_bytes())
            .context("writing SQL to psql")?;
        let output = child.wait_with_output().context("waiting for psql")?;
        if !output.status.success() {
            bail!(
                "psql on database `{db}` failed ({}): {}\nSQL:\n{sql}",
                output.status,
                describe(&output)
            );
        }
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Stops the server cleanly (fast mode: sessions are disconnected, a shutdown checkpoint is written).
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server without a shutdown checkpoint, as a crash would; the next start runs recovery.
    pub fn crash(&self) -> Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// Restarts the server (or starts it after `stop`/`crash`): same port, same data.
    pub fn restart(&self) -> Result<()> {
        let output = self
            .pg_ctl()
            .args(["-l".as_ref(), self.log_path().as_os_str()])
            .args(["restart", "-m", "fast"])
            .output()
            .context("running pg_ctl restart")?;
        if !output.status.success() {
            bail!(
                "pg_ctl restart failed ({}): {}\n{}",
                output.status,
                describe(&output),
                log_tail(&self.log_path(), 30)
            );
        }
        Ok(())
    }

    /// Writes `contents` into the data directory as `name`, owned by the server's user and readable by it
    /// alone (what the server demands of a private key); returns the path.
    pub fn install_file(&self, name: &str, contents: &[u8]) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
        if running_as_root() {
            let output = Command::new("chown")
                .arg(format!("{POSTGRES_USER}:"))
                .arg(&path)
                .output()
                .context("running chown")?;
            if !output.status.success() {
                bail!("chown of {} failed: {}", path.display(), describe(&output));
            }
        }
        Ok(path)
    }

    /// Puts `lines` before the other pg_hba.conf rules (the first matching rule wins) and reloads.
    pub fn prepend_hba(&self, lines: &[&str]) -> Result<()> {
        let path = self.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        std::fs::write(&path, format!("{}\n{old}", lines.join("\n")))
            .with_context(|| format!("writing {}", path.display()))?;
        self.reload()
    }

    /// Makes the server read its configuration files again (pg_ctl reload).
    pub fn reload(&self) -> Result<()> {
        let output = self
            .pg_ctl()
            .arg("reload")
            .output()
            .context("running pg_ctl reload")?;
        if !output.status.success() {
            bail!("pg_ctl reload failed: {}", describe(&output));
        }
        Ok(())
    }

    fn init(&self) -> Result<()> {
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, &self.password)
            .context("writing the superuser password file for initdb")?;
        if running_as_root() {
            // The server refuses to run as root, so its user must own the directory (and read the pwfile).
            let output = Command::new("chown")
                .args(["-R", &format!("{POSTGRES_USER}:")])
                .arg(self.dir.path())
                .output()
                .context("running chown")?;
            if !output.status.success() {
                bail!(
                    "chown of {} to the `{POSTGRES_USER}` user failed: {}",
                    self.dir.path().display(),
                    describe(&output)
                );
            }
        }
        let output = self
            .pg_command("initdb")
            .args(["-D".as_ref(), self.data_dir().as_os_str()])
            .args([
                "-U",
                POSTGRES_USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args([
                format!("--pwfile={}", pwfile.display()).as_str(),
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .context("running initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        if !output.status.success() {
            bail!("initdb failed ({}): {}", output.status, describe(&output));
        }
        Ok(())
    }

    /// Appends the settings to postgresql.conf (later lines win), so they survive restarts.
    fn configure(&self, extra: &[(&str, &str)]) -> Result<()> {
        let port = self.port.to_string();
        let socket_dir = self.socket_dir().to_string_lossy().into_owned();
        let mut conf = String::from("\n# sluice-testkit\n");
        let own: [(&str, &str); 2] = [("port", &port), ("unix_socket_directories", &socket_dir)];
        for (name, value) in own.iter().chain(BASE_SETTINGS).chain(extra) {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        let path = self.data_dir().join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(conf.as_bytes())
            .with_context(|| format!("appending settings to {}", path.display()))
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let output = self
            .pg_ctl()
            .args(["-l".as_ref(), self.log_path().as_os_str()])
            .arg("start")
            .output()
            .context("running pg_ctl start")?;
        if !output.status.success() {
            bail!(
                "PostgreSQL did not start on port {} ({}): {}\n{}",
                self.port,
                output.status,
                describe(&output),
                log_tail(&self.log_path(), 30)
            );
        }
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let output = self
            .pg_ctl()
            .args(["stop", "-m", mode])
            .output()
            .context("running pg_ctl stop")?;
        if !output.status.success() {
            bail!(
                "pg_ctl stop -m {mode} failed ({}): {}",
                output.status,
                describe(&output)
            );
        }
        Ok(())
    }

    /// pg_ctl on this cluster's data directory, waiting for each operation to complete.
    fn pg_ctl(&self) -> Command {
        let mut command = self.pg_command("pg_ctl");
        command
            .args(["-D".as_ref(), self.data_dir().as_os_str()])
            .args(["-w", "-t", PG_CTL_TIMEOUT]);
        command
    }

    /// A PostgreSQL program, run as the `postgres` OS user when we are root.
    fn pg_command(&self, program: &str) -> Command {
        let program = program_path(program);
        let mut command = if running_as_root() {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", POSTGRES_USER, "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        // The postgres user may not be able to enter the test's working directory.
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        // Ambient PG* variables (PGDATA, PGOPTIONS, ...) must not leak into the fixture.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                command.env_remove(name);
            }
        }
        command
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing in a throwaway cluster is worth a checkpoint. Fails harmlessly if stopped.
        let _ = self
            .pg_ctl()
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether the effective user is root (read from /proc, which avoids a libc dependency).
fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let effective_uid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned));
        effective_uid.as_deref() == Some("0")
    })
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A failed command's stderr and stdout, for error messages.
fn describe(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    format!(
        "{}{}",
        stderr.trim(),
        if stdout.trim().is_empty() {
            String::new()
        } else {
            format!("\n{}", stdout.trim())
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cluster_decodes_logically_and_authenticates_tcp_with_scram() {
        let pg = PgCluster::start().unwrap();
        assert_eq!(pg.psql("postgres", "SHOW wal_level").unwrap(), "logical");

        let client = pg.client("postgres").await.unwrap();
        let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "logical");
        // The connection really went over TCP with the SCRAM-hashed password.
        let row = client
            .query_one(
                "SELECT inet_server_addr()::text, (SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'postgres')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "127.0.0.1/32");
        assert_eq!(row.get::<_, String>(1), "SCRAM-SHA-256");
    }

    #[tokio::test]
    async fn a_wrong_password_is_refused() {
        let pg = PgCluster::start().unwrap();
        let url = pg
            .url("postgres")
            .replace(pg.password(), "not-the-password");
        let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .err()
            .expect("connection must fail");
        let code = err.as_db_error().map(|db| db.code().clone());
        assert_eq!(
            code,
            Some(tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn restart_keeps_port_and_data() {
        let pg = PgCluster::start().unwrap();
        pg.create_database("app").await.unwrap();
        pg.psql(
            "app",
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();

        pg.restart().unwrap();
        let client = pg.client("app").await.unwrap();
        let row = client
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 2);

        // A crash loses nothing committed either, and restart starts a stopped server.
        pg.psql("app", "INSERT INTO t VALUES (3)").unwrap();
        pg.crash().unwrap();
        assert!(pg.client("app").await.is_err(), "the server should be down");
        pg.restart().unwrap();
        assert_eq!(pg.psql("app", "SELECT count(*) FROM t").unwrap(), "3");
    }

    #[test]
    fn extra_settings_override_the_defaults() {
        let pg = PgCluster::start_with(&[("wal_level", "replica")]).unwrap();
        assert_eq!(pg.psql("postgres", "SHOW wal_level").unwrap(), "replica");
        assert_eq!(
            pg.psql("postgres", "SHOW max_replication_slots").unwrap(),
            "10"
        );
    }

    #[test]
    fn psql_errors_carry_the_server_message() {
        let pg = PgCluster::start().unwrap();
        let err = pg
            .psql("postgres", "SELECT * FROM no_such_table")
            .unwrap_err();
        assert!(err.to_string().contains("no_such_table"), "{err:#}");
    }

    #[test]
    fn a_taken_port_is_reported_as_such() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = PgCluster::start_once(&[], port)
            .err()
            .expect("the port is taken");
        assert!(format!("{err:#}").contains(ADDR_IN_USE), "{err:#}");
    }

    #[test]
    fn drop_stops_the_server_and_removes_the_directory() {
        let pg = PgCluster::start().unwrap();
        let (dir, port) = (pg.data_dir(), pg.port());
        drop(pg);
        assert!(!dir.exists(), "{} should be gone", dir.display());
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts"
        );
    }
}
