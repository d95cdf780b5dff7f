//! The module map stays a layering: no import cycle between the crate's
//! top-level modules (outside unit tests), and only the server reaches the
//! trigger. Read from the sources, so a new `use crate::…` that closes a
//! cycle fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Who imports whom: module -> imported module -> files that do.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source a build outside tests compiles: the unit-test module (always
/// last in a file) and comments left out.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::<name>` in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            // `crate::{a, b::c}`: each name at the top of the braces.
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let head = item.trim().split("::").next().unwrap_or("").trim();
                    if !head.is_empty() {
                        found.insert(head.to_owned());
                    }
                }
            }
        } else {
            found.insert(name);
        }
    }
    found
}

fn module_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .filter(|name| name != "lib" && name != "main")
        .collect();
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative.iter().next().unwrap().to_str().unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top).to_owned();
        if !modules.contains(&top) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let imports = graph.entry(top.clone()).or_default();
        for name in crate_paths(&code) {
            if name != top && modules.contains(&name) {
                let files = imports.entry(name).or_default();
                files.insert(relative.display().to_string());
            }
        }
    }
    graph
}

/// A cycle through `from`, as the modules along it, if there is one.
fn cycle_from(graph: &Graph, from: &str) -> Option<Vec<String>> {
    let mut path = vec![from.to_owned()];
    let mut seen = BTreeSet::new();
    fn walk(
        graph: &Graph,
        target: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let last = path.last().unwrap().clone();
        for next in graph.get(&last).into_iter().flat_map(|m| m.keys()) {
            if next == target {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, target, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(graph, from, &mut path, &mut seen).then_some(path)
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let graph = module_graph();
    assert!(
        graph.len() > 20,
        "the sources were not read: {:?}",
        graph.keys()
    );
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            let edges: Vec<String> = cycle
                .windows(2)
                .map(|pair| {
                    let files = &graph[&pair[0]][&pair[1]];
                    format!("{} -> {} (in {:?})", pair[0], pair[1], files)
                })
                .collect();
            panic!("import cycle {}:\n{}", cycle.join(" -> "), edges.join("\n"));
        }
    }
}

#[test]
fn only_the_server_reaches_the_trigger() {
    let graph = module_graph();
    let importers: Vec<&String> = graph
        .iter()
        .filter(|(_, imports)| imports.contains_key("trigger"))
        .map(|(module, _)| module)
        .collect();
    assert_eq!(importers, ["server"], "{:#?}", graph);
}

#[test]
fn storage_announces_nothing() {
    let graph = module_graph();
    let backend = &graph["backend"];
    for upward in ["lifecycle", "transition", "webhooks", "worker", "app"] {
        assert!(
            !backend.contains_key(upward),
            "backend imports {upward}: {:?}",
            backend.get(upward)
        );
    }
}

#[test]
fn the_scan_sees_grouped_imports_and_skips_comments_and_unit_tests() {
    let code = code_of(
        "use crate::{a, b::c};\n/// [`crate::d`]\nfn f() { crate::e::g(); }\n#[cfg(test)]\nmod tests { use crate::h; }",
    );
    let found: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "e"]);
}
