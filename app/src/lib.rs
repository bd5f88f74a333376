//! The shared crate: API contract types, compositing and export (used natively and in WASM),
//! the Leptos UI, and the server functions (which reach the engine through a [`backend::Backend`]
//! the server provides as context — this crate never depends on the server or the engine).

pub mod api;
pub mod api_lora;
pub mod api_z_image;
#[cfg(feature = "hydrate")]
pub mod browser;
pub mod components;
pub mod compose;
pub mod error;
pub mod export;
#[cfg(feature = "hydrate")]
pub mod gl;
pub mod image_data;
pub mod layer_count;
pub mod layer_stack;
#[cfg(feature = "hydrate")]
pub mod render;
pub mod server_fns;
pub mod server_fns_z_image;

#[cfg(feature = "ssr")]
pub mod backend;

pub use components::{shell, App};
