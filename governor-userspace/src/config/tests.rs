use std::path::Path;

use super::*;

fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
    LoadedConfig::from_str(Path::new("test.toml"), text.to_owned())
}

/// The error message, which must name the file, the line and the key.
fn error(text: &str) -> String {
    load(text).expect_err("config should be refused").to_string()
}

pub(super) const GOOD: &str = r#"
[daemon]
agents_root = "governor.agents"
socket = "/run/governor/governor.sock"
metrics = "127.0.0.1:9477"

[[endpoint]]
name = "llm-api"
addresses = ["203.0.113.10", "2001:db8::/32", "127.0.0.1"]
ports = [443, 8443]
protocol = "tcp"

[[agent]]
name = "scanner"
cgroup = "scanner"
endpoints = ["llm-api"]
mode = "enforce"
"#;

#[test]
fn the_issue_example_loads() {
    let c = load(GOOD).unwrap().config;
    assert_eq!(c.endpoints[0].protocol, Protocol::Tcp);
    assert_eq!(c.agents[0].mode, Mode::Enforce);
    assert_eq!(c.agents[0].cgroup_name(), "scanner");
}

#[test]
fn the_embedded_default_is_a_sandbox() {
    let c = LoadedConfig::default_config().config;
    assert!(c.agents.is_empty() && c.endpoints.is_empty());
    assert_eq!(c.daemon.unlisted_agents, UnlistedAgents::Enforce);
    assert_eq!(c.daemon.agents_root.get_ref(), "governor.agents");
    assert_eq!(c.daemon.metrics.get_ref(), "127.0.0.1:9477");
}

#[test]
fn shipped_examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            LoadedConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen > 0, "no examples found in {}", dir.display());
}

#[test]
fn defaults_fill_omitted_keys() {
    let c = load("[[agent]]\nname = \"a\"\n").unwrap().config;
    assert_eq!(c.agents[0].mode, Mode::Enforce, "an agent named in config enforces unless told otherwise");
    assert_eq!(c.agents[0].cgroup_name(), "a");
    assert!(c.agents[0].endpoints.is_empty());
}

#[test]
fn syntax_errors_name_file_and_line() {
    let e = error("[daemon]\nagents_root = \"x\"\nsocket = \n");
    assert!(e.starts_with("test.toml:3:"), "{e}");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let e = error("[daemon]\nagents_root = \"x\"\nsokcet = \"/run/x.sock\"\n");
    assert!(e.starts_with("test.toml:3:1: sokcet:"), "{e}");
    assert!(e.contains("unknown field `sokcet`"), "{e}");

    let e = error("[[agent]]\nname = \"a\"\nendpoint = [\"x\"]\n");
    assert!(e.starts_with("test.toml:3:"), "{e}");
}

#[test]
fn unknown_endpoint_names_the_agent_key_and_line() {
    let text = GOOD.replace("endpoints = [\"llm-api\"]", "endpoints = [\"llm-api\", \"search\"]");
    let e = error(&text);
    let line = text.lines().position(|l| l.contains("\"search\"")).unwrap() + 1;
    assert!(e.starts_with(&format!("test.toml:{line}:")), "{e}");
    assert!(e.contains("agent[0].endpoints: unknown endpoint \"search\" (defined: llm-api)"), "{e}");
}

#[test]
fn bad_addresses_are_refused() {
    for (bad, needle) in [
        ("10.0.0.1/8", "host bits set; did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "prefix length must be a number from 0 to 32"),
        ("2001:db8::/129", "from 0 to 128"),
        ("example.com", "is not an IP address"),
        ("300.1.1.1", "is not an IP address"),
    ] {
        let text = GOOD.replace("\"203.0.113.10\"", &format!("{bad:?}"));
        let e = error(&text);
        assert!(e.contains("endpoint[0].addresses") && e.contains(needle), "{bad}: {e}");
        assert!(e.starts_with("test.toml:9:"), "{bad}: {e}");
    }
    let e = error(&GOOD.replace("addresses = [\"203.0.113.10\", \"2001:db8::/32\", \"127.0.0.1\"]", "addresses = []"));
    assert!(e.contains("at least one address"), "{e}");
}

#[test]
fn duplicates_are_refused() {
    let text = format!("{GOOD}\n[[agent]]\nname = \"scanner\"\ncgroup = \"other\"\n");
    let e = error(&text);
    assert!(e.contains("agent[1].name: duplicate agent name \"scanner\""), "{e}");
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.iter().rposition(|l| *l == "name = \"scanner\"").unwrap() + 1;
    assert!(e.starts_with(&format!("test.toml:{line}:8:")), "{e}");

    let text = format!("{GOOD}\n[[agent]]\nname = \"b\"\ncgroup = \"scanner\"\n");
    assert!(error(&text).contains("agent[1].cgroup: cgroup \"scanner\" is already agent[0]'s"));

    let text = format!("{GOOD}\n[[endpoint]]\nname = \"llm-api\"\naddresses = [\"10.0.0.0/8\"]\n");
    assert!(error(&text).contains("duplicate endpoint name"));
}

#[test]
fn bad_values_are_refused() {
    let cases = [
        (GOOD.replace("protocol = \"tcp\"", "protocol = \"sctp\""), "unknown variant `sctp`"),
        (GOOD.replace("mode = \"enforce\"", "mode = \"strict\""), "unknown variant `strict`"),
        (GOOD.replace("ports = [443, 8443]", "ports = [0]"), "0 is not a port"),
        (GOOD.replace("ports = [443, 8443]", "ports = [70000]"), "70000 is not a port"),
        (GOOD.replace("ports = [443, 8443]", "ports = [-1]"), "-1 is not a port"),
        (GOOD.replace("mode = \"enforce\"", "mode = \"enforce\"\ninbound = [0]"), "agent[0].inbound: 0 is not a port"),
        (GOOD.replace("cgroup = \"scanner\"", "cgroup = \"a/b\""), "one directory directly under agents_root"),
        (GOOD.replace("cgroup = \"scanner\"", "cgroup = \"..\""), "agent[0].cgroup"),
        (
            GOOD.replace("agents_root = \"governor.agents\"", "agents_root = \"/sys/fs/cgroup\""),
            "must be a relative path",
        ),
        (GOOD.replace("agents_root = \"governor.agents\"", "agents_root = \"a/../b\""), "must be a relative path"),
        (GOOD.replace("metrics = \"127.0.0.1:9477\"", "metrics = \"localhost\""), "daemon.metrics"),
        (GOOD.replace("socket = \"/run/governor/governor.sock\"", "socket = \"gov.sock\""), "must be an absolute path"),
        (GOOD.replace("name = \"scanner\"", "name = \"\""), "must be 1 to 64 characters"),
        (GOOD.replace("name = \"scanner\"", "name = \"scan ner\""), "may only use letters"),
    ];
    for (text, needle) in cases {
        let e = error(&text);
        assert!(e.contains(needle), "expected {needle:?} in {e}");
        assert!(e.starts_with("test.toml:"), "{e}");
    }
}

#[test]
fn unreadable_file_says_which() {
    let e = LoadedConfig::from_file(Path::new("/nonexistent/governor.toml")).unwrap_err().to_string();
    assert!(e.contains("cannot read config file /nonexistent/governor.toml"), "{e}");
}

#[test]
fn checksum_is_of_the_text() {
    let a = load(GOOD).unwrap();
    let b = load(&format!("{GOOD}\n# comment\n")).unwrap();
    assert_eq!(a.sha256().len(), 64);
    assert_ne!(a.sha256(), b.sha256());
}

#[test]
fn spend_settings_load() {
    let text = GOOD.replace(
        "mode = \"enforce\"",
        "mode = \"enforce\"\nbudget = { limit = \"25.00\", window = \"rolling:30m\" }\nthresholds = [25, 50, 100]\non_exhausted = \"alert\"",
    ) + "[host]\nbudget = { limit = \"1000\", window = \"month\" }\n[notify]\nurl = \"http://127.0.0.1:9000/hook\"\ncommand = [\"/usr/local/bin/page\"]\n";
    let text = text.replace(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\nprice = { connection = \"0.0004\", mib_sent = \"0.50\", mib_received = \"2.00\" }",
    );
    let c = load(&text).unwrap().config;
    assert_eq!(c.agents[0].on_exhausted, OnExhausted::Alert);
    assert_eq!(c.agents[0].budget.as_ref().unwrap().get_ref().window.get_ref(), "rolling:30m");
    assert!(c.host.budget.is_some());
}

#[test]
fn bad_budget_values_are_refused_with_a_clear_error() {
    let with_budget = |b: &str| GOOD.replace("mode = \"enforce\"", &format!("mode = \"enforce\"\n{b}"));
    let cases = [
        (with_budget("budget = { limit = \"-5.00\" }"), "agent[0].budget.limit: \"-5.00\" is negative"),
        (with_budget("budget = { limit = \"lots\" }"), "agent[0].budget.limit: \"lots\" is not a decimal amount"),
        (with_budget("budget = { limit = \"10000001\" }"), "above the largest accepted amount"),
        (
            with_budget("budget = { limit = \"5\", window = \"weekly\" }"),
            "agent[0].budget.window: unknown window \"weekly\"",
        ),
        (with_budget("budget = { limit = \"5\", window = \"rolling:0s\" }"), "must be at least 1s"),
        (with_budget("budget = { limit = 5 }"), "invalid type: integer `5`, expected a string"),
        (with_budget("budget = { limit = \"5\", windw = \"day\" }"), "unknown field `windw`"),
        (
            with_budget("thresholds = [50, 120]"),
            "agent[0].thresholds: 120 is not a percentage of the budget (1 to 100)",
        ),
        (with_budget("thresholds = [0]"), "0 is not a percentage"),
        (with_budget("thresholds = [50, 50]"), "50 is listed twice"),
        (with_budget("on_exhausted = \"panic\""), "unknown variant `panic`"),
        (
            GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nprice = { mib_sent = \"-1\" }"),
            "endpoint[0].price.mib_sent: \"-1\" is negative",
        ),
        (
            GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nprice = { connection = \"x\" }"),
            "endpoint[0].price.connection",
        ),
        (
            GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nprice = { mib_sent = \"5000\" }"),
            "above the largest accepted amount, 1000.000000",
        ),
        (
            GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nprice = { per_request = \"1\" }"),
            "unknown field `per_request`",
        ),
        (format!("{GOOD}[host]\nbudget = {{ limit = \"1\", window = \"fortnight\" }}\n"), "host.budget.window"),
        (format!("{GOOD}[host]\nthresholds = [101]\n"), "host.thresholds: 101"),
        (format!("{GOOD}[notify]\nurl = \"https://hooks.example/x\"\n"), "https is not supported here"),
        (format!("{GOOD}[notify]\nurl = \"ftp://x\"\n"), "is not an http:// URL"),
        (format!("{GOOD}[notify]\ncommand = []\n"), "notify.command: must name a program"),
        (format!("{GOOD}[notify]\nattempts = 0\n"), "notify.attempts: must be from 1 to 20"),
        (format!("{GOOD}[notify]\ntimeout = \"soon\"\n"), "notify.timeout"),
        (GOOD.replace("[daemon]", "[daemon]\ncurrency = \"US dollars\""), "daemon.currency"),
        (
            GOOD.replace("[daemon]", "[daemon]\nstate_dir = \"state\""),
            "daemon.state_dir: \"state\" must be an absolute path",
        ),
    ];
    for (text, needle) in cases {
        let e = error(&text);
        assert!(e.contains(needle), "expected {needle:?} in {e}");
        assert!(e.starts_with("test.toml:"), "{e}");
    }
}

#[test]
fn no_budget_and_a_zero_budget_are_different() {
    let none = load(GOOD).unwrap().config;
    assert!(none.agents[0].budget.is_none());
    let zero =
        load(&GOOD.replace("mode = \"enforce\"", "mode = \"enforce\"\nbudget = { limit = \"0\" }")).unwrap().config;
    assert_eq!(zero.agents[0].budget.as_ref().unwrap().get_ref().limit.get_ref(), "0");
}

#[test]
fn limits_load_and_bad_limits_are_refused() {
    let with = |l: &str| GOOD.replace("mode = \"enforce\"", &format!("mode = \"enforce\"\nlimits = {l}"));
    let c = load(&with("{ connections_per_minute = 600, burst = 50, max_concurrent = 32 }")).unwrap().config;
    assert!(c.agents[0].limits.is_some());
    for (l, needle) in [
        ("{ connections_per_minute = 0 }", "agent[0].limits.connections_per_minute: 0 must be from 1"),
        ("{ connections_per_minute = -5 }", "-5 must be from 1"),
        ("{ max_concurrent = 0 }", "agent[0].limits.max_concurrent: 0 must be from 1"),
        ("{ burst = 5 }", "burst needs connections_per_minute"),
        ("{ connections_per_minute = 10, per_second = 1 }", "unknown field `per_second`"),
        ("{ connections_per_minute = \"10\" }", "invalid type: string"),
    ] {
        let e = error(&with(l));
        assert!(e.contains(needle), "expected {needle:?} in {e}");
    }
}

const HOSTS: &str = r#"
[[endpoint]]
name = "llm"
hosts = ["api.openai.com", "*.anthropic.com"]
ports = [443]

[[agent]]
name = "a1"
endpoints = ["llm"]

[dns]
resolvers = ["127.0.0.53", "2001:db8::53"]
min_ttl = "30s"
grace = "10m"
"#;

#[test]
fn host_names_and_dns_settings_load() {
    let c = load(HOSTS).unwrap().config;
    assert_eq!(c.endpoints[0].hosts.len(), 2);
    assert!(c.endpoints[0].addresses.get_ref().is_empty());
    assert_eq!(c.dns.resolvers.as_ref().unwrap().get_ref().len(), 2);
    assert_eq!(c.dns.grace.get_ref(), "10m");
    // Defaults: resolvers from /etc/resolv.conf, a free proxy port.
    let d = load(GOOD).unwrap().config.dns;
    assert!(d.resolvers.is_none());
    assert_eq!(*d.proxy_port.get_ref(), 0);
}

#[test]
fn bad_host_names_and_dns_settings_are_refused_by_key() {
    for (bad, key, says) in [
        (HOSTS.replace("*.anthropic.com", "*anthropic.com"), "endpoint[0].hosts", "whole first label"),
        (HOSTS.replace("*.anthropic.com", "ex*.com"), "endpoint[0].hosts", "whole first label"),
        (HOSTS.replace("*.anthropic.com", "*"), "endpoint[0].hosts", "every name"),
        (HOSTS.replace("api.openai.com", "api..openai.com"), "endpoint[0].hosts", "empty label"),
        (HOSTS.replace("api.openai.com", "203.0.113.7"), "endpoint[0].hosts", "addresses"),
        (HOSTS.replace("\"127.0.0.53\"", "\"resolver.local\""), "dns.resolvers", "not an IP address"),
        (
            HOSTS.replace("resolvers = [\"127.0.0.53\", \"2001:db8::53\"]", "resolvers = []"),
            "dns.resolvers",
            "at least one",
        ),
        (HOSTS.replace("grace = \"10m\"", "grace = \"soon\""), "dns.grace", "duration"),
        (format!("{HOSTS}proxy_port = 70000\n"), "dns.proxy_port", "65535"),
        (format!("{HOSTS}max_names = 0\n"), "dns.max_names", "from 1"),
        (
            HOSTS.replace("name = \"llm\"", "name = \"dns\"").replace("[\"llm\"]", "[\"dns\"]"),
            "endpoint[0].name",
            "reserved",
        ),
        (
            HOSTS.replace("hosts = [\"api.openai.com\", \"*.anthropic.com\"]", ""),
            "endpoint[0].addresses",
            "or a host name in hosts",
        ),
    ] {
        let e = error(&bad);
        assert!(e.contains(key) && e.contains(says), "expected {key}: {says}, got: {e}");
    }
}

#[test]
fn endpoint_limits_are_validated_like_agent_limits() {
    let ok =
        HOSTS.replace("ports = [443]", "ports = [443]\nlimits = { connections_per_minute = 60, max_concurrent = 4 }");
    assert!(load(&ok).is_ok());
    let e = error(&HOSTS.replace("ports = [443]", "ports = [443]\nlimits = { max_concurrent = 0 }"));
    assert!(e.contains("endpoint[0].limits.max_concurrent") && e.contains("from 1"), "{e}");
    let e = error(&HOSTS.replace("ports = [443]", "ports = [443]\nlimits = { burst = 5 }"));
    assert!(e.contains("endpoint[0].limits.burst"), "{e}");
}
