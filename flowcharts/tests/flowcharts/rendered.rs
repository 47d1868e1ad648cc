//! `rendered/` holds the Mermaid and DOT renders of `trees/`; they must not
//! drift from the TOML. Bless with `FLOWCHARTS_BLESS=1`.

use std::collections::BTreeSet;

use crate::{blessing, builtin, crate_dir};

#[test]
fn rendered_files_match_the_trees() {
    let dir = crate_dir().join("rendered");
    let mut expected_files = BTreeSet::new();
    let mut drifted = Vec::new();
    for tree in builtin().trees() {
        for (ext, text) in [
            ("mmd", flowcharts::to_mermaid(tree)),
            ("dot", flowcharts::to_dot(tree)),
        ] {
            let name = format!("{}.{ext}", tree.id);
            let path = dir.join(&name);
            expected_files.insert(name.clone());
            if blessing() {
                std::fs::create_dir_all(&dir).expect("create rendered/");
                std::fs::write(&path, &text).expect("write render");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                drifted.push(name);
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "rendered files differ from trees/: {drifted:?}; {}",
        flowcharts::BLESS_HINT
    );
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("rendered/ exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let stray: Vec<&String> = present.difference(&expected_files).collect();
    assert!(
        stray.is_empty(),
        "rendered/ has files of no tree: {stray:?}"
    );
}

#[test]
fn rendering_is_deterministic() {
    let set = builtin();
    for tree in set.trees() {
        assert_eq!(flowcharts::to_mermaid(tree), flowcharts::to_mermaid(tree));
        assert_eq!(flowcharts::to_dot(tree), flowcharts::to_dot(tree));
    }
}
