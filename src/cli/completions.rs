//! `ghlflow completions SHELL` and `ghlflow man`: shell completion scripts and manual pages,
//! both generated from the same clap definitions as the parser, so they never drift from it.

use std::path::PathBuf;

use clap::{Args, CommandFactory};

use super::{Cli, CliError, CliResult, print};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow completions bash > ~/.local/share/bash-completion/completions/ghlflow
  ghlflow completions zsh > ~/.zfunc/_ghlflow        # with fpath+=(~/.zfunc) in ~/.zshrc
  ghlflow completions fish > ~/.config/fish/completions/ghlflow.fish
  ghlflow completions powershell >> $PROFILE")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow man | man -l -                  read it now
  ghlflow man --dir ~/.local/share/man/man1   install a page per command, then `man ghlflow-run`")]
pub struct ManArgs {
    /// Write ghlflow.1 and one page per command (ghlflow-run.1, ...) into this folder
    /// instead of printing ghlflow.1 to stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> CliResult {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ghlflow", &mut out);
    print(&String::from_utf8_lossy(&out))
}

pub fn man(args: ManArgs) -> CliResult {
    let cmd = Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| CliError::Runtime(format!("cannot create {}: {e}", dir.display())))?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| CliError::Runtime(format!("cannot write the pages into {}: {e}", dir.display())))?;
            print(&format!("wrote the manual pages into {}\n", dir.display()))
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| CliError::Runtime(format!("cannot render the manual page: {e}")))?;
            print(&String::from_utf8_lossy(&out))
        }
    }
}
