//! `ghlflow connect NAME`: the OAuth authorization-code flow that gets a connection its
//! first tokens. It prints the authorization URL, waits on a 127.0.0.1 port for the browser
//! to come back with a code, exchanges the code and stores the tokens (and, for GHL, the
//! location or company they were granted for) in the state store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rand::Rng as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::{CliError, CliResult, load_catalog, load_config};
use crate::config::Auth;
use crate::http::auth::token_request;
use crate::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow connect ghl                  open the printed address, approve, done
  ghlflow connect ghl --port 9000      when the app's redirect URL uses port 9000")]
pub struct ConnectArgs {
    /// The connection (from ghlflow.yaml) to authorize; it must use `type: oauth2`.
    connection: String,
    /// The configuration file.
    #[arg(long, default_value = "ghlflow.yaml")]
    config: PathBuf,
    /// The local port for the redirect (default: the connection's `redirect_port`, or 8976).
    /// It must match the redirect URL registered with the app.
    #[arg(long)]
    port: Option<u16>,
    /// How long to wait for the browser, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

pub async fn run(args: ConnectArgs, operations: Option<&Path>) -> CliResult {
    let catalog = load_catalog(operations)?;
    let config = load_config(&args.config, &catalog)?;
    let connection = config.connection(&args.connection).map_err(CliError::Invalid)?.clone();
    let Auth::OAuth2(settings) = &connection.auth else {
        return Err(CliError::Invalid(format!(
            "connection `{}` does not use OAuth2 (auth type: oauth2); nothing to connect",
            connection.name
        )));
    };
    let port = args.port.unwrap_or(settings.redirect_port);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| CliError::Runtime(format!("cannot listen on 127.0.0.1:{port} for the redirect: {e}")))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let state: String = {
        let mut rng = rand::rng();
        (0..24).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
    };
    let mut authorize =
        url::Url::parse(&settings.authorize_url).map_err(|e| CliError::Invalid(format!("authorize URL: {e}")))?;
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &settings.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", &settings.scopes.join(" "))
        .append_pair("state", &state);
    println!("Open this address in a browser and grant access:\n\n  {authorize}\n");
    eprintln!("waiting for the redirect on {redirect_uri} ...");

    let code = tokio::time::timeout(Duration::from_secs(args.timeout), wait_for_code(&listener, &state))
        .await
        .map_err(|_| CliError::Runtime(format!("no redirect arrived within {} s", args.timeout)))??;

    let user_type =
        if connection.location_id.is_none() && connection.company_id.is_some() { "Company" } else { "Location" };
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", settings.client_id.as_str()),
        ("client_secret", settings.client_secret.expose()),
        ("redirect_uri", redirect_uri.as_str()),
    ];
    if connection.app.id == "ghl" {
        form.push(("user_type", user_type));
    }
    let http = reqwest::Client::new();
    let tokens = token_request(&http, &settings.token_url, &form, &connection.name)
        .await
        .map_err(|e| CliError::Runtime(config.redactor.redact(&e.to_string())))?;
    let stored = tokens.into_stored(None);
    let store = Store::connect(&config.state).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    store.save_tokens(&connection.name, &stored).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    let granted = match (&stored.location_id, &stored.company_id) {
        (Some(l), _) => format!(" for location {l}"),
        (None, Some(c)) => format!(" for company {c}"),
        (None, None) => String::new(),
    };
    println!("connected `{}`{granted}; tokens stored in {}", connection.name, config.state.describe());
    Ok(())
}

/// How long one connection to the redirect port may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until one brings `?code=...&state=<ours>` (or an error). Each
/// connection is served on its own task with a read timeout, so one that connects and sends
/// nothing (a port scanner, a browser's pre-connect) cannot hold up the real redirect.
async fn wait_for_code(listener: &TcpListener, state: &str) -> Result<String, CliError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<String, CliError>>(4);
    let mut served = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, _) =
                    accepted.map_err(|e| CliError::Runtime(format!("redirect listener failed: {e}")))?;
                let (tx, state) = (tx.clone(), state.to_owned());
                served.spawn(async move {
                    if let Some(result) = serve_redirect(socket, &state).await {
                        let _ = tx.send(result).await;
                    }
                });
            }
            Some(result) = rx.recv() => return result,
            Some(_) = served.join_next(), if !served.is_empty() => {}
        }
    }
}

/// Answers one connection; `Some` when it brought our code or an authorization error.
async fn serve_redirect(mut socket: tokio::net::TcpStream, state: &str) -> Option<Result<String, CliError>> {
    let mut buf = vec![0u8; 8192];
    let n = match tokio::time::timeout(READ_TIMEOUT, socket.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => return None, // silent or broken: dropped
    };
    let head = String::from_utf8_lossy(&buf[..n]);
    let target = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/");
    let url = url::Url::parse(&format!("http://127.0.0.1{target}")).ok();
    let param =
        |name: &str| url.as_ref().and_then(|u| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()));
    let (status, page, result) = match (param("code"), param("state"), param("error")) {
        (_, _, Some(error)) => (
            "400 Bad Request",
            format!("Access was not granted: {error}. You can close this tab."),
            Some(Err(CliError::Runtime(format!("the authorization server answered: {error}")))),
        ),
        (Some(code), Some(s), None) if s == state => {
            ("200 OK", "ghlflow is connected. You can close this tab.".to_owned(), Some(Ok(code)))
        }
        (Some(_), _, None) => {
            ("400 Bad Request", "This redirect does not belong to the running `ghlflow connect`.".to_owned(), None)
        }
        _ => ("404 Not Found", "Waiting for the authorization redirect.".to_owned(), None),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
        page.len()
    );
    let _ = tokio::time::timeout(READ_TIMEOUT, socket.write_all(reply.as_bytes())).await;
    let _ = socket.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_connection_does_not_hold_up_the_redirect() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let waiting = tokio::spawn(async move { wait_for_code(&listener, "st4te").await });
        // Connects and says nothing, and stays open.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut real = tokio::net::TcpStream::connect(addr).await.unwrap();
        real.write_all(b"GET /callback?code=abc&state=st4te HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        let _ = real.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        // Well inside the silent connection's read timeout.
        let code = tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("not held up").unwrap();
        assert_eq!(code.ok().as_deref(), Some("abc"));
    }
}
