//! Types shared by every part of lensd that must not depend on the compute engine: what an
//! analysis returns, how users name layers. No I/O, no tensors.

pub mod analysis;
pub mod layers;

pub use analysis::{Analysis, Cell, LayerRow, TokenInfo, TopToken};
pub use layers::LayerSpec;
