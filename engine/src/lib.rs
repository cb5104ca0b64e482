//! IGPO Engine library. See ARCHITECTURE.md for the map.
pub mod backend;
pub mod cli;
pub mod model;
pub mod tensor;
pub mod tokenizer;
