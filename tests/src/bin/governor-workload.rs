//! A small network client for the kernel tests: one operation per run, one JSON line of
//! result, exit 0 on success, 2 on EPERM (the governor's refusal), 1 on any other error.
//!
//!   governor-workload connect ADDR          connect, then close
//!   governor-workload udp-send ADDR         sendto() on an unconnected UDP socket
//!   governor-workload send ADDR N           connect, write N bytes, half-close, wait for EOF
//!   governor-workload recv ADDR             connect, read until EOF, report the byte count

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["connect", addr] => parse(addr).and_then(|a| connect(a).map(|_| Done::default())),
        ["udp-send", addr] => parse(addr).and_then(udp_send),
        ["send", addr, n] => parse(addr).and_then(|a| send(a, n.parse().expect("byte count"))),
        ["recv", addr] => parse(addr).and_then(recv),
        _ => {
            eprintln!("usage: governor-workload connect|udp-send|send|recv ADDR [N]");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(Done {
            bytes,
            wire_bytes,
            retrans_bytes,
        }) => {
            println!(
                "{{\"result\":\"ok\",\"bytes\":{bytes},\"wire_bytes\":{wire_bytes},\"retrans_bytes\":{retrans_bytes}}}"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            println!(
                "{{\"result\":\"error\",\"errno\":{errno},\"message\":{:?}}}",
                e.to_string()
            );
            if errno == libc::EPERM {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
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
}

fn parse(addr: &str) -> std::io::Result<SocketAddr> {
    addr.parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn udp_send(addr: SocketAddr) -> std::io::Result<Done> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind)?;
    let bytes = s.send_to(b"governor-test", addr)? as u64;
    Ok(Done {
        bytes,
        wire_bytes: bytes,
        retrans_bytes: 0,
    })
}

fn send(addr: SocketAddr, n: u64) -> std::io::Result<Done> {
    let mut s = connect(addr)?;
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    let (wire_bytes, retrans_bytes) = governor_tests::tcp_wire_bytes(&s);
    Ok(Done {
        bytes: n,
        wire_bytes,
        retrans_bytes,
    })
}

fn recv(addr: SocketAddr) -> std::io::Result<Done> {
    let mut s = connect(addr)?;
    s.shutdown(Shutdown::Write)?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf)? {
            0 => {
                return Ok(Done {
                    bytes: total,
                    ..Done::default()
                });
            }
            k => total += k as u64,
        }
    }
}
