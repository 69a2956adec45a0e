//! The operator's commands beside `run`: `sluice snapshot` writes a signal where the source reads them,
//! `sluice status` tells what the stored position holds, an incremental snapshot's progress included.

use std::fmt::Write as _;

use sluice_core::incremental::{Progress, TableProgress};
use sluice_core::positions::{PositionPeek, StoredPosition};
use sluice_core::signal::Signal;
use sluice_core::source::Source;

use crate::config::Config;
use crate::sources::{with_source, SourceVisitor, Unbuildable};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes `signal` into the source's signal table (collection); returns its id.
pub async fn send_signal(config: &Config, signal: &Signal) -> Result<String, BoxError> {
    struct Write<'a>(&'a Signal);
    impl SourceVisitor for Write<'_> {
        type Output = Result<String, BoxError>;
        async fn visit<S: Source>(self, source: S) -> Self::Output {
            source.signal(self.0).await.map_err(Into::into)
        }
        fn unbuildable(self, failure: Unbuildable<'_>) -> Self::Output {
            Err(failure.error)
        }
    }
    with_source(config, Write(signal)).await
}

/// What `sluice status` prints.
pub async fn status(config: &Config) -> Result<String, BoxError> {
    struct Key;
    impl SourceVisitor for Key {
        type Output = Result<String, BoxError>;
        async fn visit<S: Source>(self, source: S) -> Self::Output {
            Ok(source.position_key())
        }
        fn unbuildable(self, failure: Unbuildable<'_>) -> Self::Output {
            Err(failure.error)
        }
    }
    let key = with_source(config, Key).await?;
    let dir = std::path::Path::new(config.positions.dir.get_ref().as_str());
    let peek = PositionPeek::read(dir, &key);
    match peek.stored {
        Ok(Some(stored)) => Ok(describe(&stored)),
        Ok(None) => Ok(format!(
            "no position stored yet in {} (sluice has not run, or started afresh)\n",
            peek.file.display()
        )),
        Err(err) => Err(err.into()),
    }
}

/// The stored position, and the incremental snapshot it carries, as lines for a person.
pub fn describe(stored: &StoredPosition) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "source: {}", stored.source);
    let _ = writeln!(out, "position: {}", stored.position.stream());
    let _ = writeln!(
        out,
        "stored at: {} ms since the epoch",
        stored.updated_at_ms
    );
    match stored.position.incremental() {
        None => out.push_str("incremental snapshot: none under way\n"),
        Some(progress) => describe_progress(&mut out, progress),
    }
    out
}

fn describe_progress(out: &mut String, progress: &Progress) {
    let state = if progress.paused { "paused" } else { "running" };
    let _ = writeln!(
        out,
        "incremental snapshot: {state}, {} of {} tables done (rows read, as far as the broker has them)",
        progress.tables.iter().filter(|t| t.done).count(),
        progress.tables.len()
    );
    for table in &progress.tables {
        let _ = writeln!(out, "  {}", describe_table(table));
    }
}

fn describe_table(table: &TableProgress) -> String {
    let mut line = format!("{}: ", table.name);
    if table.done {
        let _ = write!(line, "done, {} rows in {} chunks", table.rows, table.chunks);
    } else if table.chunks == 0 {
        line.push_str("waiting");
    } else {
        let _ = write!(line, "{} rows", table.rows);
        if let Some(estimated) = table.estimated {
            let _ = write!(line, " of about {estimated}");
        }
        let _ = write!(line, " in {} chunks", table.chunks);
        if let Some(key) = &table.last_key {
            let _ = write!(line, ", last key ({})", key.join(", "));
        }
        if let Some(key) = &table.until_key {
            let _ = write!(line, ", reading up to ({})", key.join(", "));
        }
    }
    if let Some(filter) = &table.filter {
        let _ = write!(line, " [filter: {filter}]");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::event::{Lsn, Position};

    #[test]
    fn status_names_each_table_and_the_pause() {
        let mut progress = Progress::default();
        progress.request(&["public.a".into(), "public.b".into()], &[]);
        progress.tables[0].rows = 2048;
        progress.tables[0].chunks = 2;
        progress.tables[0].estimated = Some(10_000);
        progress.tables[0].last_key = Some(vec!["2048".into()]);
        progress.tables[0].until_key = Some(vec!["10000".into()]);
        progress.paused = true;
        let stored = StoredPosition::new(
            "slot".into(),
            Position::with_incremental(Position::Postgres { lsn: Lsn(0x10) }, Some(&progress)),
        );
        let text = describe(&stored);
        assert!(text.contains("position: 0/10"), "{text}");
        assert!(
            text.contains("incremental snapshot: paused, 0 of 2 tables done"),
            "{text}"
        );
        assert!(
            text.contains("public.a: 2048 rows of about 10000 in 2 chunks, last key (2048), reading up to (10000)"),
            "{text}"
        );
        assert!(text.contains("public.b: waiting"), "{text}");
    }
}
