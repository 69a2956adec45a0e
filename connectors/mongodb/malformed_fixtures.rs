//! Malformed fixtures for the conversion tests: a well-formed change event or oplog entry with one field
//! taken out or set to something else, and the field and problem its conversion must name.

use mongodb::bson::{Bson, Document};

use super::change::ConversionError;

/// A change made to a well-formed fixture.
pub(super) enum Damage {
    Remove(&'static str),
    Set(&'static str, Bson),
}

/// The fixture with `field` set to `value`.
pub(super) fn set(field: &'static str, value: impl Into<Bson>) -> Damage {
    Damage::Set(field, value.into())
}

/// Damages a fresh `base()` with each case and checks that `convert` names the case's field and problem.
pub(super) fn assert_errors(
    base: fn() -> Document,
    convert: fn(&Document) -> ConversionError,
    cases: Vec<(Damage, &str, &str)>,
) {
    for (damage, field, problem) in cases {
        let mut fixture = base();
        match damage {
            Damage::Remove(name) => {
                fixture.remove(name);
            }
            Damage::Set(name, value) => {
                fixture.insert(name, value);
            }
        }
        let err = convert(&fixture);
        assert_eq!(
            (err.field.as_str(), err.problem.as_str()),
            (field, problem),
            "{fixture}"
        );
    }
}

/// With `SLUICE_FUZZ_SEEDS` set to a directory, writes `document` as BSON into its folder `target`: every
/// event and entry the conversion tests read becomes a seed of the fuzz targets (fuzz/README.md). Files
/// are named by their content, so a rerun adds nothing.
pub(super) fn fuzz_seed(target: &str, document: &Document) {
    use std::hash::{Hash, Hasher};

    let Some(dir) = std::env::var_os("SLUICE_FUZZ_SEEDS") else {
        return;
    };
    let mut bytes = Vec::new();
    document
        .to_writer(&mut bytes)
        .expect("a document serialises");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let dir = std::path::Path::new(&dir).join(target);
    std::fs::create_dir_all(&dir).expect("the seed folder");
    std::fs::write(dir.join(format!("test-{:016x}", hasher.finish())), bytes).expect("a seed");
}
