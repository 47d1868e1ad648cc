//! Selection predicates: which records of a master file a replication
//! task sends, written in CEL (the Common Expression Language), e.g.
//! `grp % 4 == 0 && qty > 10`.
//!
//! A predicate reads a record's fields as CEL variables named after the
//! fields: `Int` is a CEL `int`, `Float` a `double`, `Text` a `string`,
//! `Bytes` `bytes`, `Bool` `bool` and `Null` `null`. It is compiled once,
//! against the master file's declared field names: a predicate that does not
//! parse, that is empty, or that names a variable which is not a declared
//! field is refused at [`Predicate::compile`], so a typo never silently
//! selects nothing. Standard type names (`int`, `string`, ...) and the
//! variables a macro binds (`x` in `[1, 2].exists(x, x == grp)`) are not
//! fields.
//!
//! # The evaluation-error rule
//!
//! [`Predicate::eval`] returns `Ok(true)` or `Ok(false)` when the predicate
//! evaluates to a bool, and `Err(reason)` when it cannot be evaluated:
//! - the record lacks a field the predicate reads (checked before
//!   evaluating, for every field the predicate reads, so the outcome never
//!   depends on which side of `&&` / `||` would have been evaluated first);
//! - an operator or function does not apply to the field's type, as in
//!   `"a" % 4`, or fails, as in a division by zero or an overflow;
//! - the result is not a bool, as in `qty + 1`.
//!
//! Replication uses [`Predicate::selects`]: **a record is selected if and only
//! if `eval` returns `Ok(true)`; an evaluation error counts as "not
//! selected"** — the same as `false`. A record that cannot be judged is never
//! sent. Callers that want to report such records call `eval` and log the
//! reason.
//!
//! Bounds: a source longer than [`MAX_SOURCE_BYTES`] or an expression nested
//! deeper than [`MAX_DEPTH`] is refused as a syntax error, so that neither
//! parsing nor evaluation can exhaust a thread's stack; comprehensions
//! nested deeper than [`MAX_LOOP_DEPTH`] are refused as over the cost
//! limit, so that no record's evaluation runs long.
//!
//! [`project`] keeps only the named fields of a record, for a task that
//! replicates a subset of the fields.

use crate::record::{Record, Value};
use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::types::{CelBool, CelBytes, CelDouble, CelInt, CelNull, CelString};
use cel::common::value::Val;
use cel::{Context, Env, Program};
use std::collections::BTreeSet;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

/// The longest predicate source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 8192;
/// The deepest nesting of a compiled predicate's expression tree accepted
/// (`a + b + c` is 3 deep: `+` nests to the left). Evaluation recurses once
/// per level on the caller's thread; at this bound it stays within a 2 MiB
/// thread stack (Rust's default for spawned threads) even with the CEL
/// crate unoptimized, and far within it optimized.
pub const MAX_DEPTH: usize = 48;
/// The cost limit: how deeply comprehensions may nest. A list in a
/// predicate is a literal within [`MAX_SOURCE_BYTES`] (fields are
/// scalars, so at most about 4,000 elements), and one loop over it costs
/// its length per record, or its square if its body searches a list
/// (`L.all(a, a in L)`): bounded, where nested loops multiply (two nested
/// loops of 150 inside a third took 13 s a record before this limit).
/// Only an administrator installs predicates.
pub const MAX_LOOP_DEPTH: usize = 1;
/// The stack of the thread that parses a predicate.
const COMPILE_STACK_BYTES: usize = 64 << 20;

/// Why a predicate was refused at compile time.
#[derive(Debug, thiserror::Error)]
pub enum PredicateError {
    /// The source is not a CEL expression.
    #[error("predicate {} is not a valid CEL expression: {reason}", excerpt(.source_text))]
    Syntax { source_text: String, reason: String },
    /// The predicate names variables that are not fields of the master file.
    /// `field` holds every offending name, separated by ", ".
    #[error(
        "predicate reads unknown field(s) {field}; the master file declares: {}",
        list_or_none(.known)
    )]
    UnknownField { field: String, known: Vec<String> },
    /// The source is empty or only white space.
    #[error(
        "predicate is empty: give a CEL expression over the record's fields, such as `qty > 10`"
    )]
    Empty,
}

/// The source, quoted, cut after 120 characters.
fn excerpt(source: &str) -> String {
    const SHOWN: usize = 120;
    match source.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &source[..cut], source.len()),
        None => format!("{source:?}"),
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(no fields)".to_string()
    } else {
        names.join(", ")
    }
}

/// The standard CEL environment, built once: it holds no state that an
/// evaluation changes.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// A compiled CEL selection predicate over a record's fields.
#[derive(Clone)]
pub struct Predicate {
    source: String,
    program: Arc<Program>,
    /// The fields the predicate reads, sorted, without duplicates.
    variables: Vec<String>,
    /// The same predicate as a native tree, when it is built only from what
    /// [`Fast`] handles (most selections are: `grp % 4 == 0 && qty > 10`).
    fast: Option<Arc<Fast>>,
}

/// A predicate over integer and text fields, evaluated without the CEL
/// interpreter (which costs a context, a boxed value per field and a tree
/// walk per record: 15 % of a master's CPU in a partial initial load).
/// It answers only where CEL's answer is a plain bool it can be sure of:
/// every field it reads holds the type it needs and no arithmetic fails.
/// Anything else (another type, an overflow) gives `None`, and the CEL
/// program decides, errors and all.
#[derive(Debug)]
enum Fast {
    Bool(bool),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
    /// Two integers compared.
    Int(std::cmp::Ordering, bool, IntTerm, IntTerm),
    /// A text field equal (or not) to a string literal.
    Text {
        field: String,
        lit: String,
        eq: bool,
    },
}

#[derive(Debug)]
enum IntTerm {
    Field(String),
    Lit(i64),
    /// `term % divisor`, the divisor a literal other than 0.
    Rem(Box<IntTerm>, i64),
}

impl IntTerm {
    fn compile(e: &IdedExpr, fields: &BTreeSet<&str>) -> Option<IntTerm> {
        use cel::common::ast::operators::{MODULO, NEGATE};
        match &e.expr {
            Expr::Ident(name) if fields.contains(name.as_str()) => {
                Some(IntTerm::Field(name.clone()))
            }
            Expr::Literal(cel::common::ast::LiteralValue::Int(i)) => Some(IntTerm::Lit(*i.inner())),
            Expr::Call(c) if c.target.is_none() && c.func_name == NEGATE && c.args.len() == 1 => {
                match IntTerm::compile(&c.args[0], fields)? {
                    IntTerm::Lit(i) => i.checked_neg().map(IntTerm::Lit),
                    _ => None,
                }
            }
            Expr::Call(c) if c.target.is_none() && c.func_name == MODULO && c.args.len() == 2 => {
                let IntTerm::Lit(d) = IntTerm::compile(&c.args[1], fields)? else {
                    return None;
                };
                if d == 0 {
                    return None;
                }
                Some(IntTerm::Rem(
                    Box::new(IntTerm::compile(&c.args[0], fields)?),
                    d,
                ))
            }
            _ => None,
        }
    }

    fn eval<'v>(&self, record: &dyn Fn(&str) -> Option<&'v Value>) -> Option<i64> {
        match self {
            IntTerm::Field(f) => match record(f)? {
                Value::Int(i) => Some(*i),
                _ => None,
            },
            IntTerm::Lit(i) => Some(*i),
            IntTerm::Rem(t, d) => t.eval(record)?.checked_rem(*d),
        }
    }
}

impl Fast {
    fn compile(e: &IdedExpr, fields: &BTreeSet<&str>) -> Option<Fast> {
        use cel::common::ast::operators::*;
        use cel::common::ast::LiteralValue;
        use std::cmp::Ordering::{Equal, Greater, Less};
        match &e.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Fast::Bool(*b.inner())),
            Expr::Call(c) if c.target.is_none() => {
                let arg = |i: usize| Fast::compile(&c.args[i], fields).map(Box::new);
                let name = c.func_name.as_str();
                match (name, c.args.len()) {
                    (LOGICAL_AND, 2) => Some(Fast::And(arg(0)?, arg(1)?)),
                    (LOGICAL_OR, 2) => Some(Fast::Or(arg(0)?, arg(1)?)),
                    (LOGICAL_NOT, 1) => Some(Fast::Not(arg(0)?)),
                    (EQUALS | NOT_EQUALS | LESS | LESS_EQUALS | GREATER | GREATER_EQUALS, 2) => {
                        // (the ordering that holds, whether it must)
                        let (ord, holds) = match name {
                            EQUALS => (Equal, true),
                            NOT_EQUALS => (Equal, false),
                            LESS => (Less, true),
                            GREATER_EQUALS => (Less, false),
                            GREATER => (Greater, true),
                            _ => (Greater, false), // LESS_EQUALS
                        };
                        if let (Some(a), Some(b)) = (
                            IntTerm::compile(&c.args[0], fields),
                            IntTerm::compile(&c.args[1], fields),
                        ) {
                            return Some(Fast::Int(ord, holds, a, b));
                        }
                        if ord != Equal {
                            return None;
                        }
                        let text = |f: &IdedExpr, l: &IdedExpr| match (&f.expr, &l.expr) {
                            (Expr::Ident(field), Expr::Literal(LiteralValue::String(lit)))
                                if fields.contains(field.as_str()) =>
                            {
                                Some(Fast::Text {
                                    field: field.clone(),
                                    lit: lit.inner().to_string(),
                                    eq: holds,
                                })
                            }
                            _ => None,
                        };
                        text(&c.args[0], &c.args[1]).or_else(|| text(&c.args[1], &c.args[0]))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn eval<'v>(&self, record: &dyn Fn(&str) -> Option<&'v Value>) -> Option<bool> {
        Some(match self {
            Fast::Bool(b) => *b,
            // Both sides: CEL's `&&` and `||` are commutative over errors,
            // so a side this cannot judge leaves the whole to CEL.
            Fast::And(a, b) => {
                let (a, b) = (a.eval(record)?, b.eval(record)?);
                a && b
            }
            Fast::Or(a, b) => {
                let (a, b) = (a.eval(record)?, b.eval(record)?);
                a || b
            }
            Fast::Not(a) => !a.eval(record)?,
            Fast::Int(ord, holds, a, b) => {
                (a.eval(record)?.cmp(&b.eval(record)?) == *ord) == *holds
            }
            Fast::Text { field, lit, eq } => match record(field)? {
                Value::Text(t) => (t == lit) == *eq,
                _ => return None,
            },
        })
    }
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Predicate")
            .field("source", &self.source)
            .field("variables", &self.variables)
            .finish()
    }
}

impl Predicate {
    /// Compiles `source`. Refuses a predicate that is empty, that does not
    /// parse, or that names any variable not in `known_fields` (the master
    /// file's declared field names); the error names the offending
    /// variables and lists the known fields.
    pub fn compile(source: &str, known_fields: &[String]) -> Result<Predicate, PredicateError> {
        if source.trim().is_empty() {
            return Err(PredicateError::Empty);
        }
        let syntax = |reason: String| PredicateError::Syntax {
            source_text: source.to_string(),
            reason,
        };
        if source.len() > MAX_SOURCE_BYTES {
            return Err(syntax(format!(
                "it is {} bytes long; a predicate may be at most {MAX_SOURCE_BYTES}",
                source.len()
            )));
        }
        let known: BTreeSet<&str> = known_fields.iter().map(String::as_str).collect();
        // The parser and the walks over its tree recurse once per level of
        // nesting: they run on a thread whose stack is ample for any source
        // within MAX_SOURCE_BYTES, and a panic there is an error, not a crash.
        let parsed = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("cel-compile".into())
                .stack_size(COMPILE_STACK_BYTES)
                .spawn_scoped(scope, || {
                    let program = env().compile(source).map_err(|e| e.to_string())?;
                    let depth = depth(program.expression());
                    if depth > MAX_DEPTH {
                        return Err(format!(
                            "it nests {depth} levels deep; a predicate may nest at most {MAX_DEPTH}"
                        ));
                    }
                    let loops = loop_depth(program.expression());
                    if loops > MAX_LOOP_DEPTH {
                        return Err(format!(
                            "its comprehensions (all, exists, exists_one, map, filter) nest {loops} deep; the cost limit allows {MAX_LOOP_DEPTH} (a loop inside a loop costs the product of their lengths for every record)"
                        ));
                    }
                    let mut read = BTreeSet::new();
                    collect_variables(program.expression(), &known, &mut Vec::new(), &mut read);
                    Ok((program, read))
                })
                .map_err(|e| format!("could not start the CEL parser: {e}"))
                .and_then(|handle| {
                    handle
                        .join()
                        .map_err(|panic| format!("the CEL parser failed: {}", panic_text(&*panic)))
                })
        });
        let (program, read) = parsed.and_then(|r| r).map_err(syntax)?;

        let unknown: Vec<&str> = read
            .iter()
            .map(String::as_str)
            .filter(|v| !known.contains(v))
            .collect();
        if !unknown.is_empty() {
            return Err(PredicateError::UnknownField {
                field: unknown.join(", "),
                known: known.iter().map(|s| s.to_string()).collect(),
            });
        }
        let fields: BTreeSet<&str> = read.iter().map(String::as_str).collect();
        let fast = Fast::compile(program.expression(), &fields).map(Arc::new);
        Ok(Predicate {
            source: source.to_string(),
            program: Arc::new(program),
            variables: read.into_iter().collect(),
            fast,
        })
    }

    /// Whether the predicate has a native form (see [`Fast`]).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The source the predicate was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variables (fields) the predicate reads, sorted.
    pub fn variables(&self) -> Vec<String> {
        self.variables.clone()
    }

    /// [`Predicate::variables`], borrowed.
    pub fn reads(&self) -> &[String] {
        &self.variables
    }

    /// Evaluates the predicate over `record`. `Err` gives the reason when it
    /// cannot be evaluated: a field it reads is absent from the record, an
    /// operator does not apply to a field's type, or the result is not a
    /// bool. Never panics.
    pub fn eval(&self, record: &Record) -> Result<bool, String> {
        let missing: Vec<&str> = self
            .variables
            .iter()
            .map(String::as_str)
            .filter(|v| !record.contains_key(*v))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the record lacks field(s) {} read by the predicate",
                missing.join(", ")
            ));
        }
        if let Some(b) = self.fast.as_ref().and_then(|f| f.eval(&|n| record.get(n))) {
            return Ok(b);
        }
        self.eval_cel(record)
    }

    /// [`Predicate::selects`] given only the fields it reads, as `(name,
    /// value)` pairs (a record's other fields play no part): a selection
    /// that needs no record built when the native evaluator answers.
    pub fn selects_values(&self, values: &[(&str, Value)]) -> bool {
        let get = |n: &str| values.iter().find(|(k, _)| *k == n).map(|(_, v)| v);
        if self.variables.iter().any(|v| get(v).is_none()) {
            return false;
        }
        if let Some(b) = self.fast.as_ref().and_then(|f| f.eval(&get)) {
            return b;
        }
        let record: Record = values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        matches!(self.eval_cel(&record), Ok(true))
    }

    /// [`Predicate::eval`] by the CEL program (the fields are all there).
    fn eval_cel(&self, record: &Record) -> Result<bool, String> {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut ctx = Context::with_env(Arc::clone(env()));
            for name in &self.variables {
                if let Some(value) = record.get(name) {
                    ctx.add_variable_as_val(name.as_str(), to_cel(value));
                }
            }
            self.program.execute(&ctx)
        }));
        match outcome {
            Ok(Ok(cel::Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => {
                let shown: String = format!("{other:?}").chars().take(80).collect();
                Err(format!(
                    "the predicate's result is {} ({shown}), not bool",
                    other.type_of()
                ))
            }
            Ok(Err(e)) if self.variables.is_empty() => Err(format!("evaluation failed: {e}")),
            Ok(Err(e)) => Err(format!(
                "evaluation failed: {e} (the predicate reads {})",
                self.field_types(record)
            )),
            Err(panic) => Err(format!(
                "evaluation failed: the CEL interpreter failed: {}",
                panic_text(&*panic)
            )),
        }
    }

    /// `name: type` of each field the predicate reads, for error messages.
    fn field_types(&self, record: &Record) -> String {
        self.variables
            .iter()
            .map(|v| {
                let t = record.get(v).map_or("absent", Value::type_name);
                format!("{v}: {t}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The rule replication uses: a record is selected if and only if
    /// [`eval`](Self::eval) returns `Ok(true)`; an evaluation error counts
    /// as "not selected".
    pub fn selects(&self, record: &Record) -> bool {
        matches!(self.eval(record), Ok(true))
    }
}

/// Keeps only the named fields of a record (fields absent from the record
/// stay absent).
pub fn project(record: &Record, fields: &[String]) -> Record {
    fields
        .iter()
        .filter_map(|f| record.get(f).map(|v| (f.clone(), v.clone())))
        .collect()
}

/// A field value as a CEL value, borrowing text and bytes from the record.
fn to_cel(value: &Value) -> Box<dyn Val + '_> {
    match value {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Int(i) => Box::new(CelInt::from(*i)),
        Value::Float(f) => Box::new(CelDouble::from(*f)),
        Value::Text(s) => Box::new(CelString::from(s.as_str())),
        Value::Bytes(b) => Box::new(CelBytes::from(b.as_slice())),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// The depth of an expression tree: 1 for a leaf.
fn depth(e: &IdedExpr) -> usize {
    1 + children(e).into_iter().map(depth).max().unwrap_or(0)
}

/// The expressions directly under `e`.
fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
        Expr::Select(sel) => vec![&*sel.operand],
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => entry_children(&map.entries),
        Expr::Struct(st) => entry_children(&st.entries),
    }
}

/// How deeply comprehensions (`all`, `exists`, `exists_one`, `map`,
/// `filter`) nest in `e`: 0 for none, 1 for loops side by side.
fn loop_depth(e: &IdedExpr) -> usize {
    let here = usize::from(matches!(e.expr, Expr::Comprehension(_)));
    here + children(e).into_iter().map(loop_depth).max().unwrap_or(0)
}

fn entry_children(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<&IdedExpr> {
    entries
        .iter()
        .flat_map(|entry| match &entry.expr {
            EntryExpr::StructField(field) => vec![&field.value],
            EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
        })
        .collect()
}

/// The dotted name an expression spells (`a`, `a.b.c`), if it is one.
fn qualified_name(e: &IdedExpr) -> Option<Vec<&str>> {
    match &e.expr {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(sel) if !sel.test => {
            let mut segments = qualified_name(&sel.operand)?;
            segments.push(sel.field.as_str());
            Some(segments)
        }
        _ => None,
    }
}

/// Records in `out` the variables `e` reads that are not bound by an
/// enclosing macro (`bound`). A dotted name resolves as CEL resolves it:
/// the longest prefix that is a known field is the variable read; a name
/// that is a standard type (`int`, `string`, ...) reads no variable.
fn collect_variables(
    e: &IdedExpr,
    known: &BTreeSet<&str>,
    bound: &mut Vec<String>,
    out: &mut BTreeSet<String>,
) {
    if let Some(segments) = qualified_name(e) {
        let Some(root) = segments.first() else {
            return;
        };
        if root.starts_with('@') || bound.iter().any(|b| b == root) {
            return;
        }
        for len in (1..=segments.len()).rev() {
            let name = segments[..len].join(".");
            if known.contains(name.as_str()) {
                out.insert(name);
                return;
            }
        }
        if env().types().find_type(&segments.join(".")).is_none() {
            out.insert((*root).to_string());
        }
        return;
    }
    match &e.expr {
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        Expr::Select(sel) => collect_variables(&sel.operand, known, bound, out),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                collect_variables(target, known, bound, out);
            }
            for arg in &call.args {
                collect_variables(arg, known, bound, out);
            }
        }
        Expr::Comprehension(comp) => {
            collect_variables(&comp.iter_range, known, bound, out);
            collect_variables(&comp.accu_init, known, bound, out);
            let depth = bound.len();
            bound.push(comp.iter_var.clone());
            if let Some(v2) = &comp.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(comp.accu_var.clone());
            collect_variables(&comp.loop_cond, known, bound, out);
            collect_variables(&comp.loop_step, known, bound, out);
            collect_variables(&comp.result, known, bound, out);
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for elem in &list.elements {
                collect_variables(elem, known, bound, out);
            }
        }
        Expr::Map(map) => collect_entries(&map.entries, known, bound, out),
        Expr::Struct(st) => collect_entries(&st.entries, known, bound, out),
    }
}

fn collect_entries(
    entries: &[cel::common::ast::IdedEntryExpr],
    known: &BTreeSet<&str>,
    bound: &mut Vec<String>,
    out: &mut BTreeSet<String>,
) {
    for entry in entries {
        match &entry.expr {
            EntryExpr::StructField(field) => collect_variables(&field.value, known, bound, out),
            EntryExpr::MapEntry(me) => {
                collect_variables(&me.key, known, bound, out);
                collect_variables(&me.value, known, bound, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn rec(pairs: &[(&str, Value)]) -> Record {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn known() -> Vec<String> {
        fields(&["grp", "qty", "name", "price", "flag", "blob", "note"])
    }

    const _: () = {
        const fn assert_traits<T: Send + Sync + Clone + fmt::Debug>() {}
        assert_traits::<Predicate>();
        const fn assert_error_traits<T: Send + Sync + std::error::Error>() {}
        assert_error_traits::<PredicateError>();
    };

    /// Predicates with a native form, and their CEL-only twins.
    const NATIVE: &[&str] = &[
        "grp % 4 == 0",
        "grp % 4 == 0 && qty > 10",
        "!(qty <= -5) || name == \"x\"",
        "\"x\" != name && grp % -3 < 2",
        "grp >= qty || false",
        "qty % 9223372036854775807 != grp",
        "grp % -1 == 0",
        "true && grp < 3",
        "grp > -(3) && qty % 5 % 3 != 1",
    ];

    #[test]
    fn common_selections_have_a_native_form_and_the_rest_use_cel() {
        for src in NATIVE {
            assert!(
                Predicate::compile(src, &known()).expect(src).is_fast(),
                "{src}"
            );
        }
        for src in [
            "[1, 2].exists(x, x == grp)",
            "qty + 1 > 2",
            "price > 1.5",
            "grp % 0 == 0",
            "grp == 4u",
            "name.startsWith(\"a\")",
            "grp % qty == 0",
            "name < \"m\"",
        ] {
            assert!(
                !Predicate::compile(src, &known()).expect(src).is_fast(),
                "{src}"
            );
        }
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Option<Value>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(None),
            (-12i64..12).prop_map(|i| Some(Value::Int(i))),
            prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64)]
                .prop_map(|i| Some(Value::Int(i))),
            prop_oneof![Just("x"), Just("y"), Just("")].prop_map(|t| Some(Value::Text(t.into()))),
            (-3.0f64..3.0).prop_map(|f| Some(Value::Float(f))),
            any::<bool>().prop_map(|b| Some(Value::Bool(b))),
            Just(Some(Value::Null)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The native form answers exactly as the CEL program does, errors
        /// included (it leaves to CEL whatever it cannot be sure of).
        #[test]
        fn the_native_form_agrees_with_cel(
            grp in any_value(),
            qty in any_value(),
            name in any_value(),
            which in 0..NATIVE.len(),
        ) {
            let mut r = Record::new();
            for (k, v) in [("grp", grp), ("qty", qty), ("name", name)] {
                if let Some(v) = v {
                    r.insert(k.into(), v);
                }
            }
            let fast = Predicate::compile(NATIVE[which], &known()).expect("compiles");
            let mut cel_only = fast.clone();
            cel_only.fast = None;
            proptest::prop_assert_eq!(fast.eval(&r), cel_only.eval(&r), "{} over {:?}", NATIVE[which], r);
            // Given only the fields it reads, it selects as over the record.
            let read: Vec<(&str, Value)> = fast
                .reads()
                .iter()
                .filter_map(|n| r.get(n).map(|v| (n.as_str(), v.clone())))
                .collect();
            proptest::prop_assert_eq!(fast.selects_values(&read), cel_only.selects(&r), "{} over {:?}", NATIVE[which], r);
        }
    }

    #[test]
    fn grp_and_qty_select_and_reject() {
        let p = Predicate::compile("grp % 4 == 0 && qty > 10", &known()).expect("compiles");
        assert_eq!(p.source(), "grp % 4 == 0 && qty > 10");
        assert_eq!(p.variables(), fields(&["grp", "qty"]));
        let yes = rec(&[("grp", Value::Int(8)), ("qty", Value::Int(11))]);
        let bad_grp = rec(&[("grp", Value::Int(7)), ("qty", Value::Int(11))]);
        let bad_qty = rec(&[("grp", Value::Int(8)), ("qty", Value::Int(10))]);
        assert_eq!(p.eval(&yes), Ok(true));
        assert!(p.selects(&yes));
        assert_eq!(p.eval(&bad_grp), Ok(false));
        assert!(!p.selects(&bad_grp));
        assert_eq!(p.eval(&bad_qty), Ok(false));
        assert!(!p.selects(&bad_qty));
        // Fields the predicate does not read do not matter.
        let extra = rec(&[
            ("grp", Value::Int(0)),
            ("qty", Value::Int(99)),
            ("name", Value::Text("x".into())),
        ]);
        assert!(p.selects(&extra));
    }

    #[test]
    fn syntax_error_is_refused() {
        let err = Predicate::compile("grp % == 4 &&", &known()).expect_err("refused");
        assert!(matches!(err, PredicateError::Syntax { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("grp % == 4 &&"), "{msg}");
        assert!(msg.contains("not a valid CEL expression"), "{msg}");
    }

    #[test]
    fn empty_source_is_refused() {
        assert!(matches!(
            Predicate::compile("", &known()),
            Err(PredicateError::Empty)
        ));
        assert!(matches!(
            Predicate::compile("  \n\t", &known()),
            Err(PredicateError::Empty)
        ));
    }

    #[test]
    fn unknown_variable_is_named_with_the_known_fields() {
        let err = Predicate::compile("grp == 1 && qtty > 3 && colour == 'red'", &known())
            .expect_err("refused");
        match &err {
            PredicateError::UnknownField { field, known } => {
                assert_eq!(field, "colour, qtty");
                assert!(known.contains(&"qty".to_string()));
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("qtty") && msg.contains("colour"), "{msg}");
        assert!(msg.contains("grp, name, note, price, qty"), "{msg}");

        let none = Predicate::compile("x", &[]).expect_err("refused");
        assert!(none.to_string().contains("(no fields)"), "{none}");
    }

    #[test]
    fn macro_variables_and_type_names_are_not_fields() {
        let p = Predicate::compile(
            "[1, 2, 3].exists(x, x == grp) && type(qty) == int",
            &known(),
        )
        .expect("compiles");
        assert_eq!(p.variables(), fields(&["grp", "qty"]));
        assert!(p.selects(&rec(&[("grp", Value::Int(2)), ("qty", Value::Int(1))])));
        assert!(!p.selects(&rec(&[("grp", Value::Int(5)), ("qty", Value::Int(1))])));
        // A macro variable does not hide a misspelt field outside the macro.
        let err = Predicate::compile("[1].all(x, x > 0) && x > 0", &known()).expect_err("refused");
        assert!(matches!(err, PredicateError::UnknownField { ref field, .. } if field == "x"));
    }

    #[test]
    fn missing_field_is_an_error_and_not_selected() {
        let p = Predicate::compile("grp % 4 == 0 && qty > 10", &known()).expect("compiles");
        let r = rec(&[("grp", Value::Int(8))]);
        let err = p.eval(&r).expect_err("eval fails");
        assert!(err.contains("qty"), "{err}");
        assert!(!p.selects(&r));
        // Even where CEL's `||` would not need the missing field.
        let p = Predicate::compile("grp == 8 || qty > 10", &known()).expect("compiles");
        assert!(p.eval(&r).is_err());
        assert!(!p.selects(&r));
    }

    #[test]
    fn wrong_type_is_an_error() {
        let p = Predicate::compile("name % 4 == 0", &known()).expect("compiles");
        let r = rec(&[("name", Value::Text("a".into()))]);
        let err = p.eval(&r).expect_err("eval fails");
        assert!(err.starts_with("evaluation failed"), "{err}");
        assert!(err.contains("\"a\"") && err.contains("name: text"), "{err}");
        assert!(!p.selects(&r));

        let p = Predicate::compile("\"a\" % 4 == 0", &known()).expect("compiles");
        assert!(p.eval(&Record::new()).is_err());

        let p = Predicate::compile("qty > 1", &known()).expect("compiles");
        assert!(p.eval(&rec(&[("qty", Value::Null)])).is_err());
        let p = Predicate::compile("qty / 0 == 1", &known()).expect("compiles");
        assert!(p.eval(&rec(&[("qty", Value::Int(3))])).is_err());
    }

    #[test]
    fn non_bool_result_is_an_error() {
        let p = Predicate::compile("qty + 1", &known()).expect("compiles");
        let r = rec(&[("qty", Value::Int(3))]);
        let err = p.eval(&r).expect_err("eval fails");
        assert!(err.contains("not bool") && err.contains("int"), "{err}");
        assert!(!p.selects(&r));
    }

    #[test]
    fn value_types_map_to_cel() {
        let r = rec(&[
            ("name", Value::Text("widget".into())),
            ("price", Value::Float(2.5)),
            ("flag", Value::Bool(true)),
            ("blob", Value::Bytes(vec![1, 2, 3])),
            ("note", Value::Null),
        ]);
        for src in [
            "name == 'widget'",
            "name > 'apple' && name < 'zebra'",
            "name.startsWith('wid') && size(name) == 6",
            "price > 2.0 && price < 3.0",
            "flag",
            "blob == b'\\x01\\x02\\x03' && size(blob) == 3",
            "note == null",
        ] {
            let p = Predicate::compile(src, &known()).expect("compiles");
            assert_eq!(p.eval(&r), Ok(true), "{src}");
        }
        let p = Predicate::compile("name == 'gadget'", &known()).expect("compiles");
        assert_eq!(p.eval(&r), Ok(false));
    }

    #[test]
    fn dotted_field_names_resolve() {
        let known = fields(&["a.b", "c"]);
        let p = Predicate::compile("a.b == 1", &known).expect("compiles");
        assert_eq!(p.variables(), fields(&["a.b"]));
        assert!(p.selects(&rec(&[("a.b", Value::Int(1))])));
        assert!(Predicate::compile("a.c == 1", &known).is_err());
    }

    #[test]
    fn clones_share_and_work_across_threads() {
        let p = Predicate::compile("qty > 10", &known()).expect("compiles");
        let q = p.clone();
        let handle = std::thread::spawn(move || q.selects(&rec(&[("qty", Value::Int(11))])));
        assert!(handle.join().expect("thread ends"));
        assert!(format!("{p:?}").contains("qty > 10"));
    }

    #[test]
    fn oversized_or_overdeep_predicates_are_refused() {
        let long = format!("qty > 1 || {}", "qty == 2 || ".repeat(MAX_SOURCE_BYTES / 8));
        let err = Predicate::compile(&long, &known()).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("at most 8192") && msg.len() < 400, "{msg}");
        let tiny = format!("{} > 0", vec!["1"; MAX_SOURCE_BYTES / 4].join("+"));
        assert!(Predicate::compile(&tiny, &known()).is_err());

        let deep = format!("{} > 0", vec!["qty"; 1000].join(" + "));
        let err = Predicate::compile(&deep, &known()).expect_err("refused");
        assert!(matches!(err, PredicateError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("nest"), "{err}");

        let parens = format!("{}qty{} > 0", "(".repeat(500), ")".repeat(500));
        assert!(Predicate::compile(&parens, &known()).is_err());

        // A long but shallow predicate is fine.
        let wide = (0..300)
            .map(|i| format!("qty == {i}"))
            .collect::<Vec<_>>()
            .join(" || ");
        let p = Predicate::compile(&wide, &known()).expect("compiles");
        assert!(p.selects(&rec(&[("qty", Value::Int(299))])));
        assert!(!p.selects(&rec(&[("qty", Value::Int(300))])));
    }

    /// The cost limit: a loop inside a loop is refused at compile (the
    /// attack of three nested 150-element `all()` froze a master for 13 s
    /// a record), naming the limit; one level of loops is fine, loops
    /// side by side too, and a refused nesting anywhere (in a range, a
    /// body, under `!`) is found.
    #[test]
    fn nested_comprehensions_are_over_the_cost_limit() {
        let list = (0..150)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let attack =
            format!("[{list}].all(a, [{list}].all(b, [{list}].all(c, a + b + c + qty > -1)))");
        assert!(attack.len() < MAX_SOURCE_BYTES);
        for src in [
            attack.as_str(),
            "[1, 2].exists(a, [3, 4].exists(b, a + b == qty))",
            "[1, 2].map(a, [a].filter(b, b > 1)).size() > 0 && qty > 0",
            "!([1].all(a, [a, 2].exists(b, b == qty)))",
        ] {
            let err = Predicate::compile(src, &known()).expect_err(src);
            let msg = err.to_string();
            assert!(
                msg.contains("cost limit") && (msg.contains("nest 2") || msg.contains("nest 3")),
                "{msg}"
            );
        }
        let one = format!("[{list}].exists(a, a == qty) && [1, 2].all(b, b < 3)");
        let p = Predicate::compile(&one, &known()).expect("one level compiles");
        assert!(p.selects(&rec(&[("qty", Value::Int(149))])));
        assert!(!p.selects(&rec(&[("qty", Value::Int(150))])));
    }

    #[test]
    fn projection_keeps_named_fields() {
        let r = rec(&[
            ("grp", Value::Int(1)),
            ("qty", Value::Int(2)),
            ("name", Value::Text("n".into())),
        ]);
        let p = project(&r, &fields(&["qty", "name", "absent"]));
        assert_eq!(
            p,
            rec(&[("name", Value::Text("n".into())), ("qty", Value::Int(2))])
        );
        assert!(project(&r, &[]).is_empty());
    }
}
