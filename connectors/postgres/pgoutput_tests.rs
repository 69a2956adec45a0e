use super::*;

/// Builds pgoutput messages the way the server writes them.
struct Encoder(Vec<u8>);

impl Encoder {
    fn new(tag: u8) -> Encoder {
        Encoder(vec![tag])
    }

    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }

    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }

    fn str(self, v: &str) -> Self {
        self.raw(v.as_bytes()).u8(0)
    }

    fn tuple(mut self, values: &[TupleValue]) -> Self {
        self = self.i16(i16::try_from(values.len()).expect("test tuple fits"));
        for value in values {
            self = match value {
                TupleValue::Null => self.u8(b'n'),
                TupleValue::UnchangedToast => self.u8(b'u'),
                TupleValue::Text(b) => self.u8(b't').i32(len32(b)).raw(b),
                TupleValue::Binary(b) => self.u8(b'b').i32(len32(b)).raw(b),
            };
        }
        self
    }

    fn build(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn len32(b: &[u8]) -> i32 {
    i32::try_from(b.len()).expect("test value fits")
}

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn row() -> Vec<TupleValue> {
    vec![
        text("42"),
        TupleValue::Null,
        TupleValue::UnchangedToast,
        TupleValue::Binary(Bytes::from_static(&[0, 1, 255])),
    ]
}

// 2024-01-02 03:04:05.678901 UTC, in both epochs.
const UNIX_US: i64 = 1_704_164_645_678_901;
const PG_US: i64 = UNIX_US - 946_684_800_000_000;

fn begin_msg() -> Bytes {
    Encoder::new(b'B')
        .i64(0x16_B374_D848)
        .i64(PG_US)
        .u32(4_000_000_000)
        .build()
}

fn commit_msg() -> Bytes {
    Encoder::new(b'C')
        .u8(0)
        .i64(0x100)
        .i64(0x128)
        .i64(PG_US)
        .build()
}

fn origin_msg() -> Bytes {
    Encoder::new(b'O').i64(0x200).str("upstream").build()
}

fn relation_msg() -> Bytes {
    Encoder::new(b'R')
        .u32(16_385)
        .str("public")
        .str("orders")
        .u8(b'd')
        .i16(2)
        .u8(1)
        .str("id")
        .u32(23)
        .i32(-1)
        .u8(0)
        .str("amount")
        .u32(1700)
        .i32(786_438)
        .build()
}

fn type_msg() -> Bytes {
    Encoder::new(b'Y')
        .u32(16_400)
        .str("public")
        .str("mood")
        .build()
}

fn insert_msg() -> Bytes {
    Encoder::new(b'I')
        .u32(16_385)
        .u8(b'N')
        .tuple(&row())
        .build()
}

fn update_key_msg() -> Bytes {
    Encoder::new(b'U')
        .u32(16_385)
        .u8(b'K')
        .tuple(&[text("1")])
        .u8(b'N')
        .tuple(&row())
        .build()
}

fn update_full_msg() -> Bytes {
    Encoder::new(b'U')
        .u32(16_385)
        .u8(b'O')
        .tuple(&[text("1"), text("x")])
        .u8(b'N')
        .tuple(&row())
        .build()
}

fn update_new_only_msg() -> Bytes {
    Encoder::new(b'U')
        .u32(16_385)
        .u8(b'N')
        .tuple(&row())
        .build()
}

fn delete_key_msg() -> Bytes {
    Encoder::new(b'D')
        .u32(16_385)
        .u8(b'K')
        .tuple(&[text("7"), TupleValue::Null])
        .build()
}

fn delete_full_msg() -> Bytes {
    Encoder::new(b'D')
        .u32(16_385)
        .u8(b'O')
        .tuple(&[text("7"), text("abc")])
        .build()
}

fn truncate_msg() -> Bytes {
    Encoder::new(b'T')
        .i32(3)
        .u8(3)
        .u32(1)
        .u32(2)
        .u32(u32::MAX)
        .build()
}

fn logical_msg() -> Bytes {
    Encoder::new(b'M')
        .u8(1)
        .i64(0x300)
        .str("sluice")
        .i32(5)
        .raw(b"hello")
        .build()
}

fn all_valid() -> Vec<Bytes> {
    vec![
        begin_msg(),
        commit_msg(),
        origin_msg(),
        relation_msg(),
        type_msg(),
        insert_msg(),
        update_key_msg(),
        update_full_msg(),
        update_new_only_msg(),
        delete_key_msg(),
        delete_full_msg(),
        truncate_msg(),
        logical_msg(),
    ]
}

fn decode_ok(data: Bytes) -> Message {
    match decode(&data) {
        Ok(message) => message,
        Err(err) => panic!("valid message did not decode: {err}"),
    }
}

fn decode_err(data: &[u8]) -> String {
    match decode(&Bytes::copy_from_slice(data)) {
        Ok(message) => panic!("malformed message decoded: {message:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn begin_converts_the_timestamp_to_the_unix_epoch() {
    let expected = Begin {
        final_lsn: Lsn(0x16_B374_D848),
        commit_time_us: UNIX_US,
        xid: 4_000_000_000,
    };
    assert_eq!(decode_ok(begin_msg()), Message::Begin(expected));
}

#[test]
fn commit() {
    let expected = Commit {
        flags: 0,
        commit_lsn: Lsn(0x100),
        end_lsn: Lsn(0x128),
        commit_time_us: UNIX_US,
    };
    assert_eq!(decode_ok(commit_msg()), Message::Commit(expected));
}

#[test]
fn pg_epoch_is_the_year_2000() {
    let message = Encoder::new(b'C').u8(0).i64(1).i64(2).i64(0).build();
    let Message::Commit(commit) = decode_ok(message) else {
        panic!("not a commit")
    };
    assert_eq!(commit.commit_time_us, 946_684_800_000_000);
}

#[test]
fn timestamp_overflow_is_an_error() {
    let message = Encoder::new(b'B').i64(1).i64(i64::MAX).u32(1).build();
    let err = decode_err(&message);
    assert!(err.contains("commit timestamp at byte 9"), "{err}");
}

#[test]
fn origin() {
    let expected = Origin {
        commit_lsn: Lsn(0x200),
        name: "upstream".into(),
    };
    assert_eq!(decode_ok(origin_msg()), Message::Origin(expected));
}

#[test]
fn relation() {
    let expected = Relation {
        id: 16_385,
        namespace: "public".into(),
        name: "orders".into(),
        replica_identity: b'd',
        columns: vec![
            RelationColumn {
                key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1,
            },
            RelationColumn {
                key: false,
                name: "amount".into(),
                type_oid: 1700,
                type_modifier: 786_438,
            },
        ],
    };
    assert_eq!(decode_ok(relation_msg()), Message::Relation(expected));
}

#[test]
fn relation_with_empty_namespace_is_in_pg_catalog() {
    let message = Encoder::new(b'R')
        .u32(1259)
        .str("")
        .str("pg_class")
        .u8(b'n')
        .i16(0)
        .build();
    let Message::Relation(relation) = decode_ok(message) else {
        panic!("not a relation")
    };
    assert_eq!(relation.namespace, "pg_catalog");
    assert_eq!(relation.replica_identity, b'n');
    assert!(relation.columns.is_empty());
}

#[test]
fn type_message() {
    let expected = TypeMessage {
        id: 16_400,
        namespace: "public".into(),
        name: "mood".into(),
    };
    assert_eq!(decode_ok(type_msg()), Message::Type(expected));
}

#[test]
fn insert_with_every_column_kind() {
    let expected = Insert {
        relation_id: 16_385,
        new: TupleData(row()),
    };
    assert_eq!(decode_ok(insert_msg()), Message::Insert(expected));
}

#[test]
fn tuple_values_are_slices_of_the_input() {
    let data = insert_msg();
    let Message::Insert(insert) = decode_ok(data.clone()) else {
        panic!("not an insert")
    };
    let TupleValue::Text(value) = &insert.new.0[0] else {
        panic!("not text")
    };
    let input = data.as_ptr_range();
    assert!(input.contains(&value.as_ptr()), "the value was copied");
}

#[test]
fn empty_tuple_and_empty_values() {
    let message = Encoder::new(b'I')
        .u32(1)
        .u8(b'N')
        .tuple(&[text(""), TupleValue::Binary(Bytes::new())])
        .build();
    let Message::Insert(insert) = decode_ok(message) else {
        panic!("not an insert")
    };
    assert_eq!(
        insert.new,
        TupleData(vec![text(""), TupleValue::Binary(Bytes::new())])
    );
    let message = Encoder::new(b'I').u32(1).u8(b'N').tuple(&[]).build();
    let Message::Insert(insert) = decode_ok(message) else {
        panic!("not an insert")
    };
    assert!(insert.new.0.is_empty());
}

#[test]
fn update_with_old_key() {
    let expected = Update {
        relation_id: 16_385,
        old: Some(OldTuple::Key(TupleData(vec![text("1")]))),
        new: TupleData(row()),
    };
    assert_eq!(decode_ok(update_key_msg()), Message::Update(expected));
}

#[test]
fn update_with_old_row() {
    let old = Some(OldTuple::Full(TupleData(vec![text("1"), text("x")])));
    let expected = Update {
        relation_id: 16_385,
        old,
        new: TupleData(row()),
    };
    assert_eq!(decode_ok(update_full_msg()), Message::Update(expected));
}

#[test]
fn update_without_old_tuple() {
    let expected = Update {
        relation_id: 16_385,
        old: None,
        new: TupleData(row()),
    };
    assert_eq!(decode_ok(update_new_only_msg()), Message::Update(expected));
}

#[test]
fn delete_with_old_key() {
    let expected = Delete {
        relation_id: 16_385,
        old: OldTuple::Key(TupleData(vec![text("7"), TupleValue::Null])),
    };
    assert_eq!(decode_ok(delete_key_msg()), Message::Delete(expected));
}

#[test]
fn delete_with_old_row() {
    let expected = Delete {
        relation_id: 16_385,
        old: OldTuple::Full(TupleData(vec![text("7"), text("abc")])),
    };
    assert_eq!(decode_ok(delete_full_msg()), Message::Delete(expected));
}

#[test]
fn truncate_with_options() {
    let expected = Truncate {
        cascade: true,
        restart_identity: true,
        relation_ids: vec![1, 2, u32::MAX],
    };
    assert_eq!(decode_ok(truncate_msg()), Message::Truncate(expected));
    let plain = Encoder::new(b'T').i32(1).u8(0).u32(9).build();
    let expected = Truncate {
        cascade: false,
        restart_identity: false,
        relation_ids: vec![9],
    };
    assert_eq!(decode_ok(plain), Message::Truncate(expected));
}

#[test]
fn logical_decoding_message() {
    let expected = LogicalMessage {
        transactional: true,
        lsn: Lsn(0x300),
        prefix: "sluice".into(),
        content: Bytes::from_static(b"hello"),
    };
    assert_eq!(decode_ok(logical_msg()), Message::LogicalMessage(expected));
    let plain = Encoder::new(b'M').u8(0).i64(1).str("p").i32(0).build();
    let Message::LogicalMessage(message) = decode_ok(plain) else {
        panic!("not a logical message")
    };
    assert!(!message.transactional);
    assert!(message.content.is_empty());
}

#[test]
fn every_truncation_is_an_error() {
    for message in all_valid() {
        for end in 0..message.len() {
            let prefix = message.slice(..end);
            let err = match decode(&prefix) {
                Ok(decoded) => panic!("prefix {end} of {message:?} decoded as {decoded:?}"),
                Err(err) => err,
            };
            let clear = match end {
                0 => matches!(err, DecodeError::Empty),
                _ => matches!(
                    err,
                    DecodeError::Truncated { .. }
                        | DecodeError::UnterminatedString { .. }
                        | DecodeError::LengthExceedsMessage { .. }
                ),
            };
            assert!(clear, "prefix {end} of {message:?}: {err}");
        }
    }
}

#[test]
fn truncation_names_the_field_and_offset() {
    assert_eq!(
        decode_err(&[b'I', 0, 0]),
        "pgoutput Insert message truncated at byte 1 while reading relation id (4 bytes needed, 2 left)"
    );
    assert_eq!(
        decode_err(b"Ox\0\0\0\0\0\0\0abc"),
        "pgoutput Origin message truncated at byte 9 while reading origin name (no terminating NUL)"
    );
}

#[test]
fn empty_message() {
    assert_eq!(decode_err(&[]), "empty pgoutput message");
}

#[test]
fn unknown_tag_shows_char_and_hex() {
    assert_eq!(
        decode_err(b"Zabc"),
        "unknown pgoutput message tag 'Z' (0x5a)"
    );
    assert_eq!(
        decode_err(&[0x01]),
        "unknown pgoutput message tag '?' (0x01)"
    );
    // Protocol version 2 streaming messages are not expected with version 1.
    assert!(decode_err(b"S\0\0\0\x01\x01").contains("'S' (0x53)"));
}

#[test]
fn unknown_tuple_column_kind() {
    let message = Encoder::new(b'I').u32(1).u8(b'N').i16(1).u8(b'x').build();
    assert_eq!(
        decode_err(&message),
        "pgoutput Insert message has unknown tuple column kind 'x' (0x78) at byte 8"
    );
}

#[test]
fn unexpected_markers() {
    let insert = Encoder::new(b'I').u32(1).u8(b'K').i16(0).build();
    assert_eq!(
        decode_err(&insert),
        "pgoutput Insert message has 'K' (0x4b) at byte 5 where 'N' (new tuple) was expected"
    );
    let update = Encoder::new(b'U').u32(1).u8(b'X').i16(0).build();
    assert!(decode_err(&update).contains("where 'K', 'O' or 'N' was expected"));
    let update = Encoder::new(b'U')
        .u32(1)
        .u8(b'K')
        .i16(0)
        .u8(b'O')
        .i16(0)
        .build();
    assert!(decode_err(&update).contains("at byte 8 where 'N' (new tuple) was expected"));
    let delete = Encoder::new(b'D').u32(1).u8(b'N').i16(0).build();
    assert!(decode_err(&delete).contains("where 'K' or 'O' was expected"));
}

#[test]
fn negative_lengths_and_counts() {
    let value = Encoder::new(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(-1)
        .build();
    assert_eq!(
        decode_err(&value),
        "pgoutput Insert message has a negative tuple column value length (-1) at byte 9"
    );
    let columns = Encoder::new(b'I').u32(1).u8(b'N').i16(-3).build();
    assert!(decode_err(&columns).contains("negative tuple column count (-3) at byte 6"));
    let relation = Encoder::new(b'R')
        .u32(1)
        .str("s")
        .str("t")
        .u8(b'd')
        .i16(i16::MIN)
        .build();
    assert!(decode_err(&relation).contains("negative column count (-32768)"));
    let truncate = Encoder::new(b'T').i32(-1).u8(0).build();
    assert!(decode_err(&truncate).contains("negative relation count (-1) at byte 1"));
    let content = Encoder::new(b'M')
        .u8(0)
        .i64(1)
        .str("p")
        .i32(i32::MIN)
        .build();
    assert!(decode_err(&content).contains("negative content length (-2147483648)"));
}

#[test]
fn lengths_beyond_the_message() {
    let value = Encoder::new(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b'b')
        .i32(100)
        .raw(b"abc")
        .build();
    assert_eq!(
        decode_err(&value),
        "pgoutput Insert message has tuple column value 100 at byte 13, but only 3 bytes follow"
    );
    let huge = Encoder::new(b'M')
        .u8(0)
        .i64(1)
        .str("p")
        .i32(i32::MAX)
        .build();
    assert!(decode_err(&huge).contains("content 2147483647"));
    // Huge counts must fail on the missing data, not on allocating for it.
    let truncate = Encoder::new(b'T').i32(i32::MAX).u8(0).u32(1).build();
    assert!(decode_err(&truncate).contains("truncated at byte 10 while reading relation id"));
    let columns = Encoder::new(b'I')
        .u32(1)
        .u8(b'N')
        .i16(i16::MAX)
        .u8(b'n')
        .build();
    assert!(decode_err(&columns).contains("truncated at byte 9 while reading tuple column kind"));
}

#[test]
fn invalid_utf8_in_names() {
    let relation = Encoder::new(b'R')
        .u32(1)
        .str("public")
        .raw(&[b'o', 0xff, 0])
        .u8(b'd')
        .i16(0)
        .build();
    assert_eq!(
        decode_err(&relation),
        "pgoutput Relation message has invalid UTF-8 in relation name at byte 12"
    );
    let column = Encoder::new(b'R')
        .u32(1)
        .str("s")
        .str("t")
        .u8(b'd')
        .i16(1)
        .u8(0)
        .raw(&[0xc3, 0])
        .build();
    assert!(decode_err(&column).contains("invalid UTF-8 in column name"));
    let prefix = Encoder::new(b'M')
        .u8(0)
        .i64(1)
        .raw(&[0xe2, 0x82, 0])
        .i32(0)
        .build();
    assert!(decode_err(&prefix).contains("invalid UTF-8 in prefix"));
}

#[test]
fn trailing_bytes() {
    for message in all_valid() {
        let mut longer = message.to_vec();
        longer.extend_from_slice(b"xy");
        let err = decode_err(&longer);
        assert!(
            err.contains(&format!(
                "2 trailing bytes after its end at byte {}",
                message.len()
            )),
            "{err}"
        );
    }
}

/// xorshift64: deterministic, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn mutate(rng: &mut XorShift, message: &mut Vec<u8>) {
    match rng.below(5) {
        0 => {
            let i = rng.below(message.len());
            if let Some(b) = message.get_mut(i) {
                *b = rng.byte();
            }
        }
        1 => {
            let i = rng.below(message.len());
            if let Some(b) = message.get_mut(i) {
                *b ^= 1 << rng.below(8);
            }
        }
        2 => message.truncate(rng.below(message.len() + 1)),
        3 => {
            for _ in 0..rng.below(8) + 1 {
                message.push(rng.byte());
            }
        }
        _ => {
            let i = rng.below(message.len() + 1);
            message.insert(i, rng.byte());
        }
    }
}

#[test]
fn mutated_messages_never_panic() {
    let valid = all_valid();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0;
    for _ in 0..20_000 {
        let mut message = valid[rng.below(valid.len())].to_vec();
        for _ in 0..rng.below(4) + 1 {
            mutate(&mut rng, &mut message);
        }
        if decode(&Bytes::from(message)).is_ok() {
            decoded += 1;
        }
    }
    // Some mutations (a changed value byte) stay valid; most do not.
    assert!(
        decoded > 0 && decoded < 20_000,
        "{decoded} of 20000 mutated messages decoded"
    );
}

/// Writes the valid messages above into the seed corpora of the fuzz targets (fuzz/README.md): each
/// message alone for `pgoutput`, and for `replication_stream` a transaction as the server streams it,
/// CopyData frames of XLogData with a keepalive after the commit.
/// `SLUICE_FUZZ_SEEDS=fuzz/corpus cargo test -p sluice-postgres write_fuzz_seeds -- --ignored`
#[test]
#[ignore = "writes files; run to refresh the fuzz corpora"]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("SLUICE_FUZZ_SEEDS") else {
        panic!("set SLUICE_FUZZ_SEEDS to the corpus folder");
    };
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let messages = all_valid();
    for (i, message) in messages.iter().enumerate() {
        write(
            "pgoutput",
            &format!("test-{i:02}-{}", message[0] as char),
            message,
        );
    }
    // CopyData ('d', length) holding XLogData ('w', start, end, send time, the message).
    let frame = |inner: &[u8]| {
        let mut framed = vec![b'd'];
        framed.extend_from_slice(&len32(inner).saturating_add(4).to_be_bytes());
        framed.extend_from_slice(inner);
        framed
    };
    let xlog = |lsn: u64, message: &[u8]| {
        let mut inner = vec![b'w'];
        inner.extend_from_slice(&lsn.to_be_bytes());
        inner.extend_from_slice(&lsn.to_be_bytes());
        inner.extend_from_slice(&0i64.to_be_bytes());
        inner.extend_from_slice(message);
        frame(&inner)
    };
    let mut keepalive = vec![b'k'];
    keepalive.extend_from_slice(&0x300u64.to_be_bytes());
    keepalive.extend_from_slice(&0i64.to_be_bytes());
    keepalive.push(1);
    let transaction = [
        begin_msg(),
        relation_msg(),
        insert_msg(),
        update_key_msg(),
        update_full_msg(),
        delete_key_msg(),
        truncate_msg(),
        logical_msg(),
        commit_msg(),
    ];
    let mut stream = Vec::new();
    for (i, message) in transaction.iter().enumerate() {
        stream.extend(xlog(0x100 + i as u64, message));
    }
    stream.extend(frame(&keepalive));
    write("replication_stream", "test-transaction", &stream);
    write("replication_stream", "test-keepalive", &frame(&keepalive));
}
