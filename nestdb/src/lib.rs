//! nestdb: an OVSDB-protocol node database.
