//! A tiny authoritative DNS server on a loopback address, port 53 (UDP and TCP), answering from
//! a fixed zone: what the hostname tests need, and nothing the machine's own resolver does.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, UdpSocket},
    path::Path,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode},
    rr::{Name, RData, Record, RecordType, rdata},
};

/// Runs `program` in `cgroup` with /etc/resolv.conf replaced (in a private mount namespace)
/// by one naming only `resolver`, so glibc asks it, as an agent's resolver library would.
/// `dir` holds the replacement file.
pub fn with_resolver(cgroup: &Path, dir: &Path, resolver: Ipv4Addr, program: &[&str]) -> Output {
    let conf = dir.join(format!("resolv-{resolver}.conf"));
    std::fs::write(&conf, format!("nameserver {resolver}\noptions timeout:3 attempts:1\n")).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
    ])
    .arg(&conf)
    .args(program);
    crate::run_in(cgroup, cmd)
}

/// One name's data.
#[derive(Clone, Debug)]
pub enum Rr {
    A(Ipv4Addr, u32),
    Aaaa(std::net::Ipv6Addr, u32),
    Cname(String),
    /// Over UDP the answer is empty with TC set; over TCP it is this address.
    TruncatedA(Ipv4Addr),
    /// Never answered.
    Silent,
}

pub struct DnsServer {
    pub ip: Ipv4Addr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    queries: Arc<AtomicU64>,
}

impl DnsServer {
    /// Serves `zone` (name without trailing dot -> data) on `ip`:53.
    pub fn start(ip: Ipv4Addr, zone: &[(&str, Rr)]) -> Self {
        let zone: Arc<HashMap<String, Rr>> = Arc::new(zone.iter().map(|(n, r)| (n.to_string(), r.clone())).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let udp = UdpSocket::bind((ip, 53)).unwrap_or_else(|e| panic!("bind {ip}:53/udp: {e}"));
        udp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let tcp = TcpListener::bind((ip, 53)).unwrap_or_else(|e| panic!("bind {ip}:53/tcp: {e}"));
        tcp.set_nonblocking(true).unwrap();
        let mut threads = Vec::new();
        {
            let (zone, stop, queries) = (zone.clone(), stop.clone(), queries.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, peer)) = udp.recv_from(&mut buf) else { continue };
                    queries.fetch_add(1, Ordering::SeqCst);
                    if let Some(reply) = respond(&zone, &buf[..n], false) {
                        let _ = udp.send_to(&reply, peer);
                    }
                }
            }));
        }
        {
            let (zone, stop, queries) = (zone.clone(), stop.clone(), queries.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((mut conn, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut len = [0u8; 2];
                    while conn.read_exact(&mut len).is_ok() {
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if conn.read_exact(&mut q).is_err() {
                            break;
                        }
                        queries.fetch_add(1, Ordering::SeqCst);
                        let Some(reply) = respond(&zone, &q, true) else { break };
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend(reply);
                        if conn.write_all(&framed).is_err() {
                            break;
                        }
                    }
                }
            }));
        }
        Self { ip, stop, threads, queries }
    }

    /// Queries received so far (UDP and TCP).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn respond(zone: &HashMap<String, Rr>, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut r = Message::response(q.metadata.id, OpCode::Query);
    r.metadata.message_type = MessageType::Response;
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.authoritative = true;
    r.add_query(question.clone());
    let mut name = question.name().to_ascii().trim_end_matches('.').to_lowercase();
    // Follow CNAMEs inside the zone, as a recursive resolver would, answering the whole chain.
    for _ in 0..8 {
        let owner = Name::from_ascii(format!("{name}.")).ok()?;
        match zone.get(&name) {
            Some(Rr::Cname(to)) => {
                let target = Name::from_ascii(format!("{to}.")).ok()?;
                r.answers.push(Record::from_rdata(owner, 300, RData::CNAME(rdata::CNAME(target))));
                name = to.clone();
            }
            Some(Rr::A(ip, ttl)) if question.query_type() == RecordType::A => {
                r.answers.push(Record::from_rdata(owner, *ttl, RData::A(rdata::A(*ip))));
                break;
            }
            Some(Rr::Aaaa(ip, ttl)) if question.query_type() == RecordType::AAAA => {
                r.answers.push(Record::from_rdata(owner, *ttl, RData::AAAA(rdata::AAAA(*ip))));
                break;
            }
            Some(Rr::TruncatedA(ip)) if question.query_type() == RecordType::A => {
                if tcp {
                    r.answers.push(Record::from_rdata(owner, 60, RData::A(rdata::A(*ip))));
                } else {
                    r.metadata.truncation = true;
                }
                break;
            }
            Some(Rr::Silent) => return None,
            _ => break,
        }
    }
    r.to_vec().ok()
}
