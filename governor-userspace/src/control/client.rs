//! The CLI's side of the control socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to governor at {}: {source}; is the daemon running (`governor run`), and may you read its socket (root or its group)?", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to governor at {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
    #[error("governor answered {status}: {message}")]
    Daemon { status: u16, message: String },
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self { socket: socket.to_owned() }
    }

    /// `GET path`, decoding a JSON body.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let proto = |message: String| ClientError::Protocol { path: self.socket.clone(), message };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { path: self.socket.clone(), source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| proto(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let request = Request::get(path)
            .header("host", "governor")
            .body(Empty::<Bytes>::new())
            .map_err(|e| proto(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| proto(e.to_string()))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| proto(e.to_string()))?.to_bytes();
        conn.abort();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Daemon { status: status.as_u16(), message });
        }
        serde_json::from_slice(&body).map_err(|e| proto(format!("unexpected answer: {e}")))
    }
}
