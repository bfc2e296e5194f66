//! The control socket under hostile clients: idle floods, slow clients, oversized and malformed
//! requests are bounded and cannot lock other callers out.

use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use governor_tests::{AgentsRoot, Daemon, as_user, governor_bin, privileged};

const NOBODY: u32 = 65534;

fn request(socket: &std::path::Path, raw: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn floods_slow_clients_and_bad_requests_are_bounded() {
    if !privileged("floods_slow_clients_and_bad_requests_are_bounded") {
        return;
    }
    let root = AgentsRoot::new();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_in(dir, &root, "read_group = \"nogroup\"\n[[agent]]\nname = \"a1\"\n");

    // A reader (uid nobody) opens 100 idle connections in a helper process.
    let mut flood = Command::new("python3");
    flood.args(["-c", &format!(
        "import socket, time\nheld = []\nfor _ in range(100):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({:?})\n    held.append(s)\ntime.sleep(8)\n",
        daemon.socket.display().to_string()
    )]);
    as_user(&mut flood, NOBODY, NOBODY);
    let mut flood = flood.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));

    // Root is not locked out, and answers stay fast.
    let started = Instant::now();
    let out = Command::new(governor_bin()).args(["status", "--json", "--socket"]).arg(&daemon.socket).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took < Duration::from_millis(500), "status took {took:?} under an idle flood");
    // The flooding uid's own next connection is closed at once.
    let mut extra = Command::new(governor_bin());
    extra.args(["status", "--socket"]).arg(&daemon.socket);
    as_user(&mut extra, NOBODY, NOBODY);
    assert!(!extra.output().unwrap().status.success(), "a 101st connection of one uid should be refused");
    let _ = flood.kill();
    let _ = flood.wait();

    // A slow client that never finishes its headers is cut off.
    let mut slow = UnixStream::connect(&daemon.socket).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: governor\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(10), "slow client held for {waited:?}");

    // Oversized and malformed requests get errors, not crashes.
    let big = format!(
        "POST /v1/agents/a1/pause HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n{}",
        "x".repeat(200_000)
    );
    let answer = request(&daemon.socket, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{}", &answer[..answer.len().min(200)]);
    let answer = request(&daemon.socket, b"THIS IS NOT HTTP\r\n\r\n");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Hostile bytes: 300 requests of random garbage, random methods and paths, broken JSON.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..300 {
        let len = (next() % 300) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let raw = match i % 3 {
            0 => junk,
            1 => format!(
                "POST /v1/agents/{}/pause HTTP/1.1\r\nHost: g\r\nContent-Length: {len}\r\n\r\n",
                String::from_utf8_lossy(&junk[..len.min(20)]).replace(['/', ' ', '\r', '\n'], "")
            )
            .into_bytes()
            .into_iter()
            .chain(junk)
            .collect(),
            _ => format!(
                "GET /v1/events?since={}&agent=%{:02x} HTTP/1.1\r\nHost: g\r\n\r\n",
                next() % 1000,
                next() % 256
            )
            .into_bytes(),
        };
        let mut s = UnixStream::connect(&daemon.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&raw);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    }
    assert_eq!(daemon.agent("a1")["state"], "enforcing", "nothing was paused");
    assert!(daemon.status()["version"].is_string(), "the daemon is still serving");
}

/// Out of descriptors, the daemon refuses connections for a moment and goes on serving: an
/// accept error ends neither the control socket nor the daemon. A handler's failure gives its
/// caller's connection back, so a uid is never locked out.
#[test]
fn running_out_of_descriptors_does_not_end_the_daemon() {
    if !privileged("running_out_of_descriptors_does_not_end_the_daemon") {
        return;
    }
    let root = AgentsRoot::new();
    let mut daemon = Daemon::start(&root, "[[agent]]\nname = \"a1\"\n");
    let pid = daemon.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    // The soft limit only: the hard one stays, so it can be raised again.
    let set = Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--nofile={}:", open + 8)]).status();
    assert!(set.is_ok_and(|s| s.success()), "prlimit (util-linux)");
    // More clients than descriptors left: some accepts fail with EMFILE.
    let held: Vec<UnixStream> = (0..40).filter_map(|_| UnixStream::connect(&daemon.socket).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !request(&daemon.socket, b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").contains("ok") {
        assert!(Instant::now() < deadline, "the daemon stopped answering:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon.log().contains("accept failed; retrying"),
        "no accept failed: the test proved nothing:\n{}",
        daemon.log()
    );
    let raise = Command::new("prlimit").args(["--pid", &pid.to_string(), "--nofile=1024:"]).status();
    assert!(raise.is_ok_and(|s| s.success()));
    // 70 refused requests with a time no clock can name (once a panic in the handler), then the
    // same uid is still served: nothing held its connections.
    for _ in 0..70 {
        let answer = request(&daemon.socket, b"GET /v1/events?since=999999999999s HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert!(daemon.status()["version"].is_string());
    assert!(daemon.stop().success(), "{}", daemon.log());
}

/// The query parameters of every endpoint, fuzzed: whatever a caller sends, the answer is a
/// 2xx or a 4xx with a reason, never a dropped connection (a panicking handler) or a 5xx, and
/// the daemon goes on answering.
#[test]
fn query_parameters_of_every_endpoint_are_fuzzed() {
    if !privileged("query_parameters_of_every_endpoint_are_fuzzed") {
        return;
    }
    let root = AgentsRoot::new();
    let daemon = Daemon::start(&root, "[[agent]]\nname = \"a1\"\n");
    // A small deterministic generator: the same cases each run, so a failure reproduces.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let values: Vec<String> = vec![
        String::new(),
        "0".into(),
        "-1".into(),
        "999999999999999999999999".into(),
        "999999999999s".into(),
        "1w".into(),
        "a1".into(),
        "nosuch".into(),
        "127.0.0.1:80".into(),
        "[::1]:443".into(),
        "300.1.1.1:99999".into(),
        "tcp".into(),
        "udp".into(),
        "sctp".into(),
        "%00%ff%fe".into(),
        "%E2%98%83".into(),
        "x".repeat(5000),
        "2026-13-45T99:99:99Z".into(),
        "../../etc/passwd".into(),
    ];
    let keys = ["agent", "kind", "since", "destination", "protocol", "json", "x", "", "agent%00", "since[]"];
    let paths = ["/v1/events", "/v1/explain", "/v1/status", "/v1/audit/head", "/v1/health"];
    for i in 0..400 {
        let path = paths[(next() % paths.len() as u64) as usize];
        let n = next() % 4;
        let query: Vec<String> = (0..n)
            .map(|_| {
                let k = keys[(next() % keys.len() as u64) as usize];
                let v = &values[(next() % values.len() as u64) as usize];
                format!("{k}={v}")
            })
            .collect();
        let raw = format!("GET {path}?{} HTTP/1.1\r\nhost: x\r\n\r\n", query.join("&"));
        let answer = request(&daemon.socket, raw.as_bytes());
        let code: u16 = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        assert!(
            (200..300).contains(&code) || (400..500).contains(&code),
            "case {i}: GET {path}?{} answered {:?}",
            query.join("&").chars().take(200).collect::<String>(),
            answer.chars().take(300).collect::<String>()
        );
    }
    assert!(request(&daemon.socket, b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").contains("ok"));
    assert!(daemon.status()["version"].is_string());
}
