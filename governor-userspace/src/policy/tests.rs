use std::path::Path;

use governor_common::{ALLOW_KEY_FIXED_BITS, IPPROTO_TCP, IPPROTO_UDP};

use super::*;
use crate::config::LoadedConfig;

fn compile_text(text: &str) -> Result<Policy, PolicyError> {
    let loaded = LoadedConfig::from_str(Path::new("t.toml"), text.to_owned()).expect("valid config");
    compile(&loaded.config)
}

const TWO_ENDPOINTS: &str = r#"
[[endpoint]]
name = "api"
addresses = ["203.0.113.10", "2001:db8::/32"]
ports = [443, 8443]
protocol = "tcp"

[[endpoint]]
name = "intranet"
addresses = ["10.0.0.0/8"]
protocol = "any"

[[agent]]
name = "scanner"
endpoints = ["api", "intranet"]

[[agent]]
name = "idle"
mode = "observe"
"#;

#[test]
fn rules_expand_ports_protocols_and_families() {
    let p = compile_text(TWO_ENDPOINTS).unwrap();
    let scanner = &p.agents[0];
    let api = name_id("api");
    let dns = name_id("intranet");

    // api: 1 v4 address x 2 ports (tcp); dns: 1 prefix x any port x (tcp, udp).
    let mut v4: Vec<_> = scanner
        .rules_v4
        .iter()
        .map(|r| (r.key.protocol, u16::from_be_bytes(r.key.port), r.prefix_len, r.rule.endpoint_id))
        .collect();
    v4.sort_unstable();
    assert_eq!(
        v4,
        vec![
            (IPPROTO_TCP, 0, ALLOW_KEY_FIXED_BITS + 8, dns),
            (IPPROTO_TCP, 443, ALLOW_KEY_FIXED_BITS + 32, api),
            (IPPROTO_TCP, 8443, ALLOW_KEY_FIXED_BITS + 32, api),
            (IPPROTO_UDP, 0, ALLOW_KEY_FIXED_BITS + 8, dns),
        ]
    );
    assert_eq!(scanner.rules_v6.len(), 2);
    assert!(scanner.rules_v6.iter().all(|r| r.prefix_len == ALLOW_KEY_FIXED_BITS + 32 && r.rule.endpoint_id == api));
    assert!(scanner.rules_v4.iter().all(|r| r.key.agent_id == scanner.id.to_be_bytes()));
    // The other generation keys the same rules by the flipped id.
    let g1 =
        compile_generation(&LoadedConfig::from_str(Path::new("t.toml"), TWO_ENDPOINTS.to_owned()).unwrap().config, 1)
            .unwrap();
    let flipped = (scanner.id ^ governor_common::RULE_GENERATION_BIT).to_be_bytes();
    assert!(g1.agents[0].rules_v4.iter().all(|r| r.key.agent_id == flipped));
    assert_eq!(g1.agents[0].rules_v4.len(), scanner.rules_v4.len());
    assert_eq!(scanner.rules_v4.iter().find(|r| r.rule.endpoint_id == api).unwrap().key.addr, [203, 0, 113, 10]);
}

#[test]
fn an_empty_allowlist_compiles_to_no_rules() {
    let p = compile_text(TWO_ENDPOINTS).unwrap();
    let idle = &p.agents[1];
    assert!(idle.rules_v4.is_empty() && idle.rules_v6.is_empty());
    assert_eq!(mode_code(idle.mode), governor_common::MODE_OBSERVE);
    assert_eq!(mode_code(p.agents[0].mode), governor_common::MODE_ENFORCE);
}

#[test]
fn ids_come_from_names() {
    let p = compile_text(TWO_ENDPOINTS).unwrap();
    assert_eq!(p.agents[0].id, name_id("scanner"));
    assert_eq!(p.endpoints.iter().map(|e| e.id).collect::<Vec<_>>(), vec![name_id("api"), name_id("intranet")]);
}

#[test]
fn overlapping_endpoints_for_one_agent_are_refused() {
    let text = r#"
[[endpoint]]
name = "a"
addresses = ["127.0.0.1"]
ports = [80]
[[endpoint]]
name = "b"
addresses = ["127.0.0.1"]
ports = [80, 81]
[[agent]]
name = "x"
endpoints = ["a", "b"]
"#;
    let e = compile_text(text).unwrap_err().to_string();
    assert!(e.contains("endpoints \"a\" and \"b\" both allow tcp 127.0.0.1/32 port 80"), "{e}");
    // Like every other config error, it names the file, line, column and key.
    let loaded = crate::config::LoadedConfig::from_str(std::path::Path::new("x.toml"), text.to_owned()).unwrap();
    let e = crate::cli::error_line(&loaded.compile().unwrap_err());
    assert!(e.starts_with("x.toml:12:19: agent[0].endpoints: agent \"x\": endpoints \"a\" and \"b\""), "{e}");
}

#[test]
fn overlap_across_agents_and_nested_prefixes_is_fine() {
    let text = r#"
[[endpoint]]
name = "wide"
addresses = ["10.0.0.0/8"]
[[endpoint]]
name = "narrow"
addresses = ["10.1.0.0/16"]
[[agent]]
name = "x"
endpoints = ["wide", "narrow"]
[[agent]]
name = "y"
endpoints = ["wide"]
"#;
    let p = compile_text(text).unwrap();
    assert_eq!(p.agents[0].rules_v4.len(), 4);
    assert_eq!(p.agents[1].rules_v4.len(), 2);
}

const HOST_POLICY: &str = r#"
[[endpoint]]
name = "wide"
hosts = ["*.example.com"]
ports = [443]
protocol = "tcp"

[[endpoint]]
name = "narrow"
hosts = ["api.example.com", "*.eu.example.com"]
addresses = ["192.0.2.1"]
ports = [443]
protocol = "tcp"

[[agent]]
name = "a1"
endpoints = ["wide", "narrow"]
"#;

#[test]
fn the_most_specific_host_pattern_wins() {
    let p = compile_text(HOST_POLICY).unwrap();
    let a = &p.agents[0];
    let ep = |name: &str| a.host_rule(name).map(|h| h.endpoint.as_str());
    assert_eq!(ep("api.example.com"), Some("narrow"));
    assert_eq!(ep("x.eu.example.com"), Some("narrow"));
    assert_eq!(ep("other.example.com"), Some("wide"));
    assert_eq!(ep("example.com"), None);
    assert_eq!(ep("example.org"), None);
}

#[test]
fn admitted_addresses_become_exact_entries_stamped_as_used() {
    let p = compile_text(HOST_POLICY).unwrap();
    let a = &p.agents[0];
    let h = a.host_rule("other.example.com").unwrap();
    let e = a.admission(h, "198.51.100.7".parse().unwrap(), 1234);
    assert_eq!(e.v4.len(), 1);
    assert!(e.v6.is_empty());
    let entry = e.v4[0];
    assert_eq!(entry.prefix_len, ALLOW_KEY_FIXED_BITS + 32);
    assert_eq!(entry.key, AllowKeyV4::new(a.rule_id, IPPROTO_TCP, 443, [198, 51, 100, 7]));
    assert_eq!((entry.rule.endpoint_id, entry.rule.last_use_s), (name_id("wide"), 1234));
    // 0 marks configured rules, so an admission is never stamped 0.
    assert_eq!(a.admission(h, "198.51.100.7".parse().unwrap(), 0).v4[0].rule.last_use_s, 1);
}

#[test]
fn one_host_pattern_in_two_endpoints_of_an_agent_is_refused() {
    let text = HOST_POLICY.replace("\"api.example.com\"", "\"*.example.com\"");
    let e = compile_text(&text).unwrap_err();
    assert!(matches!(e, PolicyError::HostOverlap { .. }), "{e}");
    assert!(e.to_string().contains("*.example.com"), "{e}");
}

#[test]
fn endpoint_limits_go_to_every_agent_that_uses_the_endpoint() {
    let text = HOST_POLICY.replace(
        "name = \"wide\"",
        "name = \"wide\"\nlimits = { connections_per_minute = 60, burst = 3, max_concurrent = 4 }",
    ) + "[[agent]]\nname = \"a2\"\nendpoints = [\"wide\"]\n[[agent]]\nname = \"a3\"\nendpoints = [\"narrow\"]\n";
    let p = compile_text(&text).unwrap();
    let l = p.endpoint_limits();
    let agents: Vec<u32> = l.iter().map(|(k, _)| k.agent_id).collect();
    assert_eq!(agents, vec![name_id("a1"), name_id("a2")], "a3 does not use `wide`");
    let (key, v) = l[0];
    assert_eq!(key.endpoint_id, name_id("wide"));
    assert_eq!((v.rate_interval_ns, v.rate_tolerance_ns, v.max_concurrent), (1_000_000_000, 2_000_000_000, 4));
}
