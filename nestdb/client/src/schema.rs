//! Typed OVSDB database schemas (RFC 7047 §3.2), as returned by
//! `get_schema` or read from an `.ovsschema` file.
//!
//! Invariants: a parsed [`Schema`] has at least one table; every column type
//! has `min <= max` with `min` 0 or 1 and `max >= 1`; enum values satisfy
//! their base type; `refTable` names a table of the same schema; index
//! columns exist. The implicit `_uuid` and `_version` columns are not stored
//! in [`TableSchema::columns`] but [`TableSchema::column_type`] knows them.
//!
//! Schemas are immutable values, shared between threads behind an `Arc`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::datum::{Atom, Datum, Uuid};
use crate::error::{Error, Result};

/// The atomic types of RFC 7047 §3.2 `<atomic-type>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicType {
    /// `integer`
    Integer,
    /// `real`
    Real,
    /// `boolean`
    Boolean,
    /// `string`
    String,
    /// `uuid`
    Uuid,
}

impl AtomicType {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "integer" => AtomicType::Integer,
            "real" => AtomicType::Real,
            "boolean" => AtomicType::Boolean,
            "string" => AtomicType::String,
            "uuid" => AtomicType::Uuid,
            other => {
                return Err(Error::Schema(format!(
                    "\"{other}\" is not an atomic type (integer, real, boolean, string, uuid)"
                )))
            }
        })
    }

    /// The default atom of this type: 0, 0.0, false, "" or the all-zero UUID.
    pub fn default_atom(self) -> Atom {
        match self {
            AtomicType::Integer => Atom::Integer(0),
            AtomicType::Real => Atom::Real(0.0),
            AtomicType::Boolean => Atom::Boolean(false),
            AtomicType::String => Atom::String(String::new()),
            AtomicType::Uuid => Atom::Uuid(Uuid::NIL),
        }
    }

    fn name(self) -> &'static str {
        match self {
            AtomicType::Integer => "integer",
            AtomicType::Real => "real",
            AtomicType::Boolean => "boolean",
            AtomicType::String => "string",
            AtomicType::Uuid => "uuid",
        }
    }
}

/// Strength of a reference column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefType {
    /// The referenced row may not be deleted while referenced.
    #[default]
    Strong,
    /// Deleting the referenced row removes the reference.
    Weak,
}

/// RFC 7047 `<base-type>`: an atomic type with optional constraints.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseType {
    /// The atomic type.
    pub atomic: AtomicType,
    /// Allowed values, if constrained to an enumeration.
    pub enum_values: Option<BTreeSet<Atom>>,
    /// Inclusive integer range.
    pub min_integer: Option<i64>,
    /// Inclusive integer range.
    pub max_integer: Option<i64>,
    /// Inclusive real range.
    pub min_real: Option<f64>,
    /// Inclusive real range.
    pub max_real: Option<f64>,
    /// Minimum string length, in Unicode characters (RFC 7047).
    pub min_length: Option<u64>,
    /// Maximum string length.
    pub max_length: Option<u64>,
    /// For `uuid`: the table referenced.
    pub ref_table: Option<String>,
    /// For `uuid` with `ref_table`: strong or weak.
    pub ref_type: RefType,
}

impl BaseType {
    /// An unconstrained base type.
    pub fn plain(atomic: AtomicType) -> Self {
        BaseType {
            atomic,
            enum_values: None,
            min_integer: None,
            max_integer: None,
            min_real: None,
            max_real: None,
            min_length: None,
            max_length: None,
            ref_table: None,
            ref_type: RefType::Strong,
        }
    }

    fn from_json(v: &Value) -> Result<Self> {
        if let Value::String(s) = v {
            return Ok(Self::plain(AtomicType::parse(s)?));
        }
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Schema(format!("base type {v} must be a string or object")))?;
        let atomic = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Schema(format!("base type {v} lacks a \"type\" string")))
            .and_then(AtomicType::parse)?;
        let mut base = Self::plain(atomic);
        let int = |k: &str| -> Result<Option<i64>> {
            obj.get(k)
                .map(|x| {
                    x.as_i64()
                        .ok_or_else(|| Error::Schema(format!("\"{k}\" in {v} must be an integer")))
                })
                .transpose()
        };
        let real = |k: &str| -> Result<Option<f64>> {
            obj.get(k)
                .map(|x| {
                    x.as_f64()
                        .ok_or_else(|| Error::Schema(format!("\"{k}\" in {v} must be a number")))
                })
                .transpose()
        };
        base.min_integer = int("minInteger")?;
        base.max_integer = int("maxInteger")?;
        base.min_real = real("minReal")?;
        base.max_real = real("maxReal")?;
        base.min_length = int("minLength")?.map(|n| n.max(0) as u64);
        base.max_length = int("maxLength")?.map(|n| n.max(0) as u64);
        if let Some(t) = obj.get("refTable") {
            if atomic != AtomicType::Uuid {
                return Err(Error::Schema(format!(
                    "refTable in {v} needs type \"uuid\""
                )));
            }
            base.ref_table = Some(
                t.as_str()
                    .ok_or_else(|| Error::Schema(format!("refTable in {v} must be a string")))?
                    .to_owned(),
            );
        }
        match obj.get("refType").and_then(Value::as_str) {
            None | Some("strong") => {}
            Some("weak") => base.ref_type = RefType::Weak,
            Some(other) => {
                return Err(Error::Schema(format!(
                    "refType \"{other}\" must be \"strong\" or \"weak\""
                )))
            }
        }
        if let Some(e) = obj.get("enum") {
            // The enum is itself a value of the base type without the enum.
            let d = Datum::from_json(e)
                .map_err(|err| Error::Schema(format!("enum {e} is not a set: {err}")))?;
            let Datum::Set(values) = d else {
                return Err(Error::Schema(format!("enum {e} must be a set, not a map")));
            };
            for a in &values {
                base.check(a)
                    .map_err(|err| Error::Schema(err.to_string()))?;
            }
            base.enum_values = Some(values);
        }
        Ok(base)
    }

    /// Check an atom against this base type's type and constraints.
    pub fn check(&self, atom: &Atom) -> Result<()> {
        let ok_type = matches!(
            (self.atomic, atom),
            (AtomicType::Integer, Atom::Integer(_))
                | (AtomicType::Real, Atom::Real(_))
                | (AtomicType::Boolean, Atom::Boolean(_))
                | (AtomicType::String, Atom::String(_))
                | (AtomicType::Uuid, Atom::Uuid(_) | Atom::NamedUuid(_))
        );
        if !ok_type {
            return Err(Error::data(format!(
                "{atom} is not of type {}",
                self.atomic.name()
            )));
        }
        if let Some(values) = &self.enum_values {
            if !values.contains(atom) {
                let allowed: Vec<String> = values.iter().map(ToString::to_string).collect();
                return Err(Error::data(format!(
                    "{atom} is not one of the allowed values {}",
                    allowed.join(", ")
                )));
            }
        }
        match atom {
            Atom::Integer(i)
                if self.min_integer.is_some_and(|m| *i < m)
                    || self.max_integer.is_some_and(|m| *i > m) =>
            {
                return Err(Error::data(format!(
                    "{i} is outside the allowed range {}..={}",
                    self.min_integer.unwrap_or(i64::MIN),
                    self.max_integer.unwrap_or(i64::MAX)
                )));
            }
            Atom::Real(r)
                if self.min_real.is_some_and(|m| *r < m)
                    || self.max_real.is_some_and(|m| *r > m) =>
            {
                return Err(Error::data(format!("{r} is outside the allowed range")));
            }
            Atom::String(s) => {
                let n = s.chars().count() as u64;
                if self.min_length.is_some_and(|m| n < m) || self.max_length.is_some_and(|m| n > m)
                {
                    return Err(Error::data(format!(
                        "string {s:?} has length {n}, outside the allowed {}..={}",
                        self.min_length.unwrap_or(0),
                        self.max_length
                            .map_or("unlimited".to_string(), |m| m.to_string())
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// RFC 7047 `<type>`: key type, optional value type (a map), and bounds on
/// the number of elements.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnType {
    /// Key (or element) type.
    pub key: BaseType,
    /// Value type; `Some` makes the column a map.
    pub value: Option<BaseType>,
    /// Minimum number of elements: 0 or 1.
    pub min: u64,
    /// Maximum number of elements; `None` is "unlimited".
    pub max: Option<u64>,
}

impl ColumnType {
    /// A scalar column of the given type.
    pub fn scalar(atomic: AtomicType) -> Self {
        ColumnType {
            key: BaseType::plain(atomic),
            value: None,
            min: 1,
            max: Some(1),
        }
    }

    /// Parse RFC 7047 `<type>`.
    pub fn from_json(v: &Value) -> Result<Self> {
        if let Value::String(_) = v {
            return Ok(ColumnType {
                key: BaseType::from_json(v)?,
                value: None,
                min: 1,
                max: Some(1),
            });
        }
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Schema(format!("column type {v} must be a string or object")))?;
        let key = BaseType::from_json(
            obj.get("key")
                .ok_or_else(|| Error::Schema(format!("column type {v} lacks \"key\"")))?,
        )?;
        let value = obj.get("value").map(BaseType::from_json).transpose()?;
        let min = match obj.get("min") {
            None => 1,
            Some(m) => m
                .as_u64()
                .filter(|m| *m <= 1)
                .ok_or_else(|| Error::Schema(format!("\"min\" in {v} must be 0 or 1")))?,
        };
        let max = match obj.get("max") {
            None => Some(1),
            Some(Value::String(s)) if s == "unlimited" => None,
            Some(m) => Some(m.as_u64().filter(|m| *m >= 1 && *m >= min).ok_or_else(|| {
                Error::Schema(format!(
                    "\"max\" in {v} must be \"unlimited\" or an integer >= max(1, min)"
                ))
            })?),
        };
        Ok(ColumnType {
            key,
            value,
            min,
            max,
        })
    }

    /// True if the column is a map.
    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    /// True if the column holds exactly one atom (min = max = 1, no value).
    pub fn is_scalar(&self) -> bool {
        self.value.is_none() && self.min == 1 && self.max == Some(1)
    }

    /// The column's default value: empty when `min` is 0, otherwise the
    /// default atom (or default key → default value pair).
    pub fn default_datum(&self) -> Datum {
        match (&self.value, self.min) {
            (None, 0) => Datum::empty_set(),
            (Some(_), 0) => Datum::empty_map(),
            (None, _) => Datum::from(self.key.atomic.default_atom()),
            (Some(v), _) => Datum::Map(BTreeMap::from([(
                self.key.atomic.default_atom(),
                v.atomic.default_atom(),
            )])),
        }
    }

    pub(crate) fn bounds_text(&self) -> String {
        match self.max {
            Some(max) => format!("{}..={max} elements", self.min),
            None => format!("at least {}", self.min),
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSchema {
    /// The column's type.
    pub ty: ColumnType,
    /// Not persisted by the server.
    pub ephemeral: bool,
    /// May be changed after insert.
    pub mutable: bool,
}

/// One table of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// Columns by name (excluding `_uuid` and `_version`).
    pub columns: BTreeMap<String, ColumnSchema>,
    /// Root tables keep rows that nothing references.
    pub is_root: bool,
    /// Upper bound on the number of rows, if any.
    pub max_rows: Option<u64>,
    /// Sets of columns whose values must be unique across rows.
    pub indexes: Vec<Vec<String>>,
}

impl TableSchema {
    /// The type of a column, including the implicit `_uuid` and `_version`.
    pub fn column_type(&self, name: &str) -> Option<&ColumnType> {
        static UUID_COLUMN: std::sync::OnceLock<ColumnType> = std::sync::OnceLock::new();
        match name {
            "_uuid" | "_version" => {
                Some(UUID_COLUMN.get_or_init(|| ColumnType::scalar(AtomicType::Uuid)))
            }
            _ => self.columns.get(name).map(|c| &c.ty),
        }
    }
}

/// A database schema (RFC 7047 §3.2 `<database-schema>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Database name, e.g. `"Sluice_Node"`.
    pub name: String,
    /// Schema version `x.y.z`, if given.
    pub version: Option<String>,
    /// Schema checksum, if given.
    pub cksum: Option<String>,
    /// Tables by name.
    pub tables: BTreeMap<String, TableSchema>,
}

impl Schema {
    /// Parse a schema from its JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Schema(format!("the schema is not valid JSON: {e}")))?;
        Self::from_json(&v)
    }

    /// Parse and validate a schema.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Schema("a schema must be a JSON object".into()))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Schema("the schema lacks a \"name\" string".into()))?
            .to_owned();
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        let tables_json = obj
            .get("tables")
            .and_then(Value::as_object)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Schema("the schema needs a non-empty \"tables\" object".into())
            })?;
        let mut tables = BTreeMap::new();
        for (tname, t) in tables_json {
            let table = parse_table(t).map_err(|e| match e {
                Error::Schema(m) => Error::Schema(format!("table \"{tname}\": {m}")),
                other => other,
            })?;
            tables.insert(tname.clone(), table);
        }
        let schema = Schema {
            name,
            version: text("version"),
            cksum: text("cksum"),
            tables,
        };
        schema.check_refs()?;
        Ok(schema)
    }

    fn check_refs(&self) -> Result<()> {
        for (tname, t) in &self.tables {
            for (cname, c) in &t.columns {
                for base in std::iter::once(&c.ty.key).chain(c.ty.value.as_ref()) {
                    if let Some(r) = &base.ref_table {
                        if !self.tables.contains_key(r) {
                            return Err(Error::Schema(format!(
                                "column {tname}.{cname} references unknown table \"{r}\""
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Look up a table, with an actionable error if it does not exist.
    pub fn table(&self, name: &str) -> Result<&TableSchema> {
        self.tables.get(name).ok_or_else(|| Error::UnknownName {
            kind: "table",
            name: name.to_owned(),
            db: self.name.clone(),
        })
    }
}

fn parse_table(t: &Value) -> Result<TableSchema> {
    let obj = t
        .as_object()
        .ok_or_else(|| Error::Schema("a table must be a JSON object".into()))?;
    let cols = obj
        .get("columns")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Schema("the table lacks a \"columns\" object".into()))?;
    let mut columns = BTreeMap::new();
    for (cname, c) in cols {
        if cname.starts_with('_') {
            return Err(Error::Schema(format!(
                "column name \"{cname}\" is reserved (names starting with _)"
            )));
        }
        let ty = c
            .get("type")
            .ok_or_else(|| Error::Schema(format!("column \"{cname}\" lacks a \"type\"")))
            .and_then(ColumnType::from_json)
            .map_err(|e| Error::Schema(format!("column \"{cname}\": {e}")))?;
        let flag = |k: &str, default: bool| c.get(k).and_then(Value::as_bool).unwrap_or(default);
        columns.insert(
            cname.clone(),
            ColumnSchema {
                ty,
                ephemeral: flag("ephemeral", false),
                mutable: flag("mutable", true),
            },
        );
    }
    let mut indexes = Vec::new();
    for idx in obj
        .get("indexes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let names: Vec<String> = idx
            .as_array()
            .ok_or_else(|| Error::Schema(format!("index {idx} must be an array of column names")))?
            .iter()
            .map(|n| {
                n.as_str()
                    .filter(|n| columns.contains_key(*n))
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Schema(format!("index {idx} names an unknown column")))
            })
            .collect::<Result<_>>()?;
        indexes.push(names);
    }
    Ok(TableSchema {
        columns,
        is_root: obj.get("isRoot").and_then(Value::as_bool).unwrap_or(false),
        max_rows: obj.get("maxRows").and_then(Value::as_u64),
        indexes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_column_types() {
        let t = ColumnType::from_json(
            &json!({"key": "string", "value": "integer", "min": 0, "max": "unlimited"}),
        )
        .unwrap();
        assert!(t.is_map());
        assert_eq!(t.max, None);
        assert_eq!(t.default_datum(), Datum::empty_map());
        let s = ColumnType::from_json(&json!("boolean")).unwrap();
        assert!(s.is_scalar());
        assert_eq!(s.default_datum(), Datum::from(false));
        for bad in [
            json!({"key": "str"}),
            json!({"key": "string", "min": 2}),
            json!({"key": "string", "max": 0}),
            json!({"key": {"type": "string", "refTable": "X"}}),
            json!({"key": {"type": "integer", "enum": ["set", ["a"]]}}),
            json!(7),
        ] {
            assert!(
                ColumnType::from_json(&bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn rejects_dangling_references() {
        let err = Schema::from_json(&json!({"name": "D", "tables": {"A": {"columns": {
            "r": {"type": {"key": {"type": "uuid", "refTable": "Nope"}}}}}}}))
        .unwrap_err();
        assert!(err.to_string().contains("Nope"), "{err}");
    }

    #[test]
    fn node_schema_parses() {
        let text = include_str!("../../../deploy/nestdb/sluice.ovsschema");
        let s = Schema::from_json_str(text).unwrap();
        assert_eq!(s.name, "Sluice_Node");
        assert!(s.version.is_some());
        let sp = s.table("Service_Port").unwrap();
        assert!(!sp.is_root, "Service_Port rows are owned by Service");
        let svc = s.table("Service").unwrap();
        assert_eq!(
            svc.indexes,
            vec![vec!["namespace".to_string(), "name".into()]]
        );
        let ports = &svc.columns["ports"].ty;
        assert_eq!(ports.key.ref_table.as_deref(), Some("Service_Port"));
        assert_eq!(ports.key.ref_type, RefType::Strong);
        let to = &svc.columns["affinity_timeout"].ty.key;
        assert!(to.check(&Atom::Integer(86400)).is_ok());
        assert!(to.check(&Atom::Integer(86401)).is_err());
        let nt = &s.table("Node_Config").unwrap().columns["node_type"].ty.key;
        assert!(nt.check(&Atom::from("BAREMETAL")).is_ok());
        assert!(s.table("Nope").is_err());
    }
}
