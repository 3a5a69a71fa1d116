//! The README's relay section is the relay's contract: its table lists every option.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeSet, process::Command};

fn relay_section() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("\n## Transactional publishing").expect("README has the relay section");
    let end = readme[start + 1..].find("\n## ").map_or(readme.len(), |i| start + 1 + i);
    readme[start..end].to_owned()
}

fn env_vars(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ROOMCAST_") && w.len() > "ROOMCAST_".len())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_relay_table_matches_help() {
    let help = Command::new(env!("CARGO_BIN_EXE_roomcast-relay")).arg("--help").output().unwrap();
    let help = env_vars(&String::from_utf8_lossy(&help.stdout));
    let section = relay_section();
    let table: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `ROOMCAST_"))
        .filter_map(|l| l.split('`').next())
        .map(|v| format!("ROOMCAST_{v}"))
        .collect();
    assert_eq!(table, help, "README relay table vs roomcast-relay --help");
    let unknown: Vec<_> = env_vars(&section).difference(&help).cloned().collect();
    assert!(unknown.is_empty(), "the relay section mentions unknown variables {unknown:?}");
}

#[test]
fn the_readme_migration_is_the_shipped_one() {
    let section = relay_section();
    assert!(section.contains("relay/migrations/0001_roomcast_outbox.sql"));
    assert!(roomcast_relay::outbox::MIGRATION.contains("CREATE OR REPLACE FUNCTION roomcast_publish("));
}

#[test]
fn a_bad_option_exits_2_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-relay"))
        .env_clear()
        .env("ROOMCAST_RELAY_DATABASE_URL", "postgres://localhost/db")
        .env("ROOMCAST_REDIS_URL", "redis://localhost")
        .env("ROOMCAST_RELAY_BATCH_SIZE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ROOMCAST_RELAY_BATCH_SIZE"));
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-relay")).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing database URL is a usage error");
}
