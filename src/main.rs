//! The `sluice` command line: `run`, `validate`, `check`, `snapshot`, `status`, `tail`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice::config::Config;
use sluice::tail::{StartAt, TailOptions};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// See Cargo.toml: cross-thread frees without glibc's arena lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Change-data capture: PostgreSQL logical decoding to Avro events on Kafka"
)]
struct Cli {
    /// Log output: human-readable text or one JSON object per line (for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: stream changes until SIGTERM or SIGINT.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Parse and check the config file and the contracts. With contracts, also compare each with its
    /// table's current schema (this connects to PostgreSQL; --offline skips it). Exit 0 when valid, 1
    /// otherwise.
    Validate {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Do not connect to PostgreSQL: check the files only.
        #[arg(long)]
        offline: bool,
    },
    /// Connect to PostgreSQL, the broker and the registry and report what is ready, with fixes.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask a running sluice for an incremental snapshot of tables (collections), or stop, pause or resume
    /// one: writes the signal into the source's signal table (collection).
    Snapshot {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// `schema.table` (`db.collection`) names; with --stop, none means every table.
        tables: Vec<String>,
        /// Only the rows that meet this condition (SQL for PostgreSQL, a JSON filter for MongoDB), for
        /// every named table.
        #[arg(long, conflicts_with_all = ["stop", "pause", "resume"])]
        filter: Option<String>,
        /// Stop the incremental snapshot of the named tables (all when none is named).
        #[arg(long, conflicts_with_all = ["pause", "resume"])]
        stop: bool,
        /// Pause the incremental snapshot under way.
        #[arg(long, conflicts_with = "resume")]
        pause: bool,
        /// Resume a paused incremental snapshot.
        #[arg(long)]
        resume: bool,
    },
    /// Show the stored position and how far an incremental snapshot got.
    Status {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a topic's messages decoded, one JSON object per line (brokers and registry from the config).
    Tail {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The topic to read; defaults to the dead-letter topic.
        topic: Option<String>,
        /// `beginning`, `end`, or an offset.
        #[arg(long, default_value = "beginning")]
        from: String,
        /// Keep waiting for new messages.
        #[arg(long)]
        follow: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Validate { config, offline } => validate(&config, offline).await,
            Command::Check { config } => check(&config).await,
            Command::Run { config } => run(&config).await,
            Command::Snapshot {
                config,
                tables,
                filter,
                stop,
                pause,
                resume,
            } => snapshot(&config, tables, filter, [stop, pause, resume]).await,
            Command::Status { config } => status(&config).await,
            Command::Tail {
                config,
                topic,
                from,
                follow,
            } => tail(&config, topic, &from, follow).await,
        }
    });
    // Everything that matters is done (the position is stored): a blocking call still under way — a
    // probe of a frozen broker waits up to its timeout — must not hold the exit past the stop's bound.
    runtime.shutdown_timeout(EXIT_GRACE);
    code
}

/// How long the exit waits for blocking calls still under way.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

fn load(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => Some(config),
        Err(err) => {
            eprintln!("error: invalid configuration\n  {err}");
            None
        }
    }
}

async fn snapshot(
    path: &std::path::Path,
    tables: Vec<String>,
    filter: Option<String>,
    [stop, pause, resume]: [bool; 3],
) -> ExitCode {
    use sluice_core::signal::{Condition, Signal};
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    if (pause || resume) && !tables.is_empty() {
        eprintln!(
            "error: --pause and --resume apply to the whole incremental snapshot: name no tables"
        );
        return ExitCode::FAILURE;
    }
    let signal = if pause {
        Signal::PauseSnapshot
    } else if resume {
        Signal::ResumeSnapshot
    } else if stop {
        Signal::StopSnapshot {
            collections: tables,
        }
    } else if tables.is_empty() {
        eprintln!("error: name the tables to snapshot, e.g. `sluice snapshot -c sluice.toml public.orders`");
        return ExitCode::FAILURE;
    } else {
        let conditions = filter
            .map(|filter| {
                tables
                    .iter()
                    .map(|table| Condition {
                        collection: table.clone(),
                        filter: filter.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Signal::ExecuteSnapshot {
            collections: tables,
            conditions,
        }
    };
    match sluice::operate::send_signal(&config, &signal).await {
        Ok(id) => {
            let (kind, data) = signal.to_columns();
            println!("signal {id} written: {kind} {}", data.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn status(path: &std::path::Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    match sluice::operate::status(&config).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn validate(path: &std::path::Path, offline: bool) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    println!("{}: configuration is valid", path.display());
    let contracts = match sluice::contracts::Contracts::load(&config.contracts_dir()) {
        Ok(contracts) => contracts,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    for contract in contracts.iter() {
        println!(
            "contract {} for topic `{}` parses",
            contract.path.display(),
            contract.topic
        );
    }
    if contracts.is_empty() && config.transforms.is_empty() {
        return ExitCode::SUCCESS;
    }
    if offline {
        println!("--offline: contracts and transforms not compared with the tables");
        return ExitCode::SUCCESS;
    }
    let mut lines = Vec::new();
    if !contracts.is_empty() {
        match sluice::preflight::compare_contracts(&config, &contracts).await {
            Ok(found) => lines.extend(found),
            Err(err) => return cannot_compare("the contracts", &*err),
        }
    }
    if !config.transforms.is_empty() {
        match sluice::preflight::compare_transforms(&config).await {
            Ok(found) => lines.extend(found),
            Err(err) => return cannot_compare("the transforms", &*err),
        }
    }
    let failed = lines.iter().any(|line| line.starts_with("FAIL"));
    for line in lines {
        println!("{line}");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn cannot_compare(what: &str, err: &dyn std::error::Error) -> ExitCode {
    eprintln!(
        "error: cannot compare {what} with the tables: {}",
        sluice_core::errors::error_chain(err)
    );
    ExitCode::FAILURE
}

async fn check(path: &std::path::Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    println!("[ ok ] {}: configuration is valid", path.display());
    let report = sluice::preflight::run(&config).await;
    for line in &report.lines {
        println!("{line}");
    }
    if report.passed() {
        println!("ready: `sluice run -c {}` can start", path.display());
        ExitCode::SUCCESS
    } else {
        println!("not ready: fix the lines marked FAIL");
        ExitCode::FAILURE
    }
}

async fn tail(path: &std::path::Path, topic: Option<String>, from: &str, follow: bool) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    if *config.sink.kind.get_ref() == sluice::config::SinkKind::Blackhole {
        eprintln!("error: sink.kind = \"blackhole\" keeps nothing to tail");
        return ExitCode::FAILURE;
    }
    let start = match from {
        "beginning" => StartAt::Beginning,
        "end" => StartAt::End,
        offset => match offset.parse() {
            Ok(n) => StartAt::Offset(n),
            Err(_) => {
                eprintln!("error: --from takes `beginning`, `end` or an offset, not `{offset}`");
                return ExitCode::FAILURE;
            }
        },
    };
    let options = TailOptions {
        brokers: config.sink.brokers().to_owned(),
        topic: topic.unwrap_or_else(|| config.sink.dead_letter_topic.get_ref().as_str().to_owned()),
        start,
        follow,
        registry: sluice::registry::RegistrySettings::from_config(&config),
        schemas_topic: config.schemas_topic(),
        schemas_dir: Some(PathBuf::from(config.positions.dir.get_ref().as_str()).join("schemas")),
        properties: config
            .kafka_properties()
            .filter(|(k, _)| sluice::sink::is_connection_property(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    match sluice::tail::run(&options, &mut out).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", sluice_core::errors::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &std::path::Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    // Without handlers a SIGTERM would kill the daemon mid-transaction: refuse to start instead.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("error: cannot install the SIGTERM/SIGINT handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping after the open transaction"),
            _ = int.recv() => tracing::info!("SIGINT: stopping after the open transaction"),
        }
        let _ = stop_tx.send(true);
        // A second signal means "now": exit without waiting; unacknowledged events are sent again next run.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130);
    });
    match sluice::pipeline::run(&config, stop_rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "sluice stopped");
            eprintln!("error: {}", sluice_core::errors::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
