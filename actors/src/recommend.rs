//! Recommendations, pure and synchronous: the hybrid engine of collaborative filtering,
//! content-based filtering and matrix factorisation (on `ndarray`), its training, its offline
//! evaluation, and a synthetic data set with planted structure. The actors that train, store
//! and serve models live in the program; nothing here does I/O.

pub mod collaborative;
pub mod content;
pub mod data;
pub mod eval;
pub mod model;
pub mod nmf;
pub mod synthetic;
pub mod text;

pub use data::{Interaction, Item, Kind};
pub use model::{Engine, Model, Profile, Scored, Settings, Weights};
