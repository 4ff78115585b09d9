//! The code map is true: the crate edges `ARCHITECTURE.md` lists are exactly the edges
//! `cargo metadata` reports, and the layering rules hold (the pure core depends on nothing
//! async, the storage crate knows no workflows, only `weft-proto` knows protobuf).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

type Edges = BTreeMap<String, BTreeSet<String>>;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().and_then(Path::parent).expect("crates/weft is two levels down")
}

/// Normal and build dependencies of every workspace package (dev-dependencies are tests'
/// business), as package name to dependency names.
fn metadata_dependencies() -> (Edges, BTreeSet<String>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().expect("name").to_string()).collect();
    let mut all = Edges::new();
    for package in packages {
        let name = package["name"].as_str().expect("name").to_string();
        let deps = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .map(|d| d["name"].as_str().expect("dependency name").to_string())
            .collect();
        all.insert(name, deps);
    }
    (all, names)
}

/// The "Crate edges" table of ARCHITECTURE.md: `| `crate` | `dep`, `dep` |`.
fn documented_edges() -> Edges {
    let map = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = map.split("## Crate edges").nth(1).expect("a \"Crate edges\" section");
    let mut edges = Edges::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 2 || !cells[0].starts_with('`') {
            continue; // the header and its rule
        }
        let deps = cells[1]
            .split(',')
            .map(|d| d.trim().trim_matches('`').to_string())
            .filter(|d| !d.is_empty() && d != "none")
            .collect();
        edges.insert(cells[0].trim_matches('`').to_string(), deps);
    }
    edges
}

#[test]
fn the_code_map_lists_exactly_the_crate_edges_cargo_reports() {
    let (all, workspace) = metadata_dependencies();
    let actual: Edges = all
        .iter()
        .map(|(name, deps)| (name.clone(), deps.iter().filter(|d| workspace.contains(*d)).cloned().collect()))
        .collect();
    assert_eq!(documented_edges(), actual, "ARCHITECTURE.md's crate edges against `cargo metadata`");
}

#[test]
fn the_layers_keep_their_rules() {
    let (all, _) = metadata_dependencies();
    let forbidden: &[(&str, &[&str])] = &[
        // The pure core: no async, no storage, no wire format, no Raft.
        ("weft-core", &["tokio", "rocksdb", "prost", "tonic", "openraft", "weft-storage", "weft-raft", "weft-server"]),
        // Storage knows bytes and keys, not workflows.
        ("weft-storage", &["weft-core", "weft-proto", "openraft", "tonic"]),
        // Raft carries opaque payloads; it knows neither workflows nor protobuf.
        ("weft-raft", &["weft-core", "weft-proto", "prost", "tonic", "weft-server"]),
        // The SDK talks to the server only over gRPC.
        ("weft-sdk", &["weft-core", "weft-storage", "weft-raft", "weft-server", "rocksdb"]),
        // Only weft-proto knows protobuf.
        ("weft-server", &["prost"]),
        ("weft", &["prost", "weft-core", "rocksdb"]),
        // The end-to-end harness reaches nodes only as processes, over the wire.
        ("weft-e2e", &["weft-core", "weft-storage", "weft-raft", "weft-server", "rocksdb"]),
    ];
    for (package, banned) in forbidden {
        let deps = all.get(*package).unwrap_or_else(|| panic!("package {package} exists"));
        for dep in *banned {
            assert!(!deps.contains(*dep), "{package} must not depend on {dep} (see ARCHITECTURE.md)");
        }
    }
}
