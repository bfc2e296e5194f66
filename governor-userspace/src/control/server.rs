//! Routes of the control socket. Read-only for now: `GET /v1/status`, `GET /v1/health`.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use anyhow::Context as _;
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::UnixListener;

use crate::governor::Governor;

/// Binds the control socket at `path`: creates its directory, refuses to take over a socket a
/// live daemon is serving, and replaces a stale one left by a crash.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {} (daemon.socket)", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another governor is already serving {}; stop it first or set daemon.socket to another path",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind control socket {} (daemon.socket)", path.display()))?;
    // Owner and group only: status reveals every agent's traffic.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set permissions on {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, governor: Arc<Governor>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/health", get(|| async { "ok\n" }))
        .with_state(governor);
    axum::serve(listener, app).await.context("control socket server failed")
}

async fn status(State(g): State<Arc<Governor>>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || g.status()).await {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("status task failed: {e}")),
    }
}

fn error(code: StatusCode, message: &str) -> axum::response::Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}
