//! The `ghlflow` binary: parses the command line and hands it to `ghlflow::cli`.

use std::process::ExitCode;

// glibc's allocator spent a fifth of the engine's CPU (and its arena locks much of the rest
// of its waiting) in the engine bench; mimalloc is built for many small, short-lived
// allocations across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ghlflow::cli::main()
}
