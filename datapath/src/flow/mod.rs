//! The OpenFlow-like flow program: keys, matches, actions, tables.
