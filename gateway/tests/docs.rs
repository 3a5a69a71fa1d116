//! The README is part of the contract: it lists every error code and every option.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeSet, process::Command};

use roomcast_gateway::errors::ErrorCode;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

#[test]
fn every_error_code_is_in_the_readme_table() {
    let readme = readme();
    for code in ErrorCode::ALL {
        assert!(readme.contains(&format!("| `{}` |", code.as_str())), "README's error table lacks {code}");
    }
}

/// The README without its relay section (`roomcast-relay`'s options, checked by relay/tests/docs.rs).
fn gateway_readme() -> String {
    let readme = readme();
    let start = readme.find(RELAY_SECTION).expect("README has the relay section");
    let end = readme[start + 1..].find("\n## ").map_or(readme.len(), |i| start + 1 + i);
    format!("{}{}", &readme[..start], &readme[end..])
}

const RELAY_SECTION: &str = "\n## Transactional publishing";

fn env_vars(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ROOMCAST_") && w.len() > "ROOMCAST_".len())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_configuration_table_matches_help() {
    let help = Command::new(env!("CARGO_BIN_EXE_roomcast-gateway")).arg("--help").output().unwrap();
    let help = env_vars(&String::from_utf8_lossy(&help.stdout));
    let readme = gateway_readme();
    let table: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `ROOMCAST_"))
        .filter_map(|l| l.split('`').next())
        .map(|v| format!("ROOMCAST_{v}"))
        .collect();
    assert_eq!(table, help, "README configuration table vs --help");
    // Variables mentioned anywhere in the README must exist.
    let unknown: Vec<_> = env_vars(&readme).difference(&help).cloned().collect();
    assert!(unknown.is_empty(), "README mentions unknown variables {unknown:?}");
}
