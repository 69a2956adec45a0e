//! Every PostgreSQL type of the mapping table in `schemas/README.md`, through a real server, sluice and a real
//! broker: edge values (NULL, min, max, empty arrays, infinities, odd characters) are read by the snapshot and
//! streamed, decoded with their registered schema, and compared with what PostgreSQL itself computes from the
//! stored value under the documented mapping.

mod common;

use std::time::Duration;

use common::{decode_all, Services};
use serde_json::Value as Json;

struct Case {
    /// The type names of the mapping table's first column this case stands for.
    documents: &'static [&'static str],
    /// The column's declared type.
    declared: &'static str,
    /// SQL literals stored in the column, one row each (every column is NULL in row 0).
    values: &'static [&'static str],
    /// SQL of the JSON text `sluice tail` prints for the stored value `v`.
    expected: &'static str,
}

// Each expression yields JSON text.
const AS_TEXT: &str = "to_jsonb(v::text)";
const AS_JSON: &str = "to_jsonb(v)";
/// An array printed element by element as text (decimals, geometric values).
const ELEMENTS_AS_TEXT: &str = "COALESCE((SELECT jsonb_agg(e::text ORDER BY i) \
                                FROM unnest(v) WITH ORDINALITY AS u(e, i)), '[]')";
/// A double as JSON text, the specials as strings (jsonb would write 1.7976931348623157e308 out in 309
/// digits).
const FLOAT_JSON: &str = "CASE WHEN v::float8::text IN ('NaN', 'Infinity', '-Infinity') \
                          THEN to_jsonb(v::float8::text)::text ELSE v::float8::text END";
/// Microseconds since 1970, infinities as the extreme longs.
const TIMESTAMP_MICROS: &str =
    "CASE WHEN isfinite(v) THEN to_jsonb((extract(epoch FROM v) * 1000000)::bigint) \
                                WHEN v > 'epoch' THEN to_jsonb(9223372036854775807) \
                                ELSE to_jsonb(-9223372036854775808) END";

const CASES: &[Case] = &[
    Case {
        documents: &["boolean"],
        declared: "boolean",
        values: &["true", "false"],
        expected: AS_JSON,
    },
    Case {
        documents: &["smallint"],
        declared: "smallint",
        values: &["-32768", "32767", "0"],
        expected: AS_JSON,
    },
    Case {
        documents: &["integer"],
        declared: "integer",
        values: &["-2147483648", "2147483647"],
        expected: AS_JSON,
    },
    Case {
        documents: &["bigint"],
        declared: "bigint",
        values: &["-9223372036854775808", "9223372036854775807"],
        expected: AS_JSON,
    },
    Case {
        documents: &["oid"],
        declared: "oid",
        values: &["0", "4294967295"],
        expected: "to_jsonb(v::text::bigint)",
    },
    Case {
        documents: &["real"],
        declared: "real",
        values: &[
            "'1.5'",
            "'-3.4028235e38'",
            "'1e-45'",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
        ],
        // Avro float widened to double, as consumers read it.
        expected: FLOAT_JSON,
    },
    Case {
        documents: &["double precision"],
        declared: "double precision",
        values: &[
            "'0.1'",
            "'1.7976931348623157e308'",
            "'-5e-324'",
            "'NaN'",
            "'-Infinity'",
        ],
        expected: FLOAT_JSON,
    },
    Case {
        documents: &["numeric(p,s)"],
        declared: "numeric(12,2)",
        values: &["0", "-9999999999.99", "9999999999.99", "1.5"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["numeric"],
        declared: "numeric",
        values: &["0", "123.4500", "-0.00000000000000000001", "1e100"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["money"],
        declared: "money",
        values: &[
            "0",
            "'-92233720368547758.08'",
            "'92233720368547758.07'",
            "12.34",
        ],
        expected: "to_jsonb(v::numeric::text)",
    },
    Case {
        documents: &["text"],
        declared: "text",
        values: &[
            "''",
            "'héllo wörld ✓'",
            "E'tab\\there\\nnewline \\\\ back'",
            "'\"q\" {b} (p) NULL'",
        ],
        expected: AS_JSON,
    },
    Case {
        documents: &["varchar(n)"],
        declared: "varchar(8)",
        values: &["''", "'12345678'"],
        expected: AS_JSON,
    },
    Case {
        documents: &["char(n)"],
        declared: "char(5)",
        values: &["'ab'", "''"],
        // Padding included: to_jsonb prints bpchar as stored.
        expected: AS_JSON,
    },
    Case {
        documents: &["\"char\"", "name"],
        declared: "\"char\"",
        values: &["'a'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["name"],
        declared: "name",
        values: &["'pg_catalog'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["bytea"],
        declared: "bytea",
        values: &["'\\x'", "'\\x00ff10'"],
        expected: "to_jsonb(encode(v, 'hex'))",
    },
    Case {
        documents: &["uuid"],
        declared: "uuid",
        values: &["'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["date"],
        declared: "date",
        values: &[
            "'1970-01-01'",
            "'4713-01-01 BC'",
            "'5874897-12-31'",
            "'infinity'",
            "'-infinity'",
        ],
        expected: "CASE WHEN v = 'infinity' THEN to_jsonb(2147483647) \
                   WHEN v = '-infinity' THEN to_jsonb(-2147483648) \
                   ELSE to_jsonb(v - date '1970-01-01') END",
    },
    Case {
        documents: &["time"],
        declared: "time",
        values: &[
            "'00:00:00'",
            "'23:59:59.999999'",
            "'24:00:00'",
            "'12:34:56.789'",
        ],
        expected: "to_jsonb((extract(epoch FROM v) * 1000000)::bigint)",
    },
    Case {
        documents: &["timetz"],
        declared: "timetz",
        values: &["'00:00:00+00'", "'12:34:56.789+05:30'", "'23:59:59-15:59'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["timestamp"],
        declared: "timestamp",
        values: &[
            "'1970-01-01 00:00:00'",
            "'4713-01-01 00:00:00 BC'",
            "'294247-01-10 04:00:54.775806'",
            "'infinity'",
            "'-infinity'",
        ],
        expected: TIMESTAMP_MICROS,
    },
    Case {
        documents: &["timestamptz"],
        declared: "timestamptz",
        values: &[
            "'2024-02-29 12:00:00.000001+05:30'",
            "'4713-01-01 00:00:00+00 BC'",
            "'infinity'",
            "'-infinity'",
        ],
        expected: TIMESTAMP_MICROS,
    },
    Case {
        documents: &["interval"],
        declared: "interval",
        values: &[
            "'0'",
            "'1 year 2 mons 3 days 04:05:06.789'",
            "'-1 day'",
            "'178000000 years'",
        ],
        // The comparing session prints intervals as ISO 8601, like sluice's.
        expected: AS_TEXT,
    },
    Case {
        documents: &["json"],
        declared: "json",
        values: &["'{\"a\": [1, 2]}'", "'\"x\"'", "'null'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["jsonb"],
        declared: "jsonb",
        values: &["'{\"b\": 1, \"a\": [true, null]}'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["arrays"],
        declared: "integer[]",
        values: &["'{}'", "'{1,NULL,3}'", "'{NULL}'", "'[0:1]={7,8}'"],
        expected: AS_JSON,
    },
    Case {
        documents: &["arrays"],
        declared: "text[]",
        values: &["'{\"a b\",\"NULL\",NULL,\"\",\"{x}\",\"q\\\"\"}'"],
        expected: AS_JSON,
    },
    Case {
        documents: &["arrays"],
        declared: "numeric(5,2)[]",
        values: &["'{1.5,NULL,-999.99}'"],
        expected: ELEMENTS_AS_TEXT,
    },
    Case {
        documents: &["multi-dimensional arrays"],
        declared: "integer[][]",
        values: &["'{{1,2},{3,NULL}}'", "'{}'"],
        expected: AS_JSON,
    },
    Case {
        documents: &["arrays"],
        declared: "box[]",
        values: &["'{\"(1,2),(3,4)\";\"(5,6),(7,8)\"}'"],
        expected: ELEMENTS_AS_TEXT,
    },
    Case {
        documents: &["enums"],
        declared: "mood",
        values: &["'sad'", "'happy'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["domains"],
        declared: "price",
        values: &["'0'", "'99999999.99'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["composite types"],
        declared: "address",
        values: &[
            "ROW('Main \"St\"', 12, '{a,NULL}')",
            "ROW(NULL, NULL, NULL)",
            "ROW('', -1, '{}')",
        ],
        expected: AS_JSON,
    },
    Case {
        documents: &["ranges"],
        declared: "int4range",
        values: &["'empty'", "'[1,5)'", "'(,)'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["ranges"],
        declared: "tstzrange",
        values: &["'[2024-01-01 00:00+00,infinity)'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["multiranges"],
        declared: "int4multirange",
        values: &["'{}'", "'{[1,3),[5,7)}'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["hstore"],
        declared: "hstore",
        values: &["''", "'a=>1, b=>NULL, \"c d\"=>\"x\\\"y\"'"],
        expected: "hstore_to_json(v)::jsonb",
    },
    Case {
        documents: &["other extension types", "citext"],
        declared: "citext",
        values: &["'MiXeD'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["other built-in types", "oidvector", "int2vector"],
        declared: "oidvector",
        values: &["'1 2 3'", "''"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["other built-in types", "pg_lsn"],
        declared: "pg_lsn",
        values: &["'16/B374D848'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["inet"],
        declared: "inet",
        values: &["'192.168.0.1/24'", "'::1'"],
        // The output function's form (a cast to text would add the /128).
        expected: AS_JSON,
    },
    Case {
        documents: &["cidr"],
        declared: "cidr",
        values: &["'10.0.0.0/8'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["macaddr"],
        declared: "macaddr",
        values: &["'08:00:2b:01:02:03'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["macaddr8"],
        declared: "macaddr8",
        values: &["'08:00:2b:01:02:03:04:05'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["bit(n)"],
        declared: "bit(3)",
        values: &["B'101'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["varbit"],
        declared: "varbit",
        values: &["B''", "B'1'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["xml"],
        declared: "xml",
        values: &["'<a x=\"1\">t</a>'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["tsvector"],
        declared: "tsvector",
        values: &["'a fat cat'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["tsquery"],
        declared: "tsquery",
        values: &["'fat & cat'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["point"],
        declared: "point",
        values: &["'(1.5,-2)'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["geometric types", "line"],
        declared: "line",
        values: &["'{1,-1,0}'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["geometric types", "lseg"],
        declared: "lseg",
        values: &["'[(0,0),(1,1)]'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["geometric types", "box"],
        declared: "box",
        values: &["'(3,4),(1,2)'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["geometric types", "path"],
        declared: "path",
        values: &["'[(0,0),(1,1),(2,0)]'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["geometric types", "polygon"],
        declared: "polygon",
        values: &["'((0,0),(1,1),(1,0))'"],
        expected: AS_TEXT,
    },
    Case {
        documents: &["geometric types", "circle"],
        declared: "circle",
        values: &["'<(0,0),2.5>'"],
        expected: AS_TEXT,
    },
];

const SCHEMA: &str = "CREATE EXTENSION hstore; CREATE EXTENSION citext; \
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
    CREATE DOMAIN price AS numeric(10,2) CHECK (VALUE >= 0); \
    CREATE TYPE address AS (street text, number int, tags text[]);";

/// Rows 0..=n for the snapshot (ids from `first_id`): row 0 all NULL, row k the k-th value of every case
/// that has one.
fn inserts(first_id: usize) -> String {
    let rows = CASES.iter().map(|c| c.values.len()).max().unwrap_or(0);
    (0..=rows)
        .map(|row| {
            let values: Vec<String> = CASES
                .iter()
                .map(|c| match row.checked_sub(1).and_then(|i| c.values.get(i)) {
                    Some(value) => format!("({value})::{}", c.declared),
                    None => "NULL".to_owned(),
                })
                .collect();
            format!(
                "INSERT INTO every_type VALUES ({}, {});",
                first_id + row,
                values.join(", ")
            )
        })
        .collect()
}

/// What PostgreSQL says each column of row `id` must print as.
async fn expected_row(services: &Services, id: i32) -> Vec<Json> {
    let client = services.pg.client(common::DATABASE).await.unwrap();
    client
        .batch_execute("SET IntervalStyle = iso_8601; SET TimeZone = 'UTC'")
        .await
        .unwrap();
    let mut expected = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let sql = format!(
            "SELECT CASE WHEN num_nulls(v) = 1 THEN 'null' ELSE ({})::text END \
             FROM (SELECT c{i} AS v FROM every_type WHERE id = $1) s",
            case.expected
        );
        let row = client
            .query_one(&sql, &[&id])
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
        let text: Option<String> = row.get(0);
        let json = text.map_or(Json::Null, |t| {
            serde_json::from_str(&t).unwrap_or_else(|err| panic!("{sql} gave {t}: {err}"))
        });
        expected.push(json);
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_through_a_real_server() {
    let columns: Vec<String> = CASES
        .iter()
        .enumerate()
        .map(|(i, c)| format!("c{i} {}", c.declared))
        .collect();
    let schema = format!(
        "{SCHEMA} CREATE TABLE every_type (id int PRIMARY KEY, {}); {}",
        columns.join(", "),
        inserts(0)
    );
    let (services, _, mut daemon) =
        common::streaming(&schema, &["public.every_type"], "", &[]).await;
    // The same values again, streamed.
    services.sql(&inserts(100)).await;

    let rows = 2 * (CASES.iter().map(|c| c.values.len()).max().unwrap() + 1);
    let events = decode_all(
        &services,
        &services
            .read("shop.public.every_type", rows, Duration::from_secs(60))
            .await,
    );
    services.assert_no_dead_letters().await;
    assert_eq!(events.len(), rows, "{events:?}");

    let mut mismatches = Vec::new();
    for event in &events {
        let after = event.after().expect("an insert or read has an after image");
        let id = after["id"].as_i64().unwrap() as i32;
        let op = event.op().unwrap();
        assert_eq!(op, if id < 100 { "r" } else { "c" }, "row {id}");
        for (i, (case, expected)) in CASES
            .iter()
            .zip(expected_row(&services, id).await)
            .enumerate()
        {
            let got = &after[format!("c{i}").as_str()];
            if *got != expected {
                mismatches.push(format!(
                    "{} row {id}: sluice {got}, PostgreSQL {expected}",
                    case.declared
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // The values compare equal as JSON; the schema says what they mean.
    let schema = services
        .registry
        .schemas()
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| s.contains("Envelope"))
        .expect("the value schema is registered");
    for logical in [
        r#""logicalType":"time-micros""#,
        r#""logicalType":"timestamp-micros""#,
        r#""logicalType":"local-timestamp-micros""#,
        r#""logicalType":"date""#,
        r#""logicalType":"decimal","precision":19,"scale":2"#,
        r#""logicalType":"uuid""#,
        r#""type":"map","values":["null","string"]"#,
        r#""name":"sluice.postgres.types.public.address""#,
        r#""sluice.source_type":"public.mood""#,
    ] {
        assert!(schema.contains(logical), "{logical} missing from {schema}");
    }
    daemon.stop_cleanly();
}

/// Each type named in the mapping table of `schemas/README.md` has a case here.
#[test]
fn the_documented_mapping_is_covered() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/README.md")).unwrap();
    let table = doc
        .split("## Column types")
        .nth(1)
        .expect("schemas/README.md has a `## Column types` section");
    let mut documented = Vec::new();
    let rows = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    for line in rows {
        let first_cell = line[1..].split('|').next().unwrap_or_default();
        // Names are in backticks: `integer`, `varchar(n)`, …
        documented.extend(first_cell.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    assert!(documented.len() > 30, "{documented:?}");
    let missing: Vec<&String> = documented
        .iter()
        .filter(|name| !CASES.iter().any(|c| c.documents.contains(&name.as_str())))
        .collect();
    assert!(missing.is_empty(), "documented but not tested: {missing:?}");
}

/// numeric NaN and ±Infinity have no Avro decimal form: by default the row is published with the value null
/// and the original goes to the dead-letter topic; with `decimal_handling = "string"` it is published as
/// text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_numerics_follow_decimal_handling() {
    let (services, config, mut daemon) = common::streaming(
        "CREATE TABLE readings (id int PRIMARY KEY, value numeric(8,3))",
        &["public.readings"],
        "",
        &[],
    )
    .await;
    services
        .sql("INSERT INTO readings VALUES (1, 'NaN'), (2, 1.5)")
        .await;
    let letter = services
        .dead_letters(1, Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(letter["stage"], "encode", "{letter}");
    let reason = letter["error"].as_str().unwrap();
    assert!(
        reason.contains("NaN has no Avro decimal representation")
            && reason.contains("decimal_handling"),
        "{reason}"
    );
    assert_eq!(letter["change"]["after"]["value"], "NaN", "{letter}");
    let events = decode_all(
        &services,
        &services
            .read("shop.public.readings", 2, Duration::from_secs(60))
            .await,
    );
    assert_eq!(events.len(), 2, "{events:?}");
    let row = |id: i64| {
        events
            .iter()
            .find(|e| e.after().unwrap()["id"] == id)
            .unwrap_or_else(|| panic!("no row {id}: {events:?}"))
    };
    assert!(row(1).after().unwrap()["value"].is_null());
    assert_eq!(row(1).headers["sluice.unencodable"], "value");
    assert_eq!(row(2).after().unwrap()["value"], "1.500");
    daemon.stop_cleanly();

    // The same table published as text: every value fits.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("[source]\n", "[source]\ndecimal_handling = \"string\"\n", 1);
    std::fs::write(&config, text).unwrap();
    let mut daemon = common::Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("INSERT INTO readings VALUES (3, 'NaN'), (4, -2.25)")
        .await;
    let events = decode_all(
        &services,
        &services
            .read("shop.public.readings", 4, Duration::from_secs(60))
            .await,
    );
    let mut values: Vec<(i64, Json)> = events
        .iter()
        .map(|e| {
            let after = e.after().unwrap();
            (after["id"].as_i64().unwrap(), after["value"].clone())
        })
        .collect();
    values.sort_by_key(|(id, _)| *id);
    let expected = [
        (1, Json::Null),
        (2, "1.500".into()),
        (3, "NaN".into()),
        (4, "-2.250".into()),
    ];
    assert_eq!(values, expected, "{events:?}");
    daemon.stop_cleanly();
}
