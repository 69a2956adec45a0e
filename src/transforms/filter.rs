//! `type = "filter"`: drops the events for which a CEL condition is false.
//!
//! The condition is CEL (the standard library and the strings extension: `lowerAscii()`, `split()`, ...),
//! compiled once. It reads, with Debezium's names:
//!
//! - `op`: `"c"`, `"u"`, `"d"`, `"r"` (a snapshot read) or `"t"` (a truncate);
//! - `before`, `after`: the row (or document) as a map from column (or field) name to value, `null` when
//!   the event has none; [`view`](super::view) tells how each type reads;
//! - `source`: rows `{connector: "postgresql", db, schema, table, lsn, txId, ts_ms, snapshot}`, documents
//!   `{connector: "mongodb", db, collection, rs, ts_ms, snapshot}`; `txId` and `rs` may be `null`, `ts_ms`
//!   is the commit time (a document's wall time, else its cluster time's second) in milliseconds;
//! - `topic`: the topic the event is bound for (after any route before the filter).
//!
//! `true` keeps the event, `false` drops it; a condition that fails on an event (a missing key, `after.x`
//! of a delete, mismatched types) or gives anything but a bool sends it to the dead-letter topic. A name
//! other than those five is refused when the config is read, so a typo is not a dead letter per event.
//! Logical decoding messages pass unchanged.

use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::types::{CelBool, CelString};
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::{extensions, Context, Env, ExecutionError, ParseErrors, Program, Value};
use sluice_core::event::SourceEvent;

use super::view::{self, Cel, Wanted};
use super::{KeyProblem, Shaped, Step, Transform};

/// The variables a condition may name.
const VARIABLES: [&str; 5] = ["op", "before", "after", "source", "topic"];
/// The function namespaces of the environment (`optional.of(x)`, `strings.quote(s)`): a call on one of
/// these names is a function, not a variable's method.
const NAMESPACES: [&str; 2] = ["optional", "strings"];

pub struct Filter {
    program: Program,
    env: Arc<Env>,
    reads: Reads,
}

/// What of an event the condition reads: only that is converted for it.
#[derive(Debug, Default, PartialEq)]
struct Reads {
    before: Columns,
    after: Columns,
    source: bool,
}

/// Which columns (or top-level fields) of `before` or `after` a condition reads.
#[derive(Debug, Default, PartialEq)]
enum Columns {
    #[default]
    None,
    /// Only as `after.<name>` (or `has(after.<name>)`).
    Named(Vec<String>),
    /// As a whole: `after[name]`, `after.exists(...)`, `after == null`, ...
    All,
}

impl Columns {
    /// None when unread; else which to convert (None: all).
    fn wanted(&self) -> Option<Wanted<'_>> {
        match self {
            Columns::None => None,
            Columns::Named(names) => Some(Some(names)),
            Columns::All => Some(None),
        }
    }

    fn read(&mut self, field: Option<&str>) {
        match (&mut *self, field) {
            (Columns::All, _) => {}
            (_, None) => *self = Columns::All,
            (Columns::None, Some(name)) => *self = Columns::Named(vec![name.to_owned()]),
            (Columns::Named(names), Some(name)) => {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
        }
    }
}

impl Filter {
    pub fn new(condition: &str) -> Result<Filter, KeyProblem> {
        let mut env = Env::stdlib();
        env.add_extension(extensions::strings).map_err(|e| {
            (
                "condition",
                format!("the CEL environment cannot be built: {e}"),
            )
        })?;
        let program = env
            .compile(condition)
            .map_err(|errors| ("condition", parse_problem(&errors)))?;
        let mut scan = Scan {
            env: &env,
            bound: Vec::new(),
            reads: Reads::default(),
        };
        scan.expr(program.expression())
            .map_err(|message| ("condition", message))?;
        let reads = scan.reads;
        Ok(Filter {
            program,
            env: Arc::new(env),
            reads,
        })
    }

    /// The columns the condition reads by name (`after.email`), for `validate` to look up.
    pub(super) fn named_columns(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for columns in [&self.reads.before, &self.reads.after] {
            if let Columns::Named(named) = columns {
                for name in named {
                    if !names.contains(&name.as_str()) {
                        names.push(name);
                    }
                }
            }
        }
        names
    }

    /// Whether the condition holds for the event, or why it could not tell.
    fn holds(&self, shaped: &Shaped) -> Result<bool, String> {
        let bindings = self.bind(shaped)?;
        let mut context = Context::with_env(Arc::clone(&self.env));
        context.set_variable_resolver(&bindings);
        let result = Value::resolve_val(self.program.expression(), &context)
            .map_err(|e| format!("the condition failed: {}", without_values(&e)))?;
        match result.downcast_ref::<CelBool>() {
            Some(kept) => Ok(*kept.inner()),
            None => Err(format!(
                "the condition gave {}, not a bool",
                result.get_type().name()
            )),
        }
    }

    /// The event's values the condition reads.
    fn bind<'a>(&self, shaped: &'a Shaped) -> Result<Bindings<'a>, String> {
        let Reads {
            before,
            after,
            source,
        } = &self.reads;
        let (op, before, after, source) = match &shaped.event {
            SourceEvent::Change(change) => (
                change.op,
                before
                    .wanted()
                    .map(|w| view::row(&change.table, change.before.as_ref(), w)),
                after
                    .wanted()
                    .map(|w| view::row(&change.table, change.after.as_ref(), w)),
                source.then(|| view::row_source(change)),
            ),
            SourceEvent::Document(change) => (
                change.op,
                before
                    .wanted()
                    .map(|w| view::document(change.before.as_deref(), w))
                    .transpose()?,
                after
                    .wanted()
                    .map(|w| view::document(change.after.as_deref(), w))
                    .transpose()?,
                source.then(|| view::document_source(change)),
            ),
            _ => return Err("the event is no change".into()),
        };
        Ok(Bindings {
            op: CelString::from(op.code()),
            topic: CelString::from(shaped.topic.as_str()),
            before,
            after,
            source,
        })
    }
}

impl Transform for Filter {
    fn apply(&mut self, shaped: Shaped) -> Step {
        // Messages (and anything else that is no change) are not the condition's to judge.
        if !matches!(
            shaped.event,
            SourceEvent::Change(_) | SourceEvent::Document(_)
        ) {
            return Step::Keep(shaped);
        }
        match self.holds(&shaped) {
            Ok(true) => Step::Keep(shaped),
            Ok(false) => Step::Drop,
            Err(reason) => Step::Reject { shaped, reason },
        }
    }
}

/// The variables of one evaluation, borrowing the event (those the condition does not read are None).
struct Bindings<'a> {
    op: CelString<'a>,
    topic: CelString<'a>,
    before: Option<Cel<'a>>,
    after: Option<Cel<'a>>,
    source: Option<Cel<'a>>,
}

impl VariableResolver for Bindings<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let value: &'b dyn cel::common::value::Val = match variable {
            "op" => &self.op,
            "topic" => &self.topic,
            "before" => self.before.as_deref()?,
            "after" => self.after.as_deref()?,
            "source" => self.source.as_deref()?,
            _ => return None,
        };
        Some(CowVal::Borrowed(value))
    }
}

/// The parser's messages, on one line: `… (line 1, column 7)`.
fn parse_problem(errors: &ParseErrors) -> String {
    let messages: Vec<String> = errors
        .errors
        .iter()
        .map(|e| format!("{} (line {}, column {})", e.msg, e.pos.0, e.pos.1))
        .collect();
    format!("does not parse: {}", messages.join("; "))
}

/// A walk over the compiled expression: refuses names that are no variable, and notes what it reads.
struct Scan<'e> {
    env: &'e Env,
    /// The names comprehensions bind around the node (`x` of `list.exists(x, …)`).
    bound: Vec<&'e str>,
    reads: Reads,
}

impl<'e> Scan<'e> {
    fn expr(&mut self, node: &'e IdedExpr) -> Result<(), String> {
        match &node.expr {
            Expr::Ident(name) => self.name(name, None),
            Expr::Select(select) => {
                if self.names_type(node) {
                    return Ok(());
                }
                match &select.operand.expr {
                    Expr::Ident(name) => self.name(name, Some(&select.field)),
                    _ => self.expr(&select.operand),
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    if !self.names_namespace(target) {
                        self.expr(target)?;
                    }
                }
                call.args.iter().try_for_each(|arg| self.expr(arg))
            }
            Expr::Comprehension(comprehension) => {
                self.expr(&comprehension.iter_range)?;
                self.expr(&comprehension.accu_init)?;
                let outside = self.bound.len();
                self.bound.push(&comprehension.iter_var);
                self.bound.extend(comprehension.iter_var2.as_deref());
                self.bound.push(&comprehension.accu_var);
                let inside = [
                    &comprehension.loop_cond,
                    &comprehension.loop_step,
                    &comprehension.result,
                ];
                let scanned = inside.into_iter().try_for_each(|e| self.expr(e));
                self.bound.truncate(outside);
                scanned
            }
            Expr::List(list) => list.elements.iter().try_for_each(|e| self.expr(e)),
            Expr::Map(map) => map.entries.iter().try_for_each(|e| self.entry(&e.expr)),
            Expr::Struct(fields) => fields.entries.iter().try_for_each(|e| self.entry(&e.expr)),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    fn entry(&mut self, entry: &'e EntryExpr) -> Result<(), String> {
        match entry {
            EntryExpr::StructField(field) => self.expr(&field.value),
            EntryExpr::MapEntry(entry) => {
                self.expr(&entry.key)?;
                self.expr(&entry.value)
            }
        }
    }

    /// A name, and the field selected on it (`after.status`) if that is all that is done with it.
    fn name(&mut self, name: &str, field: Option<&str>) -> Result<(), String> {
        let name = name.strip_prefix('.').unwrap_or(name);
        // `@result`: the accumulator a macro's expansion names.
        if name.starts_with('@') || self.bound.contains(&name) {
            return Ok(());
        }
        match name {
            "before" => self.reads.before.read(field),
            "after" => self.reads.after.read(field),
            "source" => self.reads.source = true,
            "op" | "topic" => {}
            _ if self.env.types().find_type(name).is_some() => {}
            _ => {
                return Err(format!(
                    "names `{name}`, which is not a variable: a condition reads op, before, after, \
                     source and topic"
                ))
            }
        }
        Ok(())
    }

    /// `google.protobuf.Timestamp`: a qualified name of a type, whose root is no variable.
    fn names_type(&self, node: &IdedExpr) -> bool {
        qualified_name(node).is_some_and(|segments| {
            !self.is_variable(segments[0])
                && self.env.types().find_type(&segments.join(".")).is_some()
        })
    }

    /// `optional` of `optional.of(x)`.
    fn names_namespace(&self, target: &IdedExpr) -> bool {
        matches!(&target.expr, Expr::Ident(name)
            if NAMESPACES.contains(&name.as_str()) && !self.is_variable(name))
    }

    fn is_variable(&self, name: &str) -> bool {
        VARIABLES.contains(&name) || self.bound.contains(&name)
    }
}

/// `a.b.c` as `["a", "b", "c"]`; None for anything but a name and the fields selected on it.
fn qualified_name(node: &IdedExpr) -> Option<Vec<&str>> {
    let mut segments = Vec::new();
    let mut node = node;
    loop {
        match &node.expr {
            Expr::Ident(name) => {
                segments.push(name.as_str());
                segments.reverse();
                return Some(segments);
            }
            Expr::Select(select) if !select.test => {
                segments.push(select.field.as_str());
                node = &select.operand;
            }
            _ => return None,
        }
    }
}

/// An evaluation error in words that name the values' types, never the values: the reason goes into
/// dead letters and logs, where a masked column's original must not appear.
#[allow(deprecated)]
fn without_values(err: &ExecutionError) -> String {
    use ExecutionError as E;
    match err {
        E::UnsupportedTargetType { target } => {
            format!("invalid argument type: {}", target.type_of())
        }
        E::NotSupportedAsMethod { method, target } => {
            format!(
                "method '{method}' not supported on type '{}'",
                target.type_of()
            )
        }
        E::UnsupportedKeyType(v) => format!("a {} cannot be a map key", v.type_of()),
        E::ValuesNotComparable(a, b) => {
            format!("a {} cannot be compared to a {}", a.type_of(), b.type_of())
        }
        E::UnsupportedUnaryOperator(op, v) => {
            format!("operator '{op}' does not apply to a {}", v.type_of())
        }
        E::UnsupportedBinaryOperator(op, a, b) | E::Overflow(op, a, b) => format!(
            "operator '{op}' on a {} and a {}: {}",
            a.type_of(),
            b.type_of(),
            if matches!(err, E::Overflow(..)) {
                "overflow"
            } else {
                "not supported"
            }
        ),
        E::UnsupportedMapIndex(v) | E::UnsupportedListIndex(v) => {
            format!("a {} cannot index", v.type_of())
        }
        E::UnsupportedIndex(a, b) => format!("a {} cannot index a {}", a.type_of(), b.type_of()),
        E::DivisionByZero(_) => "division by zero".into(),
        E::RemainderByZero(_) => "remainder by zero".into(),
        E::IndexOutOfBounds(_) => "index out of bounds".into(),
        E::DuplicateKey(v) => format!("a map literal repeats a {} key", v.type_of()),
        // The rest name types, keys and functions from the condition, not values.
        other => other.to_string(),
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
