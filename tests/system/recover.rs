//! `etp recover flows|show|validate`: the flows the binary carries, their
//! committed renderings, and trees refused with a message naming the node.

use etp_system_tests::{etp, ok};

#[test]
fn the_flows_list_render_as_committed_and_validate() {
    let list = ok(&etp(&["recover", "flows"]));
    for id in [
        "triage",
        "case1_isolated",
        "case2_replicate",
        "case3_log",
        "case4_master_log",
        "case5_admin",
    ] {
        assert!(list.contains(id), "{list}");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../flowcharts/rendered");
        for (format, ext) in [("mermaid", "mmd"), ("dot", "dot")] {
            let shown = ok(&etp(&["recover", "show", id, "--format", format]));
            let committed =
                std::fs::read_to_string(root.join(format!("{id}.{ext}"))).expect("rendered file");
            assert_eq!(shown, committed, "{id} as {format}");
        }
    }
    assert!(ok(&etp(&["recover", "validate"])).contains("all valid"));
    let out = etp(&["recover", "show", "case9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recovery flow \"case9\""));
}

#[test]
fn a_cycle_an_unreachable_node_and_an_unknown_action_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = |id: &str, body: &str| {
        std::fs::write(
            tmp.path().join(format!("{id}.toml")),
            format!("id = \"{id}\"\ntitle = \"t\"\ndescription = \"d\"\nstart = \"q\"\n{body}"),
        )
        .expect("write");
    };
    let leaf = "[[node]]\nid = \"done\"\noutcome = \"o\"\nactions = [{ action = \"restart_databases\", target = \"$all\" }]\n";
    tree(
        "cyclic",
        &format!("[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"r\"\nno = \"done\"\n[[node]]\nid = \"r\"\nquestion = \"?\"\nyes = \"q\"\nno = \"done\"\n{leaf}"),
    );
    tree(
        "orphan",
        &format!("[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"done\"\nno = \"done\"\n[[node]]\nid = \"lost\"\noutcome = \"o\"\nactions = [{{ action = \"restart_databases\", target = \"$all\" }}]\n{leaf}"),
    );
    tree(
        "unknown",
        "[[node]]\nid = \"q\"\nquestion = \"?\"\nyes = \"done\"\nno = \"done\"\n[[node]]\nid = \"done\"\noutcome = \"o\"\nactions = [{ action = \"make_coffee\" }]\n",
    );
    let out = etp(&[
        "recover",
        "validate",
        "--dir",
        &tmp.path().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cyclic.toml") && text.contains("cycle through node"),
        "{text}"
    );
    assert!(text.contains("node `lost` cannot be reached"), "{text}");
    assert!(text.contains("unknown action `make_coffee`"), "{text}");
}
