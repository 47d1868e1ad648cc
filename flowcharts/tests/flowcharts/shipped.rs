//! The shipped trees are valid, and loading them from disk gives the same
//! trees as the embedded copies.

use flowcharts::{Registry, TreeSet};

use crate::{builtin, crate_dir};

#[test]
fn shipped_trees_validate_against_the_standard_registry() {
    let set = builtin();
    if let Err(invalid) = set.validate(&Registry::standard()) {
        let text: Vec<String> = invalid.iter().map(|i| i.to_string()).collect();
        panic!("shipped trees are invalid:\n{}", text.join("\n"));
    }
    let ids: Vec<&str> = set.trees().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "case1_isolated",
            "case2_replicate",
            "case3_log",
            "case4_master_log",
            "case5_admin",
            "triage"
        ]
    );
}

#[test]
fn load_dir_reads_the_same_trees_as_builtin() {
    let from_disk = TreeSet::load_dir(&crate_dir().join("trees")).expect("trees/ loads");
    let embedded = builtin();
    for tree in embedded.trees() {
        let disk = from_disk.get(&tree.id).expect("same ids on disk");
        assert_eq!(disk.nodes, tree.nodes, "{}", tree.id);
        assert!(disk.origin.ends_with(&format!("{}.toml", tree.id)));
    }
    assert_eq!(from_disk.trees().count(), embedded.trees().count());
    from_disk
        .validate(&Registry::standard())
        .expect("trees/ validates with file-name checks");
}

#[test]
fn every_standard_probe_and_action_is_used_by_a_shipped_tree() {
    // A name nobody uses is vocabulary the engine team would implement for
    // nothing; remove it from the registry or use it in a tree.
    let set = builtin();
    let mut probes = std::collections::BTreeSet::new();
    let mut actions = std::collections::BTreeSet::new();
    for tree in set.trees() {
        for node in &tree.nodes {
            if let Some(probe) = node.question().and_then(|q| q.probe.as_deref()) {
                probes.insert(probe.to_string());
            }
            if let Some(flowcharts::LeafEnd::Actions(steps)) = node.leaf().map(|l| &l.end) {
                actions.extend(steps.iter().map(|s| s.action.clone()));
            }
        }
    }
    let registry = Registry::standard();
    let unused_probes: Vec<&str> = registry
        .probes()
        .map(|(n, _)| n)
        .filter(|n| !probes.contains(*n))
        .collect();
    let unused_actions: Vec<&str> = registry
        .actions()
        .map(|(n, _)| n)
        .filter(|n| !actions.contains(*n))
        .collect();
    assert!(unused_probes.is_empty(), "unused probes: {unused_probes:?}");
    assert!(
        unused_actions.is_empty(),
        "unused actions: {unused_actions:?}"
    );
}

#[test]
fn cross_tree_goto_to_a_missing_case_is_refused() {
    let mut set = TreeSet::default();
    let (_, text) = flowcharts::BUILTIN
        .iter()
        .find(|(file, _)| *file == "triage.toml")
        .expect("triage is shipped");
    set.insert(flowcharts::Tree::parse(text, "trees/triage.toml").expect("parses"))
        .expect("inserted");
    let invalid = set
        .validate(&Registry::standard())
        .expect_err("cases are missing");
    let message = invalid[0].to_string();
    assert!(message.starts_with("trees/triage.toml: "), "{message}");
    assert!(
        message.contains("leaf `case5` goes to tree `case5_admin`, which does not exist"),
        "{message}"
    );
}

#[test]
fn a_walk_serializes_to_json() {
    let set = builtin();
    let tree = set.get("case5_admin").expect("shipped");
    struct AllYes;
    impl flowcharts::Answers for AllYes {
        type Error = std::convert::Infallible;
        fn answer(&mut self, node: &flowcharts::Node) -> Result<flowcharts::Answer, Self::Error> {
            Ok(flowcharts::Answer::yes(format!("checked {}", node.id)))
        }
    }
    let walk = flowcharts::walk(tree, &mut AllYes).expect("walks");
    let json = serde_json::to_value(&walk).expect("serializes");
    assert_eq!(json["tree"], "case5_admin");
    assert_eq!(json["path"][0]["answer"], "yes");
    assert_eq!(
        json["path"][0]["evidence"],
        "checked admin_copy_with_intact_plog"
    );
    assert_eq!(json["plan"]["plan"], "actions");
    assert_eq!(json["plan"]["leaf"], "restore_admin_regenerate");
    assert_eq!(json["plan"]["steps"][0]["action"], "stop_tasks");
    assert_eq!(json["plan"]["steps"][0]["target"], "$all");
}

#[test]
fn readme_documents_every_standard_name() {
    let readme = std::fs::read_to_string(crate_dir().join("README.md")).expect("README.md");
    let registry = Registry::standard();
    let names = registry
        .probes()
        .map(|(n, _)| n.to_string())
        .chain(registry.actions().map(|(n, _)| n.to_string()))
        .chain(registry.variables().map(|(n, _)| format!("${n}")));
    let missing: Vec<String> = names
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not document {missing:?}"
    );
}
