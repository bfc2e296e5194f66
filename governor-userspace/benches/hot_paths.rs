//! Criterion microbenchmarks of the daemon's user-space hot paths: what runs per deny event,
//! per status or scrape, per policy load and per DNS answer. `cargo xtask bench` runs them and
//! puts the medians in bench/REPORT.md; `cargo bench -p governor-userspace` runs them alone.

use std::{hint::black_box, net::IpAddr, path::Path, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{
    accounting::books::cost,
    config::LoadedConfig,
    dns::{
        cache::{Lifetimes, NameCache},
        message,
    },
    kernel::{AgentCounters, decode_event},
    policy,
};
use governor_common::{AF_INET, DenyEvent, HOOK_CONNECT, IPPROTO_TCP, Prices, REASON_NOT_ALLOWLISTED, VERDICT_DENIED};

fn event_bytes() -> Vec<u8> {
    let e = DenyEvent {
        timestamp_ns: 1_000_000,
        cgroup_id: 4242,
        agent_id: 0x9310_da45,
        pid: 1234,
        reason: REASON_NOT_ALLOWLISTED,
        verdict: VERDICT_DENIED,
        protocol: IPPROTO_TCP,
        family: AF_INET,
        port: 443,
        hook: HOOK_CONNECT,
        _pad: 0,
        addr: [203, 0, 113, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    // SAFETY: DenyEvent is repr(C) plain integers with no padding (asserted in governor-common).
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&e).cast::<u8>(), size_of::<DenyEvent>()) }.to_vec()
}

/// A config with `agents` agents, each allowed the same `endpoints` endpoints of one prefix.
fn config(agents: usize, endpoints: usize) -> LoadedConfig {
    let mut text = String::new();
    for e in 0..endpoints {
        text.push_str(&format!(
            "[[endpoint]]\nname = \"ep{e}\"\naddresses = [\"10.{}.{}.0/24\"]\nports = [443]\nprotocol = \"tcp\"\nprice = {{ connection = \"0.0004\", mib_sent = \"0.5\" }}\n",
            e / 256,
            e % 256
        ));
    }
    let names: Vec<String> = (0..endpoints).map(|e| format!("\"ep{e}\"")).collect();
    for a in 0..agents {
        text.push_str(&format!("[[agent]]\nname = \"agent{a}\"\nendpoints = [{}]\n", names.join(", ")));
    }
    LoadedConfig::from_str(Path::new("bench.toml"), text).expect("bench config")
}

fn hot_paths(c: &mut Criterion) {
    let bytes = event_bytes();
    c.bench_function("decode one deny event", |b| b.iter(|| decode_event(black_box(&bytes))));

    let counters = AgentCounters {
        tx_bytes: 123_456_789,
        rx_bytes: 987_654_321,
        allowed: 10_000,
        flows: 10_000,
        ..Default::default()
    };
    let prices = Prices { connection: 400_000_000, tx_byte: 476_838, rx_byte: 1_907_349 };
    c.bench_function("cost of one (agent, endpoint)", |b| b.iter(|| cost(black_box(&counters), black_box(&prices))));

    let small = config(10, 10);
    c.bench_function("compile a policy: 10 agents x 10 endpoints", |b| {
        b.iter(|| policy::compile(black_box(&small.config)))
    });
    let large = config(100, 100);
    c.bench_function("compile a policy: 100 agents x 100 endpoints", |b| {
        b.iter(|| policy::compile(black_box(&large.config)))
    });

    let query = message::query_for("api.example.com", hickory_proto::rr::RecordType::A);
    let q = message::question(&query).expect("question");
    let answer = answer_with_cname(&query);
    c.bench_function("parse a DNS answer and follow its CNAME chain", |b| {
        b.iter(|| message::answer(black_box(&answer), &q).map(|a| a.addresses(&q.name)))
    });

    let life = Lifetimes { min_ttl: Duration::from_secs(60), grace: Duration::from_secs(300) };
    let mut cache = NameCache::new(10_000, 32, life);
    let addrs: Vec<(IpAddr, u32)> = (0..4).map(|i| (IpAddr::from([192, 0, 2, i]), 60)).collect();
    let mut n = 0u64;
    c.bench_function("admit 4 addresses into a full name cache (10,000 names)", |b| {
        b.iter(|| {
            n += 1;
            cache.admit(1, &format!("n{}.example.com", n % 20_000), "api", black_box(&addrs), n)
        })
    });
}

fn answer_with_cname(query: &[u8]) -> Vec<u8> {
    use hickory_proto::{
        op::{Message, OpCode},
        rr::{Name, RData, Record, rdata},
    };
    let q = Message::from_vec(query).expect("query");
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.add_queries(q.queries);
    let name = |s: &str| Name::from_ascii(s).expect("name");
    m.answers.push(Record::from_rdata(
        name("api.example.com."),
        300,
        RData::CNAME(rdata::CNAME(name("edge.cdn.net."))),
    ));
    for i in 1..=4 {
        m.answers.push(Record::from_rdata(name("edge.cdn.net."), 60, RData::A(rdata::A([192, 0, 2, i].into()))));
    }
    m.to_vec().expect("answer")
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
    targets = hot_paths
}
criterion_main!(benches);
