//! The few things the proxy reads from DNS messages: the question, the addresses an answer
//! gives for it (through CNAME chains), and how to say SERVFAIL and REFUSED.

use std::{collections::HashMap, net::IpAddr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, RData, RecordType},
};

use crate::config::hostname::normalize;

/// What an agent asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: RecordType,
}

/// The largest query the proxy forwards: a question for the longest name (255 bytes) with an
/// EDNS record fits in 512; a larger one carries something else (a tunnel's payload).
pub const MAX_QUERY: usize = 512;

/// Record types an allowed name's lookup needs: addresses, their aliases, and the service
/// bindings (HTTPS, SVCB) that modern clients ask for beside them. Everything else (TXT, NULL,
/// ANY, AXFR, ...) is refused: it resolves nothing a connect could use, and it is what DNS
/// tunnels carry data in.
const FORWARDED_TYPES: [RecordType; 5] =
    [RecordType::A, RecordType::AAAA, RecordType::CNAME, RecordType::HTTPS, RecordType::SVCB];

/// The question of a DNS message, whatever it asks.
pub fn question(query: &[u8]) -> Result<Question, String> {
    let msg = Message::from_vec(query).map_err(|e| format!("not a DNS message: {e}"))?;
    if msg.metadata.message_type != MessageType::Query {
        return Err("not a query".into());
    }
    match msg.queries.as_slice() {
        [q] => Ok(Question { id: msg.metadata.id, name: normalize(&q.name().to_ascii()), qtype: q.query_type() }),
        qs => Err(format!("{} questions (one expected)", qs.len())),
    }
}

/// The query the proxy sends upstream for `query`: built anew from its id, its recursion flag,
/// its one question and (if it had EDNS) a bare OPT record with its payload size and DO bit, so
/// nothing else of what the agent wrote (EDNS options, trailing bytes) leaves the host.
pub fn canonical(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::new(q.metadata.id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.checking_disabled = q.metadata.checking_disabled;
    m.add_query(q.queries.first()?.clone());
    if let Some(edns) = &q.edns {
        let mut bare = hickory_proto::op::Edns::new();
        bare.set_max_payload(edns.max_payload()).set_dnssec_ok(edns.flags().dnssec_ok);
        m.set_edns(bare);
    }
    m.to_vec().ok()
}

/// Why the proxy will not forward `query` whatever its name: not a standard query (UPDATE,
/// NOTIFY, ...), not class IN, a type no connect needs, or larger than a question can be.
pub fn unforwardable(query: &[u8]) -> Option<String> {
    if query.len() > MAX_QUERY {
        return Some(format!("a {}-byte query (at most {MAX_QUERY})", query.len()));
    }
    let msg = Message::from_vec(query).ok()?;
    if msg.metadata.op_code != OpCode::Query {
        return Some(format!("opcode {:?}", msg.metadata.op_code));
    }
    let q = msg.queries.first()?;
    if q.query_class() != DNSClass::IN {
        return Some(format!("class {:?}", q.query_class()));
    }
    if !FORWARDED_TYPES.contains(&q.query_type()) {
        return Some(format!("type {}", q.query_type()));
    }
    if !msg.answers.is_empty() || !msg.authorities.is_empty() {
        return Some("records in a query".into());
    }
    None
}

/// Links of a CNAME chain followed (resolvers stop near here too); the rest admits nothing.
pub const MAX_CHAIN: usize = 16;

/// An upstream answer to `q`, checked to be one.
pub struct Answer {
    pub msg: Message,
}

pub fn answer(bytes: &[u8], q: &Question) -> Result<Answer, String> {
    let msg = Message::from_vec(bytes).map_err(|e| format!("not a DNS message: {e}"))?;
    if msg.metadata.message_type != MessageType::Response || msg.metadata.id != q.id {
        return Err("not the response to this query".into());
    }
    match msg.queries.as_slice() {
        [a] if normalize(&a.name().to_ascii()) == q.name => Ok(Answer { msg }),
        _ => Err("the response's question differs from the query's".into()),
    }
}

impl Answer {
    /// A and AAAA records for `qname` or any name its CNAME chain leads to, with their TTLs.
    /// Records for other names (an upstream adding unrelated data) admit nothing. Linear in the
    /// answer: each record's name is read once, and the chain is walked through a map, at most
    /// `MAX_CHAIN` links (a reversed 1,500-link chain once cost half a second a query). An IPv6
    /// address that is an IPv4 address in disguise (`::ffff:a.b.c.d`) is admitted as the IPv4
    /// address it is, as the kernel folds such destinations into IPv4.
    pub fn addresses(&self, qname: &str) -> Vec<(IpAddr, u32)> {
        let names: Vec<String> = self.msg.answers.iter().map(|r| normalize(&r.name.to_ascii())).collect();
        let aliases: HashMap<&str, String> = self
            .msg
            .answers
            .iter()
            .zip(&names)
            .filter_map(|(r, name)| match &r.data {
                RData::CNAME(target) => Some((name.as_str(), normalize(&target.0.to_ascii()))),
                _ => None,
            })
            .collect();
        let mut chain: Vec<&str> = vec![qname];
        while chain.len() <= MAX_CHAIN
            && let Some(next) = aliases.get(chain[chain.len() - 1])
            && !chain.contains(&next.as_str())
        {
            chain.push(next);
        }
        self.msg
            .answers
            .iter()
            .zip(&names)
            .filter(|(_, name)| chain.contains(&name.as_str()))
            .filter_map(|(r, _)| match &r.data {
                RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
                RData::AAAA(a) => Some((a.0.to_ipv4_mapped().map_or(IpAddr::V6(a.0), IpAddr::V4), r.ttl)),
                _ => None,
            })
            .collect()
    }

    pub fn truncated(&self) -> bool {
        self.msg.metadata.truncation
    }
}

/// A recursive query for `name` (the daemon's own lookups of allowed hosts).
pub fn query_for(name: &str, qtype: hickory_proto::rr::RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    if let Ok(n) = hickory_proto::rr::Name::from_ascii(format!("{name}.")) {
        m.add_query(hickory_proto::op::Query::query(n, qtype));
    }
    m.to_vec().unwrap_or_default()
}

/// SERVFAIL for `query` (same id and question), or None if it cannot even be parsed.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    error(query, ResponseCode::ServFail)
}

/// REFUSED for `query`: the proxy will not forward a query of this shape (policy, not failure).
pub fn refused(query: &[u8]) -> Option<Vec<u8>> {
    error(query, ResponseCode::Refused)
}

/// NXDOMAIN for `query`, with no SOA (so no resolver caches it, RFC 2308): for this agent the
/// name does not exist. A resolver library goes on to the next search domain, as it would not
/// on REFUSED (musl stops there, so `ndots` search lists would never reach an allowed name).
pub fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    error(query, ResponseCode::NXDomain)
}

fn error(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(q.queries);
    r.to_vec().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::{
        op::{OpCode, Query},
        rr::{
            Name, Record, RecordType,
            rdata::{A, AAAA, CNAME},
        },
    };

    use super::*;

    pub fn query(name: &str, id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    pub fn response(query: &[u8], records: Vec<Record>) -> Vec<u8> {
        let q = Message::from_vec(query).unwrap();
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.add_queries(q.queries);
        m.answers = records;
        m.to_vec().unwrap()
    }

    fn a(name: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn cname(name: &str, to: &str) -> Record {
        Record::from_rdata(Name::from_ascii(name).unwrap(), 300, RData::CNAME(CNAME(Name::from_ascii(to).unwrap())))
    }

    #[test]
    fn follows_cname_chains_and_ignores_unrelated_records() {
        let q = query("api.example.com.", 7);
        let r = response(
            &q,
            vec![
                cname("api.example.com.", "edge.cdn.net."),
                cname("edge.cdn.net.", "e1.cdn.net."),
                a("e1.cdn.net.", [192, 0, 2, 1], 20),
                a("unrelated.org.", [198, 51, 100, 9], 300),
                Record::from_rdata(
                    Name::from_ascii("e1.cdn.net.").unwrap(),
                    60,
                    RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
                ),
            ],
        );
        let question = question(&q).unwrap();
        assert_eq!(question.name, "api.example.com");
        let ans = answer(&r, &question).unwrap();
        let mut got = ans.addresses(&question.name);
        got.sort();
        assert_eq!(got, vec![(IpAddr::V4([192, 0, 2, 1].into()), 20), (IpAddr::V6(Ipv6Addr::LOCALHOST), 60)]);
    }

    #[test]
    fn a_response_to_another_query_is_refused() {
        let q = query("api.example.com.", 7);
        let other = response(&query("api.example.com.", 8), vec![]);
        assert!(answer(&other, &question(&q).unwrap()).is_err());
        let other_name = response(&query("evil.example.com.", 7), vec![]);
        assert!(answer(&other_name, &question(&q).unwrap()).is_err());
        assert!(question(b"\x00\x01garbage").is_err());
    }

    #[test]
    fn servfail_keeps_id_and_question() {
        let q = query("api.example.com.", 4242);
        let s = Message::from_vec(&servfail(&q).unwrap()).unwrap();
        assert_eq!(s.metadata.id, 4242);
        assert_eq!(s.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(s.metadata.message_type, MessageType::Response);
        assert_eq!(s.queries.len(), 1);
    }

    fn query_of(name: &str, qtype: RecordType, op: OpCode) -> Vec<u8> {
        let mut m = Message::new(9, MessageType::Query, op);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    #[test]
    fn only_standard_queries_of_the_types_a_connect_needs_are_forwarded() {
        for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME, RecordType::HTTPS, RecordType::SVCB] {
            assert_eq!(unforwardable(&query_of("api.example.com.", t, OpCode::Query)), None, "{t}");
        }
        for t in [RecordType::TXT, RecordType::NULL, RecordType::ANY, RecordType::AXFR, RecordType::MX] {
            assert!(unforwardable(&query_of("api.example.com.", t, OpCode::Query)).is_some(), "{t}");
        }
        assert!(
            unforwardable(&query_of("api.example.com.", RecordType::A, OpCode::Update)).unwrap().contains("opcode")
        );
        let mut big = query_of("api.example.com.", RecordType::A, OpCode::Query);
        big.resize(MAX_QUERY + 1, 0);
        assert!(unforwardable(&big).unwrap().contains("513-byte"));
        let r = Message::from_vec(&refused(&query("x.example.com.", 3)).unwrap()).unwrap();
        assert_eq!((r.metadata.id, r.metadata.response_code), (3, ResponseCode::Refused));
    }

    #[test]
    fn a_reversed_cname_chain_is_walked_in_linear_time_and_capped() {
        // A chain of 1,200 links (about what fits in one 64 KiB message) listed last link
        // first: the old fixed-point loop took one pass per link over every record.
        let n = 1200;
        let q = query("c0.example.com.", 1);
        let mut records: Vec<Record> =
            (0..n).rev().map(|i| cname(&format!("c{i}.example.com."), &format!("c{}.example.com.", i + 1))).collect();
        records.push(a(&format!("c{n}.example.com."), [192, 0, 2, 7], 30));
        records.push(a(&format!("c{}.example.com.", MAX_CHAIN), [192, 0, 2, 8], 30));
        let r = response(&q, records);
        let started = std::time::Instant::now();
        let got = answer(&r, &question(&q).unwrap()).unwrap().addresses("c0.example.com");
        // The end of a chain past the cap admits nothing; a link within it does.
        assert_eq!(got, vec![(IpAddr::V4([192, 0, 2, 8].into()), 30)]);
        assert!(started.elapsed() < std::time::Duration::from_millis(200), "{:?}", started.elapsed());
        // A loop ends the walk.
        let q = query("a.example.com.", 2);
        let r =
            response(&q, vec![cname("a.example.com.", "b.example.com."), cname("b.example.com.", "a.example.com.")]);
        assert!(answer(&r, &question(&q).unwrap()).unwrap().addresses("a.example.com").is_empty());
    }

    #[test]
    fn a_v4_mapped_aaaa_answer_admits_the_ipv4_address_it_is() {
        let q = query("api.example.com.", 5);
        let mapped: Ipv6Addr = "::ffff:192.0.2.9".parse().unwrap();
        let r = response(
            &q,
            vec![Record::from_rdata(Name::from_ascii("api.example.com.").unwrap(), 60, RData::AAAA(AAAA(mapped)))],
        );
        let got = answer(&r, &question(&q).unwrap()).unwrap().addresses("api.example.com");
        assert_eq!(got, vec![(IpAddr::V4([192, 0, 2, 9].into()), 60)]);
    }

    #[test]
    fn the_forwarded_query_carries_nothing_but_the_question() {
        let mut q = query_of("api.example.com.", RecordType::A, OpCode::Query);
        // An EDNS OPT record with a 300-byte private option, then 300 bytes of junk.
        let mut m = Message::from_vec(&q).unwrap();
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(4096);
        edns.options_mut().insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(65001, vec![7; 300]));
        m.set_edns(edns);
        q = m.to_vec().unwrap();
        q.extend(std::iter::repeat_n(0x41, 300));
        let c = canonical(&q).unwrap();
        assert!(c.len() < 100, "{} bytes forwarded", c.len());
        let back = Message::from_vec(&c).unwrap();
        assert_eq!(back.metadata.id, 9);
        assert_eq!(back.queries, Message::from_vec(&q[..q.len() - 300]).unwrap().queries);
        let edns = back.edns.unwrap();
        assert_eq!((edns.max_payload(), edns.options().as_ref().len()), (4096, 0));
    }
}
