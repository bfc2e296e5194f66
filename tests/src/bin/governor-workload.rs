//! A small network client for the kernel tests: one operation per run, one JSON line of
//! result, exit 0 on success, 2 on EPERM (the governor's refusal), 1 on any other error.
//!
//!   governor-workload connect ADDR          connect, then close
//!   governor-workload udp-send ADDR         sendto() on an unconnected UDP socket
//!   governor-workload send ADDR N           connect, write N bytes, half-close, wait for EOF
//!   governor-workload recv ADDR             connect, read until EOF, report the byte count
//!   governor-workload sink ADDR             listen, print "listening", take one connection,
//!                                           read it to the end, report the byte count
//!   governor-workload accept-loop ADDR      accept and close connections until killed
//!   governor-workload connect-rate ADDR R S connect R times a second for S seconds, paced;
//!                                           reports how many succeeded and were refused
//!   governor-workload tfo ADDR              TCP Fast Open: sendto(MSG_FASTOPEN) with no connect
//!   governor-workload sendmmsg ADDR         two UDP datagrams in one sendmmsg, unconnected
//!   governor-workload uring-connect ADDR    connect through io_uring
//!   governor-workload socket KIND           create a raw, icmp, packet or sctp socket
//!   governor-workload hold ADDR N SECS      open N connections (ok/eperm counted), hold them SECS
//!   governor-workload scan N PORT           connect to N distinct loopback addresses (127/8 and
//!                                           ::1 ports); reports how many were refused
//!   governor-workload connect-loop ADDR N   N connects one after another; reports the mean
//!                                           nanoseconds per connect (and close)
//!   governor-workload connect-many ADDR N   N connects at once (threads behind a barrier);
//!                                           reports how many the kernel let through (as bytes;
//!                                           ECONNABORTED at suspension included) and how many
//!                                           got EPERM
//!   governor-workload dns-serve IP NAME ANSWER
//!                                           a DNS server on IP:53 answering NAME with ANSWER;
//!                                           prints "listening", serves until killed
//!   governor-workload resolve-connect RESOLVER NAME PORT N
//!                                           N times: ask RESOLVER:53 for NAME over UDP, then at
//!                                           once connect to the answer's address:PORT; reports
//!                                           nanoseconds per lookup+connect and refused connects
//!
//! GOVERNOR_WORKLOAD_TIMEOUT_MS bounds each socket read, write and connect (default 10000).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["connect", addr] => parse(addr).and_then(|a| connect(a).map(|_| Done::default())),
        ["udp-send", addr] => parse(addr).and_then(udp_send),
        ["send", addr, n] => parse(addr).and_then(|a| send(a, n.parse().expect("byte count"))),
        ["recv", addr] => parse(addr).and_then(recv),
        ["sink", addr] => parse(addr).and_then(sink),
        ["accept-loop", addr] => parse(addr).and_then(accept_loop),
        ["tfo", addr] => parse(addr).and_then(tfo),
        ["connect-rate", addr, rate, secs] => {
            parse(addr).and_then(|a| connect_rate(a, rate.parse().expect("rate"), secs.parse().expect("seconds")))
        }
        ["sendmmsg", addr] => parse(addr).and_then(send_mmsg),
        ["uring-connect", addr] => parse(addr).and_then(uring_connect),
        ["socket", kind] => make_socket(kind),
        ["hold", addr, n, secs] => {
            parse(addr).and_then(|a| hold(a, n.parse().expect("count"), secs.parse().expect("seconds")))
        }
        ["scan", n, port] => scan(n.parse().expect("count"), port.parse().expect("port")),
        ["connect-loop", addr, n] => parse(addr).and_then(|a| connect_loop(a, n.parse().expect("count"))),
        ["connect-many", addr, n] => parse(addr).and_then(|a| connect_many(a, n.parse().expect("count"))),
        ["dns-serve", ip, name, answer] => dns_serve(ip.parse().expect("IPv4"), name, answer.parse().expect("IPv4")),
        ["resolve-connect", resolver, name, port, n] => resolve_connect(
            resolver.parse().expect("resolver IP"),
            name,
            port.parse().expect("port"),
            n.parse().expect("count"),
        ),
        _ => {
            eprintln!("usage: governor-workload connect|udp-send|send|recv ADDR [N]");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(Done { bytes, wire_bytes, retrans_bytes, eperm, nanos_per_op }) => {
            println!(
                "{{\"result\":\"ok\",\"bytes\":{bytes},\"wire_bytes\":{wire_bytes},\"retrans_bytes\":{retrans_bytes},\"eperm\":{eperm},\"nanos_per_op\":{nanos_per_op}}}"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            println!("{{\"result\":\"error\",\"errno\":{errno},\"message\":{:?}}}", e.to_string());
            if errno == libc::EPERM { ExitCode::from(2) } else { ExitCode::from(1) }
        }
    }
}

/// What an operation did: payload bytes, and for TCP senders the kernel's own count of payload
/// bytes put on the wire (retransmissions included) and of retransmitted bytes.
#[derive(Default)]
struct Done {
    bytes: u64,
    wire_bytes: u64,
    retrans_bytes: u64,
    /// connect-many: connects refused with EPERM (`bytes` holds those that succeeded).
    eperm: u64,
    /// connect-loop: mean nanoseconds per operation.
    nanos_per_op: u64,
}

fn timeout() -> Duration {
    let ms = std::env::var("GOVERNOR_WORKLOAD_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    Duration::from_millis(ms)
}

fn parse(addr: &str) -> std::io::Result<SocketAddr> {
    addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout())?;
    s.set_read_timeout(Some(timeout()))?;
    s.set_write_timeout(Some(timeout()))?;
    Ok(s)
}

fn udp_send(addr: SocketAddr) -> std::io::Result<Done> {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let s = UdpSocket::bind(bind)?;
    let bytes = s.send_to(b"governor-test", addr)? as u64;
    Ok(Done { bytes, wire_bytes: bytes, ..Done::default() })
}

fn send(addr: SocketAddr, n: u64) -> std::io::Result<Done> {
    let mut s = connect(addr)?;
    governor_tests::write_n(&mut s, n)?;
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    let (wire_bytes, retrans_bytes) = governor_tests::tcp_wire_bytes(&s);
    Ok(Done { bytes: n, wire_bytes, retrans_bytes, ..Done::default() })
}

fn recv(addr: SocketAddr) -> std::io::Result<Done> {
    let mut s = connect(addr)?;
    s.shutdown(Shutdown::Write)?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf)? {
            0 => {
                return Ok(Done { bytes: total, ..Done::default() });
            }
            k => total += k as u64,
        }
    }
}

fn connect_many(addr: SocketAddr, n: usize) -> std::io::Result<Done> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                connect(addr).map(drop)
            })
        })
        .collect();
    let mut done = Done::default();
    for t in threads {
        match t.join().expect("connect thread") {
            Ok(()) => done.bytes += 1,
            // Let through by the connect hook (and charged), then destroyed mid-handshake when
            // the ceiling suspended the agent: a connect the kernel allowed.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => done.bytes += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => done.eperm += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn sink(addr: SocketAddr) -> std::io::Result<Done> {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind(addr)?;
    println!("listening");
    std::io::stdout().flush()?;
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(timeout()))?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf)? {
            0 => return Ok(Done { bytes: total, ..Done::default() }),
            k => total += k as u64,
        }
    }
}

fn connect_loop(addr: SocketAddr, n: u64) -> std::io::Result<Done> {
    let started = std::time::Instant::now();
    let mut refused = 0;
    for _ in 0..n {
        match TcpStream::connect(addr) {
            Ok(s) => {
                reset_on_close(&s);
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => refused += 1,
            Err(e) => return Err(e),
        }
    }
    let nanos = started.elapsed().as_nanos() as u64;
    Ok(Done { bytes: n - refused, eperm: refused, nanos_per_op: nanos / n.max(1), ..Done::default() })
}

fn dns_serve(ip: std::net::Ipv4Addr, name: &str, answer: std::net::Ipv4Addr) -> std::io::Result<Done> {
    use governor_tests::dns::{DnsServer, Rr};
    let _server = DnsServer::start(ip, &[(name, Rr::A(answer, 60))]);
    println!("listening");
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn resolve_connect(resolver: std::net::IpAddr, name: &str, port: u16, n: u64) -> std::io::Result<Done> {
    let started = std::time::Instant::now();
    let mut refused = 0;
    for _ in 0..n {
        let addrs = governor::readiness::probe::resolve_a(name, resolver)?;
        let Some(ip) = addrs.first() else {
            return Err(std::io::Error::other(format!("{name}: no address in the answer")));
        };
        match TcpStream::connect(SocketAddr::new(*ip, port)) {
            Ok(s) => reset_on_close(&s),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => refused += 1,
            Err(e) => return Err(e),
        }
    }
    let nanos = started.elapsed().as_nanos() as u64;
    Ok(Done { bytes: n - refused, eperm: refused, nanos_per_op: nanos / n.max(1), ..Done::default() })
}

fn accept_loop(addr: SocketAddr) -> std::io::Result<Done> {
    use std::{io::Write as _, os::fd::AsRawFd as _};
    let listener = std::net::TcpListener::bind(addr)?;
    // A deep accept queue: with std's 128 a connect storm overflows it and stalls on SYN retries.
    // SAFETY: listen(2) again on our own listening socket only changes its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    println!("listening");
    std::io::stdout().flush()?;
    loop {
        drop(listener.accept()?);
    }
}

/// A sockaddr for `addr`, as the raw system calls want it.
fn raw_addr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; we fill the matching family's fields.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = (&raw mut ss).cast::<libc::sockaddr_in>();
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            unsafe {
                (*sin).sin_family = libc::AF_INET as u16;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr.s_addr = u32::from(*a.ip()).to_be();
            }
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = (&raw mut ss).cast::<libc::sockaddr_in6>();
            // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as u16;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr.s6_addr = a.ip().octets();
            }
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn family(addr: SocketAddr) -> i32 {
    if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 }
}

fn check(rc: isize) -> std::io::Result<isize> {
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

fn tfo(addr: SocketAddr) -> std::io::Result<Done> {
    // SAFETY: plain socket calls on a socket this function owns.
    unsafe {
        let fd = check(libc::socket(family(addr), libc::SOCK_STREAM, 0) as isize)? as i32;
        let (ss, len) = raw_addr(addr);
        let r = check(libc::sendto(fd, b"hi".as_ptr().cast(), 2, libc::MSG_FASTOPEN, (&raw const ss).cast(), len));
        libc::close(fd);
        r.map(|n| Done { bytes: n as u64, ..Done::default() })
    }
}

fn send_mmsg(addr: SocketAddr) -> std::io::Result<Done> {
    // SAFETY: plain socket calls; the message headers point at live locals.
    unsafe {
        let fd = check(libc::socket(family(addr), libc::SOCK_DGRAM, 0) as isize)? as i32;
        let (mut ss, len) = raw_addr(addr);
        let mut payload = *b"governor";
        let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
        let mut hdr: libc::mmsghdr = std::mem::zeroed();
        hdr.msg_hdr.msg_name = (&raw mut ss).cast();
        hdr.msg_hdr.msg_namelen = len;
        hdr.msg_hdr.msg_iov = &raw mut iov;
        hdr.msg_hdr.msg_iovlen = 1;
        let mut msgs = [hdr, hdr];
        let r = check(libc::sendmmsg(fd, msgs.as_mut_ptr(), 2, 0) as isize);
        libc::close(fd);
        r.map(|n| Done { bytes: n as u64, ..Done::default() })
    }
}

fn uring_connect(addr: SocketAddr) -> std::io::Result<Done> {
    use io_uring::{IoUring, opcode, types};
    let mut ring = IoUring::new(4)?;
    // SAFETY: a socket this function owns, closed at the end.
    let fd = unsafe { check(libc::socket(family(addr), libc::SOCK_STREAM, 0) as isize)? as i32 };
    let (ss, len) = raw_addr(addr);
    let connect = opcode::Connect::new(types::Fd(fd), (&raw const ss).cast(), len).build();
    // SAFETY: `ss` outlives the submission (we wait for its completion below).
    unsafe { ring.submission().push(&connect).map_err(std::io::Error::other)? };
    ring.submit_and_wait(1)?;
    let result = ring.completion().next().map_or(-libc::EIO, |c| c.result());
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    if result < 0 { Err(std::io::Error::from_raw_os_error(-result)) } else { Ok(Done::default()) }
}

fn make_socket(kind: &str) -> std::io::Result<Done> {
    let (fam, ty, proto) = match kind {
        "raw" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "raw6" => (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
        "icmp" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        "packet" => (libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_ALL as u16).to_be())),
        "sctp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        "tcp" => (libc::AF_INET, libc::SOCK_STREAM, 0),
        _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("socket kind {kind}"))),
    };
    // SAFETY: socket(2); closed at once.
    unsafe {
        let fd = check(libc::socket(fam, ty, proto) as isize)? as i32;
        libc::close(fd);
    }
    Ok(Done::default())
}

fn hold(addr: SocketAddr, n: u64, secs: u64) -> std::io::Result<Done> {
    let mut held = Vec::new();
    let mut done = Done::default();
    for _ in 0..n {
        match connect(addr) {
            Ok(s) => {
                held.push(s);
                done.bytes += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => done.eperm += 1,
            Err(e) => return Err(e),
        }
    }
    std::thread::sleep(Duration::from_secs(secs));
    Ok(done)
}

fn scan(n: u64, port: u16) -> std::io::Result<Done> {
    let mut done = Done::default();
    for i in 0..n {
        let addr: SocketAddr = if i % 10 == 9 {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port.wrapping_add(i as u16))
        } else {
            let j = i as u32 + 1;
            SocketAddr::new(std::net::Ipv4Addr::new(127, (j >> 16) as u8, (j >> 8) as u8, j as u8).into(), port)
        };
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => done.bytes += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => done.eperm += 1,
            Err(_) => {}
        }
    }
    Ok(done)
}

fn connect_rate(addr: SocketAddr, rate: u64, secs: u64) -> std::io::Result<Done> {
    let started = std::time::Instant::now();
    let mut done = Done::default();
    for i in 0..rate * secs {
        let due = started + Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
        match TcpStream::connect(addr) {
            Ok(s) => {
                reset_on_close(&s);
                done.bytes += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => done.eperm += 1,
            Err(e) => return Err(e),
        }
    }
    done.nanos_per_op = started.elapsed().as_nanos() as u64 / (rate * secs).max(1);
    Ok(done)
}

/// Closes with a reset: no TIME_WAIT, so a long connect loop never starves the port range.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a correctly sized linger struct on our own socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
}
