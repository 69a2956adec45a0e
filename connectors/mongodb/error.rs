//! Why the MongoDB connector stops: each message says what the operator can do about it.

#[derive(Debug, thiserror::Error)]
pub enum MongodbError {
    #[error("source.url: {0}")]
    Url(String),
    #[error("cannot reach MongoDB at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("MongoDB at {url} is a standalone server; change streams need a replica set or a sharded cluster (a one-member replica set will do: start mongod with --replSet and run rs.initiate())")]
    Standalone { url: String },
    #[error("the stored position is no longer in the oplog ({reason}): the changes since it are gone from the server. Move the position file {file} away to start from now (those changes are not published), and size the oplog for the longest outage to expect")]
    HistoryLost { reason: String, file: String },
    #[error("the snapshot took longer than the oplog window: the point it started from is no longer in the oplog ({reason}), so the changes made while it ran are gone, and another snapshot would take as long. Enlarge the oplog (replSetResizeOplog) or select fewer collections, then move the position file {file} away to take a new snapshot")]
    SnapshotOutlastedOplog { reason: String, file: String },
    #[error("the position file holds a resume token that is not valid: {0}")]
    BadToken(String),
    #[error("the change stream failed: {0}")]
    Stream(String),
    #[error("the snapshot failed: {0}")]
    Snapshot(String),
    #[error("the position file {file} holds a position of another kind of source ({position}); point positions.dir elsewhere or move the file away")]
    ForeignPosition { file: String, position: String },
    #[error(transparent)]
    Position(#[from] sluice_core::positions::PositionError),
    #[error("signals: {0}")]
    Signal(String),
    #[error("the position file {file} holds {position}, which capture = \"{capture}\" cannot resume from (a change stream resumes from a token, the oplog reader from a timestamp); set the capture it was written with, or move the file away to start again")]
    CaptureMismatch {
        file: String,
        position: String,
        capture: &'static str,
    },
}
