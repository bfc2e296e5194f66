//! Routes of the control socket. Every request is authorized from the caller's credentials;
//! refusals and every control action are audited with uid, gid and pid.
//!
//! - `GET /v1/health`, `GET /v1/status`, `GET /v1/events?agent=&kind=&since=&follow=true`,
//!   `GET /v1/audit/head` (read)
//! - `POST /v1/agents/{name}/pause|resume|kill|ack`, `POST /v1/pause`, `POST /v1/resume` (admin)

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse as _, Response},
    routing::{get, post},
};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::net::UnixListener;

use super::auth::{Caller, PeerInfo, Role};
use crate::{
    audit::Record,
    governor::{Governor, unix_now},
    oversight::ControlError,
};

/// The control socket, bound under a temporary name beside `daemon.socket` until the daemon is
/// ready: whoever waits for the socket file to appear (a supervisor, a script, `governor
/// status`) finds it only once every program is attached. Dropped unpublished, it removes the
/// file, so a failed start leaves nothing that answers "connection refused".
pub struct ControlSocket {
    listener: Option<UnixListener>,
    pending: PathBuf,
    path: PathBuf,
    published: bool,
}

impl ControlSocket {
    /// Binds the socket for `path`: creates its directory, refuses to take over a socket a live
    /// daemon is serving, and removes a stale one left by a crash. Mode 0660, group `group`.
    pub fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {} (daemon.socket)", dir.display()))?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            anyhow::bail!(
                "socket directory {} is writable by others; anyone could replace the socket: chmod o-w it or set daemon.socket elsewhere",
                dir.display()
            );
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
        let name = path.file_name().map_or_else(|| "governor.sock".into(), |n| n.to_string_lossy().into_owned());
        let pending = dir.join(format!(".{name}.starting"));
        if std::os::unix::net::UnixStream::connect(&pending).is_ok() {
            anyhow::bail!(
                "another governor is starting with socket {} (its {} is bound); stop it first or set daemon.socket to another path",
                path.display(),
                pending.display()
            );
        }
        match std::fs::remove_file(&pending) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove {} left by an earlier start", pending.display()));
            }
        }
        let listener = UnixListener::bind(&pending)
            .with_context(|| format!("cannot bind control socket {} (daemon.socket)", path.display()))?;
        let socket = Self { listener: Some(listener), pending, path: path.to_owned(), published: false };
        if let Some(gid) = group {
            nix::unistd::chown(&socket.pending, None, Some(gid.into()))
                .with_context(|| format!("cannot give {} to group {gid}", socket.pending.display()))?;
        }
        // Owner and group only: status reveals every agent's traffic; the daemon checks each caller.
        std::fs::set_permissions(&socket.pending, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("cannot set permissions on {}", socket.pending.display()))?;
        Ok(socket)
    }

    /// The listener, to serve on; the socket file stays this value's to publish and remove.
    pub fn take_listener(&mut self) -> UnixListener {
        self.listener.take().expect("the listener is taken once")
    }

    /// Gives the socket its real name: from now on clients find the daemon.
    pub fn publish(&mut self) -> anyhow::Result<()> {
        std::fs::rename(&self.pending, &self.path)
            .with_context(|| format!("cannot rename {} to {}", self.pending.display(), self.path.display()))?;
        self.published = true;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let file = if self.published { &self.path } else { &self.pending };
        if let Err(e) = std::fs::remove_file(file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %file.display(), error = %e, "could not remove the control socket");
        }
    }
}

/// Connections served at once; more are closed at once, so a flood cannot exhaust the daemon.
const MAX_CONNECTIONS: usize = 1024;
/// Connections one uid may hold at once: one caller's flood cannot lock the others out.
const MAX_PER_UID: usize = 64;
/// Time a client has to send its request headers (slow clients are cut off).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest request body accepted (control bodies are a few bytes).
const MAX_BODY: usize = 64 * 1024;

pub async fn serve(listener: UnixListener, governor: Arc<Governor>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/health", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/audit/head", get(audit_head))
        .route("/v1/explain", get(explain))
        .route("/v1/reload", post(reload))
        .route("/v1/agents/{name}/{action}", post(control_one))
        .route("/v1/{action}", post(control_all))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(governor);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_uid: Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>> = Arc::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                back_off("control socket", &e).await;
                continue;
            }
        };
        let peer = PeerInfo { cred: stream.peer_cred().ok() };
        let uid = peer.cred.map_or(u32::MAX, |c| c.uid());
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("control socket: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        };
        {
            let mut held = per_uid.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = held.entry(uid).or_default();
            if *n >= MAX_PER_UID {
                tracing::warn!(uid, "control socket: uid holds {MAX_PER_UID} connections, closing a new one");
                continue;
            }
            *n += 1;
        }
        // Given back however the connection ends, a panicking handler included.
        let held = Held { per_uid: per_uid.clone(), uid };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
            drop(held);
            drop(permit);
        });
    }
}

/// One of a uid's connections, counted in `per_uid` until dropped.
struct Held {
    per_uid: Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>,
    uid: u32,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(n) = self.per_uid.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(&self.uid) {
            *n = n.saturating_sub(1);
        }
    }
}

/// After a failed accept (out of descriptors, out of memory): say so, wait, and go on serving,
/// as axum does; the daemon must not end because a flood used up its descriptors for a moment.
pub async fn back_off(what: &str, error: &std::io::Error) {
    tracing::warn!(error = %error, "{what}: accept failed; retrying in 100 ms");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

/// Lets the request through if the caller holds `needed`; otherwise audits the refusal and
/// answers 403 saying what would be needed.
fn authorize(
    g: &Governor,
    peer: &PeerInfo,
    needed: Role,
    action: &str,
    agent: Option<&str>,
) -> Result<Caller, Box<Response>> {
    let caller = Caller::of(peer);
    if g.groups.role(peer).is_some_and(|r| r >= needed) {
        return Ok(caller);
    }
    let why = g.groups.refusal(needed);
    tracing::debug!(action, caller = %caller.describe(), "control request refused");
    // Aggregated into the audit log at the next tick (every 200 ms), like denials: a refused
    // request changes nothing, and one record per request would let a reader fill the log.
    {
        let mut tally = g.tally();
        // Keyed without the agent name the caller chose: random names must not make one record
        // each. A few of the names and pids come along as examples.
        let key = (caller.uid, action.to_owned(), why.clone());
        let by = serde_json::to_value(&caller).unwrap_or_default();
        let entry = tally.refused.entry(key).or_insert_with(|| (0, by, Vec::new(), Vec::new()));
        entry.0 += 1;
        if let Some(pid) = caller.pid
            && entry.2.len() < 8
            && !entry.2.contains(&pid)
        {
            entry.2.push(pid);
        }
        if let Some(name) = agent
            && entry.3.len() < 4
            && !entry.3.iter().any(|n| n == name)
        {
            entry.3.push(name.chars().take(64).collect());
        }
    }
    Err(Box::new(error(StatusCode::FORBIDDEN, &why)))
}

async fn status(State(g): State<Arc<Governor>>, ConnectInfo(peer): ConnectInfo<PeerInfo>) -> Response {
    if let Err(r) = authorize(&g, &peer, Role::Read, "status", None) {
        return *r;
    }
    match tokio::task::spawn_blocking(move || g.status()).await {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("status task failed: {e}")),
    }
}

#[derive(Debug, Deserialize)]
struct ExplainQuery {
    agent: String,
    destination: String,
    #[serde(default = "tcp")]
    protocol: String,
}

fn tcp() -> String {
    "tcp".into()
}

async fn explain(
    State(g): State<Arc<Governor>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    query: Result<axum::extract::Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&g, &peer, Role::Read, "explain", None) {
        return *r;
    }
    let Ok(axum::extract::Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "expected ?agent=NAME&destination=IP:PORT[&protocol=tcp|udp]");
    };
    let Ok(dest) = q.destination.parse::<std::net::SocketAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{:?} is not IP:PORT (e.g. 203.0.113.7:443 or [2001:db8::1]:443)", q.destination),
        );
    };
    match tokio::task::spawn_blocking(move || g.explain(&q.agent, dest, &q.protocol)).await {
        Ok(Ok(e)) => Json(e).into_response(),
        Ok(Err(e @ crate::explain::ExplainError::Kernel(_))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("explain task failed: {e}")),
    }
}

async fn audit_head(State(g): State<Arc<Governor>>, ConnectInfo(peer): ConnectInfo<PeerInfo>) -> Response {
    if let Err(r) = authorize(&g, &peer, Role::Read, "audit head", None) {
        return *r;
    }
    let (head, path) = {
        let log = g.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (log.head(), log.path().display().to_string())
    };
    Json(json!({ "path": path, "seq": head.as_ref().map(|h| h.0), "hash": head.map(|h| h.1) })).into_response()
}

async fn reload(State(g): State<Arc<Governor>>, ConnectInfo(peer): ConnectInfo<PeerInfo>) -> Response {
    let caller = match authorize(&g, &peer, Role::Admin, "reload", None) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match tokio::task::spawn_blocking(move || g.reload(&caller)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e @ crate::reload::ReloadError::Unrecorded(_))) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Ok(Err(e @ crate::reload::ReloadError::Apply(_))) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("reload task failed: {e}")),
    }
}

#[derive(Debug, Deserialize, Default)]
struct ControlBody {
    reason: Option<String>,
    note: Option<String>,
}

async fn control_one(
    State(g): State<Arc<Governor>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    UrlPath((name, action)): UrlPath<(String, String)>,
    body: Option<Json<ControlBody>>,
) -> Response {
    control(g, peer, Some(name), action, body.map(|b| b.0).unwrap_or_default()).await
}

async fn control_all(
    State(g): State<Arc<Governor>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    UrlPath(action): UrlPath<String>,
    body: Option<Json<ControlBody>>,
) -> Response {
    if !matches!(action.as_str(), "pause" | "resume") {
        return error(StatusCode::NOT_FOUND, &format!("no action {action:?} for all agents (pause, resume)"));
    }
    control(g, peer, None, action, body.map(|b| b.0).unwrap_or_default()).await
}

async fn control(
    g: Arc<Governor>,
    peer: PeerInfo,
    name: Option<String>,
    action: String,
    body: ControlBody,
) -> Response {
    if !matches!(action.as_str(), "pause" | "resume" | "resume-budget" | "kill" | "ack") {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no action {action:?} (pause, resume, resume-budget, kill, ack)"),
        );
    }
    let caller = match authorize(&g, &peer, Role::Admin, &action, name.as_deref()) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let result = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ControlError> {
        let all = name.is_none();
        let agents = g.resolve(name.as_deref())?;
        let mut done = Vec::new();
        for agent in &agents {
            let outcome = match action.as_str() {
                "pause" => g.pause(agent, body.reason.as_deref().unwrap_or("operator"), &caller).map(|()| json!({})),
                "resume" => match g.resume(agent, &caller, None, all)? {
                    true => Ok(json!({})),
                    false => continue,
                },
                "resume-budget" => g.resume_budget(agent, &caller).map(|()| json!({})),
                "ack" => g.resume(agent, &caller, Some(body.note.as_deref().unwrap_or("")), false).map(|_| json!({})),
                "kill" => g.kill(agent, &caller).map(|n| json!({ "processes": n })),
                _ => unreachable!("checked above"),
            }?;
            done.push(json!({ "agent": agent, "result": outcome }));
        }
        Ok(json!({ "action": action, "agents": done }))
    })
    .await;
    match result {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e @ ControlError::NoAgent { .. })) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Ok(Err(
            e @ (ControlError::NoCheckpoint(_)
            | ControlError::OnlyBudgetSuspended(_)
            | ControlError::NotPaused(_)
            | ControlError::NotSuspended(_)
            | ControlError::TotalWindow(_)),
        )) => error(StatusCode::CONFLICT, &e.to_string()),
        Ok(Err(e @ ControlError::Unrecorded(_))) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("control task failed: {e}")),
    }
}

/// The start of `events --since`: a duration back from `now` (`0s`, `90s`, `30m`, `2h`, `1d`,
/// `1w`) or an RFC 3339 time.
fn parse_since(s: &str, now: i64) -> Result<time::OffsetDateTime, String> {
    let forms = "use a duration back from now (90s, 30m, 2h, 1d, 1w) or an RFC 3339 time (2026-11-26T09:00:00Z)";
    if let Some(split) = s.find(|c: char| !c.is_ascii_digit()).filter(|i| *i > 0) {
        let (n, unit) = s.split_at(split);
        let unit_secs = match unit {
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86400),
            "w" => Some(7 * 86400),
            _ => None,
        };
        if let (Ok(n), Some(unit_secs)) = (n.parse::<i64>(), unit_secs) {
            return n
                .checked_mul(unit_secs)
                .and_then(|back| now.checked_sub(back))
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                .ok_or_else(|| format!("{s:?} reaches back before any time governor can name; {forms}"));
        }
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{s:?} is not a time governor understands; {forms}"))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    agent: Option<String>,
    kind: Option<String>,
    /// A duration back from now ("10m") or an RFC 3339 time.
    since: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// Most records one non-follow query returns (the newest ones).
const MAX_EVENTS: usize = 10_000;

struct Filter {
    agent: Option<String>,
    kind: Option<String>,
    since: Option<time::OffsetDateTime>,
}

impl Filter {
    fn matches(&self, r: &Record) -> bool {
        self.agent.as_ref().is_none_or(|a| r.agent.as_deref() == Some(a))
            && self.kind.as_ref().is_none_or(|k| &r.kind == k)
            && self.since.is_none_or(|s| {
                time::OffsetDateTime::parse(&r.ts, &time::format_description::well_known::Rfc3339).is_ok_and(|t| t >= s)
            })
    }
}

/// The audit log as NDJSON, filtered; with `follow`, new records stream as they are written.
async fn events(
    State(g): State<Arc<Governor>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    Query(q): Query<EventsQuery>,
) -> Response {
    if let Err(r) = authorize(&g, &peer, Role::Read, "events", q.agent.as_deref()) {
        return *r;
    }
    let since = match q.since.as_deref().map(|s| parse_since(s, unix_now())) {
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("since: {e}")),
        Some(Ok(t)) => Some(t),
        None => None,
    };
    // `--follow` alone starts from now; with `since`, it replays from there first.
    let replay = !(q.follow && since.is_none());
    let filter = Arc::new(Filter { agent: q.agent, kind: q.kind, since });
    // Subscribe before reading the files, so nothing written in between is missed.
    let (live, path) = {
        let log = g.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (log.subscribe(), log.path().to_owned())
    };
    let f = filter.clone();
    let past = tokio::task::spawn_blocking(move || {
        let mut out = std::collections::VecDeque::new();
        let mut last_seq = None;
        for file in crate::audit::files(&path) {
            for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
                if let Ok(r) = serde_json::from_str::<Record>(line) {
                    last_seq = Some(r.seq);
                    if replay && f.matches(&r) {
                        if out.len() == MAX_EVENTS {
                            out.pop_front();
                        }
                        out.push_back(format!("{line}\n"));
                    }
                }
            }
        }
        (out, last_seq)
    })
    .await
    .unwrap_or_default();
    let (past, last_seq) = past;
    let past = futures_util::stream::iter(past.into_iter().map(Ok::<_, std::io::Error>));
    if !q.follow {
        return Response::builder()
            .header("content-type", "application/x-ndjson")
            .body(Body::from_stream(past))
            .expect("response");
    }
    let live = futures_util::stream::unfold(live, |mut rx| async move {
        match rx.recv().await {
            Ok(line) => Some((line, rx)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let gap =
                    json!({ "kind": "events_skipped", "details": { "count": n, "why": "the reader fell behind" } });
                Some((gap.to_string(), rx))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    })
    .filter_map(move |line| {
        let f = filter.clone();
        async move {
            let r: Record = serde_json::from_str(&line).ok()?;
            (last_seq.is_none_or(|s| r.seq > s) && f.matches(&r)).then(|| Ok(format!("{line}\n")))
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(past.chain(live)))
        .expect("response")
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_the_documented_forms_and_names_them_when_wrong() {
        let now = 1_800_000_000;
        for (text, back) in [("0s", 0), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1w", 604800)] {
            assert_eq!(parse_since(text, now).unwrap().unix_timestamp(), now - back, "{text}");
        }
        assert_eq!(parse_since("2026-11-26T09:00:00Z", now).unwrap().unix_timestamp(), 1_795_683_600);
        for bad in ["30", "5M", "1y", "", "m", "yesterday"] {
            let e = parse_since(bad, now).unwrap_err();
            assert!(e.contains("90s, 30m, 2h, 1d, 1w") && !e.contains("component"), "{bad}: {e}");
        }
        let e = parse_since("999999999999s", now).unwrap_err();
        assert!(e.contains("reaches back before"), "{e}");
        assert!(parse_since("99999999999999999999s", now).is_err());
    }
}
