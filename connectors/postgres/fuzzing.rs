//! Entry points for the fuzz targets in `fuzz/`: the pure decoders behind this crate's private modules,
//! driven the way the reader and the snapshot drive them, with no server and no catalog. Nothing in sluice
//! calls these.

use bytes::{Bytes, BytesMut};
use sluice_core::event::{Lsn, SourceEvent};

use super::config::{DecimalHandling, Selection};
use super::decoder::{Captured, StreamDecoder};
use super::pgoutput::{self, Relation, TupleData};
use super::replication::{self, Frame};
use super::snapshot_copy::{parse_copy_line, Lines};
use super::type_model::TypeMap;
use super::types;

/// The stream decoder with relations described from their columns' type OIDs alone (what is not built in
/// is carried as text), keyed by their replica identity.
pub struct Stream {
    decoder: StreamDecoder,
    catalog: TypeMap,
    selection: Selection,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            decoder: StreamDecoder::new("fuzz", Lsn(0), None),
            catalog: TypeMap::new(),
            selection: Selection::default(),
        }
    }
}

impl Stream {
    /// Bytes the server sends once streaming, through the frame parser and then as the reader's
    /// `apply_frame` takes each frame. Stops at the first error, as the reader does.
    pub fn server_bytes(&mut self, bytes: &[u8], out: &mut Vec<SourceEvent>) -> Result<(), String> {
        let mut buf = BytesMut::from(bytes);
        while let Some(frame) = replication::parse_frame(&mut buf).map_err(|err| err.to_string())? {
            match frame {
                Frame::XLogData {
                    wal_start, data, ..
                } => self.message(wal_start, &data, out)?,
                Frame::Keepalive { wal_end, .. } => self.decoder.idle(wal_end, out),
                Frame::CopyDone => return Err("the server ended the replication stream".into()),
            }
        }
        Ok(())
    }

    /// One pgoutput message at `lsn`.
    pub fn message(
        &mut self,
        lsn: Lsn,
        payload: &Bytes,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), String> {
        let message = pgoutput::decode(payload).map_err(|err| err.to_string())?;
        let relation = self
            .decoder
            .apply(message, lsn, out)
            .map_err(|err| err.to_string())?;
        if let Some(relation) = relation {
            let captured = self.describe(&relation);
            self.decoder.described(relation.id, Some(captured));
        }
        Ok(())
    }

    fn describe(&self, relation: &Relation) -> Captured {
        let resolved = relation
            .columns
            .iter()
            .map(|column| {
                types::resolve(
                    column.type_oid,
                    column.type_modifier,
                    0,
                    &self.catalog,
                    DecimalHandling::Precise,
                )
            })
            .collect();
        let key: Vec<String> = relation
            .columns
            .iter()
            .filter(|column| column.key)
            .map(|column| column.name.clone())
            .collect();
        Captured::new(relation, &key, resolved, &self.selection)
    }
}

/// COPY text output as it arrives in chunks, split into lines and each parsed into `columns` values, as
/// the snapshot reads a table. Stops at the first line that does not parse.
pub fn copy_rows(
    chunks: impl IntoIterator<Item = Bytes>,
    columns: usize,
) -> Result<Vec<TupleData>, String> {
    let mut lines = Lines::default();
    let mut split = Vec::new();
    for chunk in chunks {
        lines.split(chunk, &mut split);
    }
    split
        .iter()
        .map(|line| parse_copy_line(line, columns))
        .collect()
}
