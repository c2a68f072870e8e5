//! The scheduler side of lensd: tokio actors that decide where weights live and, later, which
//! work runs next. Drives the compute engine only through `lensd_core::engine::Engine`.

pub mod fake;
pub mod queue;
pub mod residency;
