//! The `flupd` binary: installs the TLS provider, parses the command line
//! and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Exactly one rustls provider for the whole process; installing fails
    // only if one is installed already, which is then the same one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    flupd::app::main(flupd::cli::Cli::parse())
}
