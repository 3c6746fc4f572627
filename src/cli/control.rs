//! The control socket of a running `ghlflow run`: a Unix socket beside the state store
//! (`<state>.sock`) through which `ghlflow runs ...` reaches the process that holds the
//! store. One JSON request per connection, one JSON reply.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::runs::{Reply, RunsRequest, handle};
use crate::engine::Engine;

/// The socket's path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    let mut p = state_dir.as_os_str().to_owned();
    p.push(".sock");
    PathBuf::from(p)
}

/// Serves requests until the process ends. Removes a stale socket first.
#[cfg(unix)]
pub fn serve(engine: Arc<Engine>) -> std::io::Result<()> {
    let path = socket_path(&engine.config().state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tokio::spawn(async move {
        loop {
            // The socket stops with the engine.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = engine.stopped() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read);
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match serde_json::from_str::<RunsRequest>(&line) {
                    Ok(req) => handle(req, &engine).await,
                    Err(e) => {
                        Reply { exit: 2, stdout: String::new(), stderr: format!("error: bad control request: {e}\n") }
                    }
                };
                let _ = write.write_all(serde_json::to_string(&reply).unwrap_or_default().as_bytes()).await;
                let _ = write.shutdown().await;
            });
        }
    });
    Ok(())
}

#[cfg(not(unix))]
pub fn serve(_engine: Arc<Engine>) -> std::io::Result<()> {
    Ok(())
}

/// Sends a request to the running process.
#[cfg(unix)]
pub async fn ask(state_dir: &Path, req: &RunsRequest) -> Result<Reply, String> {
    let path = socket_path(state_dir);
    let mut stream = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
        format!("the state store {} is locked by another process, and its control socket {} does not answer ({e}); is a `ghlflow run` starting or stuck?", state_dir.display(), path.display())
    })?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    stream.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.map_err(|e| e.to_string())?;
    serde_json::from_str(&buf).map_err(|e| format!("the running ghlflow answered something unreadable: {e}"))
}

#[cfg(not(unix))]
pub async fn ask(state_dir: &Path, _req: &RunsRequest) -> Result<Reply, String> {
    Err(format!("the state store {} is in use by another process", state_dir.display()))
}
