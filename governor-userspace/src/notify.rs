//! Notification hooks: each notice is POSTed as JSON to `notify.url` and/or given on standard
//! input to `notify.command`, with bounded attempts and a timeout each. Delivery runs on its own
//! task from a bounded queue, so it never blocks enforcement; notices not yet delivered are
//! kept in the saved state and delivered after a restart (at least once: each carries an `id`).

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt as _, sync::mpsc};

use crate::{accounting::window::parse_duration, config::NotifyConfig};

#[derive(Debug, Clone)]
pub struct Hooks {
    pub url: Option<String>,
    pub command: Option<Vec<String>>,
    pub attempts: u32,
    pub timeout: Duration,
}

impl Hooks {
    pub fn from_config(c: &NotifyConfig) -> Self {
        Self {
            url: c.url.as_ref().map(|u| u.get_ref().clone()),
            command: c.command.as_ref().map(|c| c.get_ref().clone()),
            attempts: u32::try_from(*c.attempts.get_ref()).expect("validated attempts"),
            timeout: parse_duration(c.timeout.get_ref()).expect("validated timeout"),
        }
    }

    pub fn any(&self) -> bool {
        self.url.is_some() || self.command.is_some()
    }
}

/// The outcome of delivering one notice, reported back to the daemon.
#[derive(Debug)]
pub struct Delivery {
    pub id: String,
    /// Per failed hook: which, and why (after the last attempt).
    pub failures: Vec<(String, String)>,
}

/// Queue capacity: notices beyond it wait in the saved outbox, never in memory without bound.
pub const QUEUE: usize = 1024;

/// Runs the delivery task: takes notices (JSON bodies with an `id`) and reports each outcome.
pub async fn deliver(hooks: Arc<Hooks>, mut queue: mpsc::Receiver<serde_json::Value>, done: mpsc::Sender<Delivery>) {
    while let Some(body) = queue.recv().await {
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        let text = Bytes::from(serde_json::to_vec(&body).expect("notice serializes"));
        let mut failures = Vec::new();
        if let Some(url) = &hooks.url
            && let Err(e) = with_retries(&hooks, || post(url, text.clone(), hooks.timeout)).await
        {
            failures.push((format!("url {url}"), e));
        }
        if let Some(cmd) = &hooks.command
            && let Err(e) = with_retries(&hooks, || run(cmd, text.clone(), hooks.timeout)).await
        {
            failures.push((format!("command {}", cmd.join(" ")), e));
        }
        if done.send(Delivery { id, failures }).await.is_err() {
            return;
        }
    }
}

async fn with_retries<F, Fut>(hooks: &Hooks, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for n in 0..hooks.attempts {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(250 << n.min(5))).await;
        }
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(format!("{} attempts failed; last: {last}", hooks.attempts))
}

async fn post(url: &str, body: Bytes, timeout: Duration) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("no host in URL")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let attempt = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", &host)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        conn.abort();
        if status.is_success() { Ok(()) } else { Err(format!("HTTP {status}")) }
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("timed out after {timeout:?}"))?
}

async fn run(cmd: &[String], body: Bytes, timeout: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let attempt = async {
        stdin.write_all(&body).await.map_err(|e| e.to_string())?;
        drop(stdin);
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if status.success() { Ok(()) } else { Err(format!("exited with {status}")) }
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("timed out after {timeout:?}"))?
}
