//! Test-only: proptest strategies shared by the property tests of the modules that parse what
//! clients, publishers and operators send. `PROPTEST_CASES=100000 cargo test -p roomcast-gateway
//! prop_` runs them long; CI runs the default (256 cases each, seconds).

use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, nested a few levels, with the keys our payloads use mixed in so that
/// near-valid payloads are common.
pub fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("project".to_owned()),
        Just("channel".to_owned()),
        Just("since".to_owned()),
        Just("offset".to_owned()),
        Just("epoch".to_owned()),
        Just("limit".to_owned()),
        Just("status".to_owned()),
        Just("typing".to_owned()),
        Just("token".to_owned()),
        "\\PC{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::from),
        Just(Value::from("away")),
        Just(Value::from("p1")),
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
