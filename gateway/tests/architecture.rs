//! The module graph of the gateway: dependencies point one way (see ARCHITECTURE.md).
//!
//! Every module is placed in a layer; a module may name modules of its own layer or below,
//! never above, and no modules form an import cycle. A new module must be given a layer here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The layers, bottom up.
const LAYERS: &[(&str, &[&str])] = &[
    // What everything may use: configuration, error codes, metrics, the per-socket record,
    // token checks, timers, and what the storage traits and Redis adapters share.
    (
        "foundation",
        &[
            "api_keys",
            "auth",
            "backend",
            "config",
            "conn",
            "envelope",
            "errors",
            "jwks",
            "limits",
            "logging",
            "metrics",
            "observers",
            "redis_conn",
            "revocations",
            "timers",
        ],
    ),
    // Adapters at the storage edge: the bus and history (memory and Redis), the lifecycle
    // event log and its sinks, and the backend that client RPCs are forwarded to.
    ("adapters", &["bus", "connect_proxy", "events", "history", "rpc"]),
    // The domain core: membership, sequencing and recovery, presence, typing, local delivery.
    // It knows no client event or payload.
    ("core", &["delivery", "local", "presence", "recovery", "rooms", "typing"]),
    // The edges: Socket.IO handlers, the HTTP APIs, token expiry, shutdown, and the state
    // handle they share.
    (
        "edge",
        &[
            "console",
            "control_api",
            "expiry",
            "history_api",
            "http",
            "occupancy_api",
            "publish",
            "shutdown",
            "socket",
            "state",
        ],
    ),
];

/// `text` without its `#[cfg(test)]` items (each up to its `;` or its matching `}`), wherever
/// they are: code after a nested test item is still checked.
fn without_test_items(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(open), semi) if semi.is_none_or(|semi| open < semi) => {
                let mut depth = 0usize;
                item[open..].char_indices().find_map(|(i, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(open + i + 1)
                })
            }
            (_, Some(semi)) => Some(semi + 1),
            _ => None,
        };
        // Unbalanced (a brace in a string): drop the rest, as a plain split would.
        let Some(end) = end else { return out };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn test_items_are_cut_out_wherever_they_are() {
    let text = "use crate::a;\n#[cfg(test)]\nfn t() { crate::b::x(); { } }\nfn f() { crate::c::y() }\n#[cfg(test)]\nuse crate::d;\n";
    let code = without_test_items(text);
    assert!(code.contains("crate::a") && code.contains("crate::c"), "{code}");
    assert!(!code.contains("crate::b") && !code.contains("crate::d"), "{code}");
}

/// Top-level module → the top-level modules its non-test code names with `crate::`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let rel = path.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let Some(rel) = rel.strip_suffix(".rs") else { continue };
        // `prop` is test-only (proptest strategies), and `fuzzing` the fuzz targets' entry
        // points (built only with the `fuzzing` feature): neither is part of the gateway.
        if rel == "lib" || rel == "main" || rel == "prop" || rel == "fuzzing" {
            continue;
        }
        let module = rel.split('/').next().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let code = &without_test_items(&text);
        let deps = graph.entry(module.clone()).or_default();
        // `crate::a::b` and `use crate::{a::X, b, c::{..}}`.
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut start = 0;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            deps.extend(head(&group[start..j]));
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            deps.extend(head(&group[start..j]));
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
            } else {
                deps.extend(head(rest));
            }
        }
        deps.remove(&module);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// The module a path starts with (`a::b::C` → `a`).
fn head(path: &str) -> Option<String> {
    let name: String = path.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

/// Modules that can reach themselves.
fn in_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    graph
        .keys()
        .filter(|start| {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&String> = graph[*start].iter().collect();
            while let Some(m) = stack.pop() {
                if m == *start {
                    return true;
                }
                if seen.insert(m) {
                    stack.extend(graph.get(m).into_iter().flatten());
                }
            }
            false
        })
        .cloned()
        .collect()
}

#[test]
fn no_import_cycle() {
    let graph = module_graph();
    assert!(graph.len() >= 20, "modules found: {:?}", graph.keys());
    let cycle = in_cycles(&graph);
    assert!(cycle.is_empty(), "modules in an import cycle: {cycle:?}\ngraph: {graph:#?}");
}

#[test]
fn dependencies_point_down_the_layers() {
    let graph = module_graph();
    let layer_of = |module: &str| LAYERS.iter().position(|(_, modules)| modules.contains(&module));
    let mut unplaced = Vec::new();
    let mut upward = Vec::new();
    for (module, deps) in &graph {
        let Some(own) = layer_of(module) else {
            unplaced.push(module.clone());
            continue;
        };
        for dep in deps {
            if let Some(layer) = layer_of(dep).filter(|layer| *layer > own) {
                upward.push(format!("{module} ({}) -> {dep} ({})", LAYERS[own].0, LAYERS[layer].0));
            }
        }
    }
    assert!(unplaced.is_empty(), "modules with no layer in LAYERS: {unplaced:?}");
    assert!(upward.is_empty(), "dependencies pointing up: {upward:#?}");
    for (_, modules) in LAYERS {
        for module in *modules {
            assert!(graph.contains_key(*module), "LAYERS names {module}, which no longer exists");
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec!["a"]), ("e", vec![])]
            .into_iter()
            .map(|(m, deps)| (m.to_owned(), deps.into_iter().map(str::to_owned).collect()))
            .collect();
    assert_eq!(in_cycles(&graph), ["a", "b", "c"].into_iter().map(str::to_owned).collect());
}
