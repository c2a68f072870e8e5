//! Wiring of the `lensd` binary: the CPU engine behind the scheduler's engine interface, and
//! the model-groups service built from a config file.

pub mod runtime;
pub mod service;
