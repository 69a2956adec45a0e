//! What the double evaluates of MongoDB's query language, as the manual documents it: BSON's order
//! between values, and `find` filters made of field equality, the comparison operators (`$eq`, `$ne`,
//! `$gt`, `$gte`, `$lt`, `$lte`, `$in`, `$nin`), `$exists`, and `$and` / `$or`. Comparison operators
//! match only values of their operand's type bracket (numbers are one bracket), as the server's do.
//! Anything else is refused with BadValue, as the server refuses an unknown operator.

use std::cmp::Ordering;

use bson::{Bson, Document};

/// MongoDB's BadValue error code.
pub const BAD_VALUE: i32 = 2;

/// MongoDB's order of values, for the types the double is used with: null, numbers by value, strings,
/// documents and arrays by their Extended JSON text, ObjectIds, booleans, dates; anything else after
/// them, by its Extended JSON text.
pub fn compare_values(a: &Bson, b: &Bson) -> Ordering {
    fn number(value: &Bson) -> f64 {
        match value {
            Bson::Int32(n) => f64::from(*n),
            Bson::Int64(n) => *n as f64,
            Bson::Double(n) => *n,
            _ => 0.0,
        }
    }
    bracket(a).cmp(&bracket(b)).then_with(|| match (a, b) {
        (Bson::String(a), Bson::String(b)) => a.cmp(b),
        (Bson::ObjectId(a), Bson::ObjectId(b)) => a.bytes().cmp(&b.bytes()),
        (Bson::Boolean(a), Bson::Boolean(b)) => a.cmp(b),
        (Bson::DateTime(a), Bson::DateTime(b)) => a.cmp(b),
        _ if bracket(a) == 1 => number(a).total_cmp(&number(b)),
        _ => a.to_string().cmp(&b.to_string()),
    })
}

/// A value's place in BSON's order of types; values compare by value only within one bracket.
fn bracket(value: &Bson) -> u8 {
    match value {
        Bson::Null => 0,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => 1,
        Bson::String(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::ObjectId(_) => 6,
        Bson::Boolean(_) => 7,
        Bson::DateTime(_) => 8,
        _ => 9,
    }
}

/// Whether `document` matches `filter`; Err(reason) for what the double does not evaluate.
pub fn matches(document: &Document, filter: &Document) -> Result<bool, String> {
    for (key, condition) in filter {
        let matched = match key.as_str() {
            "$and" => all_of(document, condition, true)?,
            "$or" => all_of(document, condition, false)?,
            operator if operator.starts_with('$') => {
                return Err(format!("unknown top level operator: {operator}"))
            }
            path => field_matches(field(document, path), condition)?,
        };
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `$and` (`every`) or `$or` over an array of filters.
fn all_of(document: &Document, filters: &Bson, every: bool) -> Result<bool, String> {
    let Bson::Array(filters) = filters else {
        return Err("$and/$or must be an array".into());
    };
    for filter in filters {
        let Bson::Document(filter) = filter else {
            return Err("$and/$or entries must be objects".into());
        };
        if matches(document, filter)? != every {
            return Ok(!every);
        }
    }
    Ok(every)
}

/// The value at a dotted path; None when a part is missing.
fn field<'a>(document: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut value = document.get(parts.next()?)?;
    for part in parts {
        value = match value {
            Bson::Document(inner) => inner.get(part)?,
            _ => return None,
        };
    }
    Some(value)
}

/// `{field: value}` or `{field: {$op: operand, ...}}`.
fn field_matches(value: Option<&Bson>, condition: &Bson) -> Result<bool, String> {
    let operators = match condition {
        Bson::Document(operators) if operators.keys().any(|k| k.starts_with('$')) => operators,
        _ => return Ok(equal(value, condition)),
    };
    for (operator, operand) in operators {
        let matched = match operator.as_str() {
            "$eq" => equal(value, operand),
            "$ne" => !equal(value, operand),
            "$gt" => compared(value, operand, |o| o == Ordering::Greater),
            "$gte" => compared(value, operand, |o| o != Ordering::Less),
            "$lt" => compared(value, operand, |o| o == Ordering::Less),
            "$lte" => compared(value, operand, |o| o != Ordering::Greater),
            "$in" | "$nin" => {
                let Bson::Array(options) = operand else {
                    return Err(format!("{operator} needs an array"));
                };
                options.iter().any(|option| equal(value, option)) == (operator == "$in")
            }
            "$exists" => value.is_some() == matches!(operand, Bson::Boolean(true) | Bson::Int32(1)),
            other => return Err(format!("unknown operator: {other}")),
        };
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Equality as the server has it: a missing field equals null, numbers equal across their types.
fn equal(value: Option<&Bson>, operand: &Bson) -> bool {
    let value = value.unwrap_or(&Bson::Null);
    bracket(value) == bracket(operand) && compare_values(value, operand) == Ordering::Equal
}

/// A comparison operator: only values of the operand's type bracket match.
fn compared(value: Option<&Bson>, operand: &Bson, wanted: impl Fn(Ordering) -> bool) -> bool {
    value.is_some_and(|value| {
        bracket(value) == bracket(operand) && wanted(compare_values(value, operand))
    })
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn filters_match_as_the_server_documents() {
        let document = doc! { "_id": 5, "status": "new", "n": 7_i64, "at": { "city": "Oslo" } };
        let yes = [
            doc! {},
            doc! { "status": "new" },
            doc! { "n": 7 },
            doc! { "_id": { "$gt": 4, "$lte": 5.0 } },
            doc! { "at.city": "Oslo" },
            doc! { "gone": null },
            doc! { "status": { "$in": ["old", "new"] } },
            doc! { "$and": [{ "_id": 5 }, { "status": { "$ne": "old" } }] },
            doc! { "$or": [{ "_id": 6 }, { "n": { "$gte": 7 } }] },
            doc! { "gone": { "$exists": false } },
        ];
        for filter in yes {
            assert_eq!(matches(&document, &filter), Ok(true), "{filter}");
        }
        let no = [
            doc! { "status": "old" },
            // Type brackets: a number bound never matches a string.
            doc! { "status": { "$gt": 1 } },
            doc! { "_id": { "$gt": "a" } },
            doc! { "$and": [{ "_id": 5 }, { "n": 8 }] },
            doc! { "status": { "$nin": ["new"] } },
        ];
        for filter in no {
            assert_eq!(matches(&document, &filter), Ok(false), "{filter}");
        }
        assert!(matches(&document, &doc! { "n": { "$regex": "x" } }).is_err());
        assert!(matches(&document, &doc! { "$where": "1" }).is_err());
    }

    #[test]
    fn values_order_by_type_then_value() {
        let mut values = [
            Bson::ObjectId(bson::oid::ObjectId::from_bytes([1; 12])),
            Bson::String("b".into()),
            Bson::Int64(3),
            Bson::Double(2.5),
            Bson::String("a".into()),
            Bson::Null,
        ];
        values.sort_by(compare_values);
        assert_eq!(values[0], Bson::Null);
        assert_eq!(values[1], Bson::Double(2.5));
        assert_eq!(values[2], Bson::Int64(3));
        assert_eq!(values[3], Bson::String("a".into()));
        assert!(matches!(values[5], Bson::ObjectId(_)));
    }
}
