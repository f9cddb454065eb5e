//! Intentionally empty: this crate exists for its `Cargo.toml` (see its description).
#![forbid(unsafe_code)]
