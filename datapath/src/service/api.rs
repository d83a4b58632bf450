//! The serde types of the `service-update` control method: the batch
//! ([`ServiceUpdate`]) and its parts ([`ServiceSpec`], [`EndpointSpec`],
//! [`Protocol`], [`TrafficPolicy`]), and its reply ([`UpdateSummary`]).
//!
//! They are defined once, in the `sluice-api` crate that `sluicectl`, the
//! agent and the benches share; this module re-exports them for the
//! table's code. Validation against the node's configuration happens when
//! the table applies a batch, not here.
//!
//! Thread-safety: plain data (`Send + Sync`).

pub use sluice_api::service::{
    EndpointSpec, Protocol, ServiceSpec, ServiceUpdate, TrafficPolicy, UpdateSummary,
};
