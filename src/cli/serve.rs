//! `ghlflow serve`: the status page, `/metrics` and the probes over the state store, with no
//! scheduler: nothing is polled or run, and the page offers no action. For looking at a
//! state when no engine runs (after a stop, on a copy of the state folder).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult, load_catalog, load_config};
use crate::engine::{Engine, EngineOptions};
use crate::store::StoreError;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow serve                          the page at the `listen:` address (127.0.0.1:8975)
  ghlflow serve --listen 127.0.0.1:9000")]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, default_value = "ghlflow.yaml")]
    config: PathBuf,
    /// Bind here instead of ghlflow.yaml's `listen:` (off loopback, `server.auth` is required).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<std::net::SocketAddr>,
}

pub async fn run(args: ServeArgs, operations: Option<&Path>) -> CliResult {
    let catalog = Arc::new(load_catalog(operations)?);
    let config = load_config(&args.config, &catalog)?;
    let mut listener = config.listener.clone();
    if let Some(addr) = args.listen {
        // The same rule the file's `listen:` meets: off loopback, credentials are required.
        if !addr.ip().is_loopback() && listener.auth.is_none() {
            return Err(CliError::Invalid(format!(
                "--listen {addr} is not loopback: set `server: {{ auth: ... }}` in {} first (a token or basic credentials)",
                args.config.display()
            )));
        }
        listener.bind = addr;
    }
    let config = Arc::new(crate::config::Config { listener, ..config });
    // The page shows history even when a recipe does not validate here (a setting not
    // exported in this shell, say): the recipes that load are listed, the rest warned of.
    let recipes = match crate::recipe::load_recipes(&config.recipes_dir, &catalog, &config, &crate::config::process_env)
    {
        Ok(recipes) => recipes,
        Err(d) => {
            tracing::warn!("the recipes do not validate; the page lists none of them:\n{d}");
            Vec::new()
        }
    };
    let engine = match Engine::open(catalog, Arc::clone(&config), EngineOptions::default()).await {
        Ok(engine) => Arc::new(engine),
        Err(crate::engine::EngineError::Store(StoreError::Open { .. })) => {
            return Err(CliError::Runtime(format!(
                "the state store {} is held by a running `ghlflow run`: its own page is at http://{}/",
                config.state_dir.display(),
                config.listener.bind
            )));
        }
        Err(e) => return Err(CliError::Runtime(e.to_string())),
    };
    engine.set_recipes(recipes);
    let bound = crate::listen::bind(config.listener.bind).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    tracing::info!(address = %format!("http://{}/", bound.addr), "serving the status page read-only; stop with Ctrl-C");
    let stopper = Arc::clone(&engine);
    tokio::spawn(async move {
        super::run::shutdown_signal().await;
        stopper.stop();
    });
    crate::listen::serve_read_only(bound, engine).await.map_err(|e| CliError::Runtime(e.to_string()))
}
