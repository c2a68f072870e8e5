//! Wiring of the `lensd` binary: the CPU engine behind the scheduler's engine interface.

pub mod runtime;
