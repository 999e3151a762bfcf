//! The subcommands of the `kiln` command line, one module each.

pub mod bench;
pub mod common;
pub mod compile;
pub mod import;
pub mod optimize;
pub mod plan;
pub mod run;
pub mod show;
