//! The `flupd` binary: installs the TLS provider, parses the command line
//! and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Exactly one rustls provider for the whole process; installing fails
    // only if one is installed already, which is then the same one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Under a file size limit (RLIMIT_FSIZE) a write past it raises SIGXFSZ,
    // which kills the process by default. Ignored, the write fails with
    // EFBIG instead, which the outbox reports and retries without acking.
    // SAFETY: setting a signal's disposition to SIG_IGN runs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    flupd::app::main(flupd::cli::Cli::parse())
}
