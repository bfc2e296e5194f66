//! Property tests over the config parser and policy compiler: hostile or broken input never
//! panics, and every rejection is an error that names the file and line.

use std::path::Path;

use proptest::prelude::*;

use super::{LoadedConfig, tests::GOOD};

fn check(text: &str) {
    match LoadedConfig::from_str(Path::new("fuzz.toml"), text.to_owned()) {
        Ok(loaded) => {
            // A valid config compiles or is refused with a typed error: never a panic.
            let _ = crate::policy::compile(&loaded.config);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz.toml:"), "an error without its place: {msg}");
        }
    }
}

proptest! {
    // Seconds in CI; `cargo xtask fuzz` raises PROPTEST_CASES for longer runs.
    #![proptest_config(ProptestConfig { cases: super::fuzz_cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn mutated_good_configs_never_panic(edits in proptest::collection::vec((0usize..2000, any::<char>(), 0u8..3), 1..8)) {
        let mut chars: Vec<char> = GOOD.chars().collect();
        for (at, c, op) in edits {
            let i = at % (chars.len() + 1);
            match op {
                0 if i < chars.len() => chars[i] = c,
                1 if i < chars.len() => { chars.remove(i); }
                _ => chars.insert(i, c),
            }
        }
        check(&chars.into_iter().collect::<String>());
    }

    #[test]
    fn hostile_values_in_every_field_never_panic(v in "[-0-9a-z./:*\\[\\]\"{} ]{0,40}") {
        for field in ["limit", "window", "addresses", "ports", "thresholds", "price"] {
            let text = match field {
                "limit" => GOOD.replace("mode = \"enforce\"", &format!("mode = \"enforce\"\nbudget = {{ limit = {v} }}")),
                "window" => GOOD.replace("mode = \"enforce\"", &format!("mode = \"enforce\"\nbudget = {{ limit = \"1\", window = {v} }}")),
                "addresses" => GOOD.replace("\"203.0.113.10\"", &v),
                "ports" => GOOD.replace("ports = [443, 8443]", &format!("ports = [{v}]")),
                "thresholds" => GOOD.replace("mode = \"enforce\"", &format!("mode = \"enforce\"\nthresholds = [{v}]")),
                _ => GOOD.replace("protocol = \"tcp\"", &format!("protocol = \"tcp\"\nprice = {{ mib_sent = {v} }}")),
            };
            check(&text);
        }
    }
}
