//! flatstack's integration tests: one binary, one module per area.

mod ignition;
mod support;
