//! The `flupd` binary: installs the TLS provider, parses the command line
//! and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // glibc gives each thread that allocates a malloc arena of its own, up
    // to eight per core, and memory freed in one stays there. The outbox
    // and file writes run on many blocking-pool threads, so much of the
    // memory freed after a burst stayed resident. Two arenas cut the
    // peak RSS of a 200,000-message burst by about a quarter at no
    // measurable cost in speed (docs/benchmarks.md).
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable; it runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
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
