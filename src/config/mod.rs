//! placeholder
pub mod problems;
pub use problems::{Problem, Problems};
