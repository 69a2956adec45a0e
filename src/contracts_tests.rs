use serde_json::json;

use super::*;

impl Contract {
    fn check_event(&self, envelope: &Json) -> Result<(), Mismatch> {
        self.check(envelope, &[])
    }
}
use crate::avro::table_schemas;
use sluice_core::event::{Column, ColumnType, Table};

fn orders() -> Schema {
    let column = |name: &str, column_type, key| Column {
        name: name.into(),
        column_type,
        key,
        source_type: String::new(),
        not_null: false,
        precision: None,
    };
    let table = Table {
        id: 1,
        schema: "public".into(),
        name: "orders".into(),
        columns: vec![
            column("id", ColumnType::Int64, true),
            column(
                "amount",
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                false,
            ),
            column("status", ColumnType::String, false),
        ],
    };
    table_schemas("shop", &table).unwrap().value.schema
}

fn contract(text: &str) -> Contract {
    Contract::parse("shop.public.orders", Path::new("c.avsc"), text).unwrap()
}

const ROW: &str = r#"{"type": "record", "name": "Value", "fields": [
    {"name": "id", "type": "long"},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
    {"name": "status", "type": ["null", "string"]}
]}"#;

#[test]
fn a_row_contract_reads_the_table_and_notes_what_events_can_break() {
    let found = contract(ROW).compare(&orders());
    assert!(found.iter().all(|m| !m.fatal), "{found:?}");
    let fields: Vec<&str> = found.iter().map(|m| m.field.as_str()).collect();
    // id and amount are nullable in the envelope's row record; amount's precision is smaller.
    assert!(fields.contains(&"after.id"), "{found:?}");
    assert!(fields.contains(&"after.amount"), "{found:?}");
}

#[test]
fn incompatible_contracts_name_the_fields() {
    let missing = ROW.replace(
        r#"{"name": "status", "type": ["null", "string"]}"#,
        r#"{"name": "region", "type": "string"}"#,
    );
    let found = contract(&missing).compare(&orders());
    assert!(
        found.contains(&Mismatch {
            field: "after.region".into(),
            problem: "is not in the table and has no default in the contract".into(),
            fatal: true
        }),
        "{found:?}"
    );

    let scale = ROW.replace(r#""scale": 2"#, r#""scale": 3"#);
    let found = contract(&scale).compare(&orders());
    assert!(
        found
            .iter()
            .any(|m| m.fatal && m.field == "after.amount" && m.problem.contains("scale")),
        "{found:?}"
    );

    let typed = ROW.replace(r#"["null", "string"]"#, r#""int""#);
    let found = contract(&typed).compare(&orders());
    assert!(
        found.iter().any(|m| m.fatal
            && m.field == "after.status"
            && m.problem
                .contains("string in the table cannot be read as int")),
        "{found:?}"
    );

    let renamed = ROW.replace(r#""name": "Value""#, r#""name": "Order""#);
    let found = contract(&renamed).compare(&orders());
    assert!(
        found
            .iter()
            .any(|m| m.fatal && m.problem.contains("named `Value` in the table")),
        "{found:?}"
    );
}

#[test]
fn events_are_checked_field_by_field() {
    let contract = contract(ROW);
    let event = |after: Json| json!({"op": "c", "before": null, "after": after});
    assert_eq!(
        contract.check_event(&event(
            json!({"id": 1, "amount": "1234.50", "status": null})
        )),
        Ok(())
    );
    let err = contract
        .check_event(&event(json!({"id": 1, "amount": null, "status": "new"})))
        .unwrap_err();
    assert_eq!(err.field, "after.amount");
    assert!(err.problem.contains("is null"), "{err}");
    let err = contract
        .check_event(&event(
            json!({"id": 1, "amount": "12345.00", "status": "new"}),
        ))
        .unwrap_err();
    assert!(err.problem.contains("precision 6"), "{err}");
    let err = contract
        .check_event(&event(json!({"id": 1, "amount": "1.005", "status": "new"})))
        .unwrap_err();
    assert!(err.problem.contains("fraction digits"), "{err}");
    // A delete has no after: nothing to hold to the row contract.
    assert_eq!(
        contract.check_event(&json!({"op": "d", "after": null})),
        Ok(())
    );
}

#[test]
fn unchanged_toast_values_and_aliases_are_not_violations() {
    let contract = contract(ROW);
    // An update that left a TOASTed column alone carries null for it: the consumer keeps its value.
    let update = json!({"op": "u", "after": {"id": 1, "amount": null, "status": "x"}});
    assert!(contract.check(&update, &[]).is_err());
    assert_eq!(contract.check(&update, &["amount".to_owned()]), Ok(()));

    let aliased = super::Contract::parse(
        "t",
        Path::new("c.avsc"),
        r#"{"type": "record", "name": "Value", "fields": [
            {"name": "order_id", "aliases": ["id"], "type": "long"}]}"#,
    )
    .unwrap();
    assert!(aliased.compare(&orders()).iter().all(|m| !m.fatal));
    assert_eq!(aliased.check_event(&json!({"after": {"id": 5}})), Ok(()));
}

#[test]
fn logical_types_resolve_like_their_underlying_types() {
    let as_long = ROW.replace(
        r#"{"name": "id", "type": "long"}"#,
        r#"{"name": "id", "type": {"type": "long", "logicalType": "timestamp-micros"}}"#,
    );
    let found = contract(&as_long).compare(&orders());
    assert!(found.iter().all(|m| !m.fatal), "{found:?}");
    let as_bytes = ROW.replace(
        r#"{"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}"#,
        r#""bytes""#,
    );
    let found = contract(&as_bytes).compare(&orders());
    assert!(found.iter().all(|m| !m.fatal), "{found:?}");
}

#[test]
fn enum_symbols_must_be_known() {
    let contract = contract(
        r#"{"type": "record", "name": "Value", "fields": [
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["new", "paid"]}}]}"#,
    );
    assert_eq!(
        contract.check_event(&json!({"after": {"status": "paid"}})),
        Ok(())
    );
    let err = contract
        .check_event(&json!({"after": {"status": "lost"}}))
        .unwrap_err();
    assert_eq!(err.field, "after.status");
    assert!(err.problem.contains("`lost` is not one of"), "{err}");
}

#[test]
fn an_envelope_contract_checks_the_whole_event() {
    let contract = contract(
        r#"{"type": "record", "name": "Envelope", "fields": [
        {"name": "op", "type": "string"},
        {"name": "after", "type": ["null", {"type": "record", "name": "Value", "fields": [
            {"name": "id", "type": "long"}]}]}]}"#,
    );
    let found = contract.compare(&orders());
    assert!(found.iter().all(|m| !m.fatal), "{found:?}");
    assert_eq!(
        contract.check_event(&json!({"op": "c", "after": {"id": 3}})),
        Ok(())
    );
    let err = contract
        .check_event(&json!({"op": "c", "after": {"id": null}}))
        .unwrap_err();
    assert_eq!(err.field, "after.id");
}

#[test]
fn contracts_load_from_a_directory_by_topic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.public.orders.avsc"), ROW).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a contract").unwrap();
    let contracts = Contracts::load(dir.path()).unwrap();
    assert!(contracts.get("shop.public.orders").is_some());
    assert_eq!(contracts.iter().count(), 1);
    assert!(Contracts::load(&dir.path().join("absent"))
        .unwrap()
        .is_empty());

    std::fs::write(dir.path().join("shop.public.bad.avsc"), "\"long\"").unwrap();
    let err = Contracts::load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("shop.public.bad.avsc") && err.contains("record"),
        "{err}"
    );
}
