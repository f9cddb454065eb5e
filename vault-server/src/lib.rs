//! The HTTP front of the school records vault: handlers, problem+json errors, telemetry. The
//! binary (`main.rs`) wires them into an actix-web server; the library exists so that fuzz
//! targets and tests can reach the request parsers.
#![forbid(unsafe_code)]

pub mod api;
pub mod problem;
pub mod telemetry;
