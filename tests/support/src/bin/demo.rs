//! The end-to-end demo behind `scripts/demo.sh`: starts a private PostgreSQL and a tansu broker, runs
//! `sluice run` against them without a schema registry (single-object encoding, schemas on
//! `shop.schemas`) and with the repository's example contract for `shop.public.orders`, applies a small
//! shop workload, and prints the events as `sluice tail` decodes them. Everything it starts is stopped at
//! the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_testkit::broker::Tansu;
use sluice_testkit::config::ConfigFile;
use sluice_testkit::postgres::PgCluster;

const SCHEMA: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email varchar(120), signed_up date);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers,
    amount numeric(12,2),
    status text,
    ordered_at timestamptz DEFAULT now(),
    items jsonb
);
-- Already there when sluice starts: the initial snapshot publishes it (op = \"r\").
INSERT INTO customers VALUES (3, 'Linus', 'linus@example.com', '2023-11-02');";

const WORKLOAD: &[&str] = &[
    "INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', '2024-03-01'), (2, 'Grace', NULL, '2024-05-17')",
    "BEGIN; INSERT INTO orders (id, customer_id, amount, status, items) VALUES (100, 1, 42.50, 'new', '[{\"sku\": \"A-1\", \"qty\": 2}]'); UPDATE customers SET email = 'grace@example.com' WHERE id = 2; COMMIT",
    "UPDATE orders SET status = 'paid' WHERE id = 100",
    "INSERT INTO orders (id, customer_id, amount, status, items) VALUES (101, 2, 'NaN', 'broken', '[]')",
    "INSERT INTO orders (id, customer_id, amount, status, items) VALUES (103, 1, NULL, 'draft', '[]')",
    "INSERT INTO orders (id, customer_id, amount, status, items) VALUES (102, 2, 7.25, 'new', '[]')",
    "DELETE FROM orders WHERE id = 102",
];

fn main() -> Result<()> {
    let sluice = sluice_binary()?;
    println!("== starting PostgreSQL (wal_level=logical) and tansu");
    let pg = PgCluster::start()?;
    let broker = Tansu::start()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        pg.create_database("shop").await?;
        pg.client("shop")
            .await?
            .batch_execute(SCHEMA)
            .await
            .context("create the demo tables")
    })?;

    let work = tempfile::tempdir()?;
    let config = write_config(work.path(), &pg, &broker)?;
    println!(
        "== config ({})\n{}",
        config.display(),
        redact(&std::fs::read_to_string(&config)?, pg.password())
    );

    let log_path = work.path().join("sluice.log");
    let mut daemon = Command::new(&sluice)
        .args(["run", "-c"])
        .arg(&config)
        .stderr(std::fs::File::create(&log_path)?)
        .stdout(Stdio::null())
        .spawn()
        .context("start sluice")?;
    let streaming = runtime.block_on(wait_streaming(&pg));
    if let Err(err) = streaming {
        let _ = daemon.kill();
        bail!(
            "{err}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    println!("== workload");
    runtime.block_on(async {
        let client = pg.client("shop").await?;
        for statement in WORKLOAD {
            println!("   {statement}");
            client
                .batch_execute(statement)
                .await
                .with_context(|| statement.to_string())?;
        }
        anyhow::Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(3));

    for topic in ["shop.public.customers", "shop.public.orders", "shop.dlq"] {
        println!("== sluice tail {topic}");
        let output = Command::new(&sluice)
            .args(["tail", "-c"])
            .arg(&config)
            .arg(topic)
            .output()?;
        print!("{}", String::from_utf8_lossy(&output.stdout));
        if !output.status.success() {
            bail!(
                "sluice tail {topic} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    println!("== stopping sluice (SIGTERM)");
    // A sluice that already exited cannot be signalled; its status below says how it ended.
    let _ = sluice_testkit::signal(daemon.id(), "TERM");
    let status = daemon.wait()?;
    println!("   {status}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("== sluice log\n{}", redact(&log, pg.password()));
    let position = std::fs::read_to_string(work.path().join("positions/sluice.position.json"))
        .unwrap_or_default();
    println!("== stored position\n{position}");
    if !status.success() {
        bail!("sluice exited with {status}");
    }
    println!("== demo finished: PostgreSQL and tansu are stopped");
    Ok(())
}

/// The sluice binary next to this one (both are built by `cargo build --workspace`), or $SLUICE_BIN.
fn sluice_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("SLUICE_BIN") {
        return Ok(path.into());
    }
    let here = std::env::current_exe()?;
    let path = here.with_file_name("sluice");
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --workspace) or set SLUICE_BIN",
            path.display()
        );
    }
    Ok(path)
}

fn write_config(dir: &Path, pg: &PgCluster, broker: &Tansu) -> Result<PathBuf> {
    // The password reaches sluice through the environment, as a deployment would pass a secret.
    std::env::set_var("DEMO_PGPASSWORD", pg.password());
    let mut config = ConfigFile::local(
        format!(
            "postgres://postgres:${{DEMO_PGPASSWORD}}@127.0.0.1:{}/shop",
            pg.port()
        ),
        broker.bootstrap(),
        None,
        dir.join("positions"),
    );
    config.kafka = vec![("compression.type".into(), "zstd".into())];
    // The repository's example contract: an order without an amount goes to the dead-letter topic.
    let contract = "shop.public.orders.avsc";
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/contracts/examples")
        .join(contract);
    std::fs::create_dir_all(config.contracts_dir())?;
    std::fs::copy(&example, config.contracts_dir().join(contract))
        .with_context(|| format!("copying {}", example.display()))?;
    config.write(&dir.join("sluice.toml"))
}

async fn wait_streaming(pg: &PgCluster) -> Result<()> {
    let client = pg.client("shop").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let row = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'sluice'",
                &[],
            )
            .await?;
        if row.is_some_and(|r| r.get::<_, bool>(0)) {
            println!("== sluice is streaming from slot `sluice`");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("sluice did not start streaming within 60 s")
}

fn redact(text: &str, secret: &str) -> String {
    text.replace(secret, "***")
}
