//! The flow-table pipeline.
