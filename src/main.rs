//! The `ghlflow` binary: parses the command line and hands it to `ghlflow::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    ghlflow::cli::main()
}
