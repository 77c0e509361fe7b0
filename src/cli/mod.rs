//! The command line's own modules, beside `main.rs` (which parses the command and runs it): the
//! administrators' commands and the query commands. Like `main.rs`, they sit above the library:
//! they read the configuration, open the project and call the library's modules, and hold no
//! rules of their own.

pub mod admin;
pub mod dashboards;
pub mod forecast;
pub mod queries;
pub mod reports;
