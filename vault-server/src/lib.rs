//! The HTTP front of the school records vault: handlers, problem+json errors, telemetry, and
//! the app that puts them together (`startup`). The binary (`main.rs`) opens the vault and runs
//! that app in an actix-web server; the library exists so that fuzz targets and tests can reach
//! the request parsers.
#![forbid(unsafe_code)]

pub mod api;
pub mod limits;
pub mod problem;
pub mod startup;
pub mod telemetry;
