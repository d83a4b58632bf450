//! Client for OVSDB-protocol servers.
