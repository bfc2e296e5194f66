//! Host name patterns for `hosts = [...]` and the grammar they follow.
//!
//! - `api.example.com` matches that name only.
//! - `*.example.com` matches every name *below* `example.com`, at any depth (`a.example.com`
//!   and `a.b.example.com`), never `example.com` itself and never `notexample.com`.
//! - `*` must be the whole first label: `*example.com`, `ex*.com`, `a.*.com` and a bare `*`
//!   are refused. Names are compared case-insensitively, without a trailing dot.

use std::{fmt, str::FromStr};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// One name, lowercase, no trailing dot.
    Exact(String),
    /// Names below this suffix (lowercase, no leading dot).
    Below(String),
}

impl HostPattern {
    pub fn matches(&self, name: &str) -> bool {
        let name = normalize(name);
        match self {
            HostPattern::Exact(n) => name == *n,
            HostPattern::Below(suffix) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
        }
    }

    /// Larger is more specific: an exact name beats any wildcard, a longer suffix a shorter one.
    pub fn specificity(&self) -> usize {
        match self {
            HostPattern::Exact(n) => usize::MAX / 2 + n.len(),
            HostPattern::Below(s) => s.len(),
        }
    }

    /// The name to resolve at start and on refresh (wildcards cannot be resolved).
    pub fn exact(&self) -> Option<&str> {
        match self {
            HostPattern::Exact(n) => Some(n),
            HostPattern::Below(_) => None,
        }
    }
}

/// Lowercase, without the root's trailing dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Below(s) => write!(f, "*.{s}"),
        }
    }
}

/// Checks a host name (no wildcard) and returns it normalized.
pub fn check_name(text: &str) -> Result<String, String> {
    let name = normalize(text);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{text:?} is not a host name (1 to 253 characters)"));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{text:?} is an address: list it under addresses, not hosts"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{text:?} has an empty label or one longer than 63 characters"));
        }
        if label.contains('*') {
            return Err(format!(
                "{text:?}: a wildcard must be the whole first label, as in \"*.example.com\" (partial labels such as \"*example.com\" or \"ex*.com\" are not supported)"
            ));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!(
                "{text:?}: labels may only use letters, digits, '-' and '_' (write internationalized names in their xn-- form)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{text:?}: a label may not start or end with '-'"));
        }
    }
    Ok(name)
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.strip_prefix("*.") {
            Some("") => Err(format!("{text:?} names no domain: write \"*.example.com\"")),
            Some(rest) => Ok(HostPattern::Below(check_name(rest)?)),
            None if text == "*" => {
                Err("\"*\" would allow every name: list the names (or \"*.domain\" patterns) the agent needs"
                    .to_owned())
            }
            None => Ok(HostPattern::Exact(check_name(text)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        s.parse().unwrap()
    }

    #[test]
    fn wildcards_match_any_depth_below_the_domain_only() {
        let w = p("*.example.com");
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(w.matches("A.Example.COM."));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("notexample.com"));
        assert!(!w.matches("a.notexample.com"));
        assert!(!w.matches("example.com.evil.net"));
    }

    #[test]
    fn exact_names_match_themselves_case_insensitively() {
        let e = p("API.OpenAI.com.");
        assert_eq!(e, HostPattern::Exact("api.openai.com".into()));
        assert!(e.matches("api.openai.com"));
        assert!(!e.matches("x.api.openai.com"));
        assert!(!e.matches("openai.com"));
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        for (bad, says) in [
            ("*example.com", "whole first label"),
            ("ex*.com", "whole first label"),
            ("a.*.com", "whole first label"),
            ("*", "every name"),
            ("*.", "names no domain"),
            ("", "not a host name"),
            ("a..com", "empty label"),
            ("-a.com", "start or end"),
            ("a b.com", "letters, digits"),
            ("203.0.113.7", "addresses"),
        ] {
            let err = bad.parse::<HostPattern>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(format!("{}.com", "a".repeat(64)).parse::<HostPattern>().is_err());
    }

    #[test]
    fn exact_beats_wildcard_and_longer_suffix_beats_shorter() {
        assert!(p("api.example.com").specificity() > p("*.api.example.com").specificity());
        assert!(p("*.api.example.com").specificity() > p("*.example.com").specificity());
    }
}
