//! Linux capability checks.
