//! Types shared by every part of lensd that must not depend on the compute engine: what an
//! analysis returns, how users name layers and sizes, the model-groups configuration. No
//! tensors; the only I/O is opening the files users name (`files`) and traits whose
//! implementations live elsewhere.

pub mod analysis;
pub mod bytes;
pub mod config;
pub mod dtype;
pub mod engine;
pub mod files;
pub mod layers;
pub mod registry;
pub mod residency;
pub mod work;

pub use analysis::{Analysis, Cell, LayerRow, TokenInfo, TopToken};
pub use bytes::ByteSize;
pub use dtype::{ComputeDtype, LensKind};
pub use layers::LayerSpec;
