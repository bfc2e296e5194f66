//! The few things the proxy reads from DNS messages: the question, the addresses an answer
//! gives for it (through CNAME chains), and how to say SERVFAIL.

use std::{collections::HashSet, net::IpAddr};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::RData,
};

use crate::config::hostname::normalize;

/// What an agent asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lowercase, without the trailing dot.
    pub name: String,
}

/// The question of a query the proxy may forward: a standard query with exactly one question.
pub fn question(query: &[u8]) -> Result<Question, String> {
    let msg = Message::from_vec(query).map_err(|e| format!("not a DNS message: {e}"))?;
    if msg.metadata.message_type != MessageType::Query {
        return Err("not a query".into());
    }
    match msg.queries.as_slice() {
        [q] => Ok(Question { id: msg.metadata.id, name: normalize(&q.name().to_ascii()) }),
        qs => Err(format!("{} questions (one expected)", qs.len())),
    }
}

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
    /// Records for other names (an upstream adding unrelated data) admit nothing.
    pub fn addresses(&self, qname: &str) -> Vec<(IpAddr, u32)> {
        let mut chain: HashSet<String> = HashSet::from([qname.to_owned()]);
        // A chain is at most as long as the answer; each pass adds at least one name or stops.
        for _ in 0..self.msg.answers.len() {
            let before = chain.len();
            for r in &self.msg.answers {
                if let RData::CNAME(target) = &r.data
                    && chain.contains(&normalize(&r.name.to_ascii()))
                {
                    chain.insert(normalize(&target.0.to_ascii()));
                }
            }
            if chain.len() == before {
                break;
            }
        }
        self.msg
            .answers
            .iter()
            .filter(|r| chain.contains(&normalize(&r.name.to_ascii())))
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
                RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
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
    let q = Message::from_vec(query).ok()?;
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::ServFail);
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
}
