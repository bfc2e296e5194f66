//! The CLI's side of the control socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no governor daemon at {}: the socket does not exist. Start one (`sudo governor run`), or name its socket with --socket or GOVERNOR_SOCKET", path.display())]
    NoDaemon { path: PathBuf },
    #[error("no governor daemon answers at {}: the socket file is there but nothing listens on it (a daemon that was killed?). Start one with `sudo governor run`", path.display())]
    Refused { path: PathBuf },
    #[error("may not talk to governor at {}: reading status needs root or daemon.read_group, control needs root or daemon.admin_group", path.display())]
    Denied { path: PathBuf },
    #[error("cannot connect to governor at {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to governor at {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
    /// The daemon understood and said no; `status` is the HTTP status, for callers that decide
    /// on it, and stays out of the message.
    #[error("governor refused: {message}")]
    Daemon { status: u16, message: String },
}

impl ClientError {
    fn connect(path: &Path, source: std::io::Error) -> Self {
        let path = path.to_owned();
        match source.kind() {
            std::io::ErrorKind::NotFound => Self::NoDaemon { path },
            std::io::ErrorKind::ConnectionRefused => Self::Refused { path },
            std::io::ErrorKind::PermissionDenied => Self::Denied { path },
            _ => Self::Connect { path, source },
        }
    }
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
        let body = self.request("GET", path, None, |_| {}).await?;
        serde_json::from_slice(&body).map_err(|e| self.proto(format!("unexpected answer: {e}")))
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let body = self.request("POST", path, Some(body.to_string()), |_| {}).await?;
        serde_json::from_slice(&body).map_err(|e| self.proto(format!("unexpected answer: {e}")))
    }

    /// `GET path`, handing each line of the answer to `line` as it arrives (for streams).
    pub async fn get_lines(&self, path: &str, mut line: impl FnMut(&str)) -> Result<(), ClientError> {
        let mut pending = Vec::new();
        self.request("GET", path, None, |chunk| {
            pending.extend_from_slice(chunk);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = pending.drain(..=i).collect();
                line(String::from_utf8_lossy(&l[..l.len() - 1]).as_ref());
            }
        })
        .await
        .map(drop)
    }

    fn proto(&self, message: String) -> ClientError {
        ClientError::Protocol { path: self.socket.clone(), message }
    }

    /// One request; `chunk` sees the body as it streams in; returns the whole body.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        mut chunk: impl FnMut(&[u8]),
    ) -> Result<Bytes, ClientError> {
        let stream =
            UnixStream::connect(&self.socket).await.map_err(|source| ClientError::connect(&self.socket, source))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| self.proto(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "governor")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.proto(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| self.proto(e.to_string()))?;
        let status = response.status();
        let mut body = response.into_body();
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.proto(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if status.is_success() {
                    chunk(data);
                }
                all.extend_from_slice(data);
            }
        }
        conn.abort();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&all)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&all).into_owned());
            return Err(ClientError::Daemon { status: status.as_u16(), message });
        }
        Ok(Bytes::from(all))
    }
}
