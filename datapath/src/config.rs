//! sluiced configuration.
