//! The control socket `sluiced.ctl` (unixctl-compatible JSON-RPC).
