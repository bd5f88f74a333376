//! Qwen Layers as a Rust library and a command line: [`decomposer`] loads Qwen-Image-Layered,
//! decomposes an image and packages the layers (PNGs, ZIP, manifest, the API's response) with
//! the same code the browser runs (`app`); [`generator`] makes an image from a prompt with
//! Z-Image-Turbo (the input of a decomposition when there is no picture yet); the `qwen-layers`
//! binary is the CLI over both. Depends
//! only on the engine and `app`; the web server builds on it.

pub mod decomposer;
pub mod generator;

pub use decomposer::{composite_layers, Decomposer, Layers};
