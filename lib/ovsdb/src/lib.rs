//! ovsdb-core: the OVSDB (RFC 7047) data model, written once and shared by
//! nestdb-server (`nestdb`) and its client (`nestdb-client`), the way Open vSwitch
//! shares `lib/ovsdb-data.c`, `ovsdb-types.c` and `ovsdb-error.c` between
//! ovsdb-server and the IDL.
//!
//! - [`uuid`]: [`Uuid`], `["uuid", …]`;
//! - [`datum`]: [`Atom`], [`Datum`], [`Row`], named UUIDs and their [`SymbolTable`],
//!   update2 diffs, and the direct JSON writer;
//! - [`datum_de`]: typed values and rows parsed straight from JSON text (serde visitors);
//! - [`atoms`]: [`AtomSet`] and [`AtomMap`], the sorted vectors a datum is made of;
//! - [`types`]: [`AtomicType`], [`BaseType`] with its constraints, [`ColumnType`];
//! - [`schema`]: [`Schema`], [`TableSchema`], [`ColumnSchema`] (`.ovsschema` JSON);
//! - [`condition`]: [`Condition`] (by name) and the parsed [`Where`] with `true`/`false`;
//! - [`mutation`]: [`Mutator`], [`Mutation`] and [`apply_mutation`];
//! - [`error`]: [`OvsdbError`], the `{"error", "details"}` object, and its standard tags.
//!
//! The crate does no I/O and holds no global state; every type is plain data that is
//! `Send + Sync`.  JSON-RPC framing and the database engine live elsewhere.

#![deny(unsafe_code)]

pub mod atoms;
pub mod condition;
pub mod datum;
pub mod datum_de;
pub mod error;
pub mod mutation;
pub mod schema;
pub mod types;
pub mod uuid;

pub use atoms::{AtomMap, AtomSet};
pub use condition::{Clause, ColumnRef, Condition, Function, Where};
pub use datum::{row_from_json, row_to_json, Atom, Datum, Row, SymbolTable};
pub use error::{tag, OvsdbError};
pub use mutation::{apply_mutation, Mutation, Mutator};
pub use schema::{ColumnSchema, Schema, TableSchema};
pub use types::{AtomicType, BaseType, ColumnType, RefType};
pub use uuid::Uuid;
