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

#[test]
fn diagnose_answers_triage_from_the_live_nodes() {
    use etp_system_tests::etp_bin;
    use etp_system_tests::tamper;
    use maintenance::cluster::{Cluster, FULL};
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let m = cl.nodes[0].addr.to_string();
    let mut c = cl.master().client().expect("client");
    for k in 1..=50u64 {
        let mut r = propagator::Record::new();
        r.insert("id".into(), propagator::Value::Int(k as i64));
        r.insert("grp".into(), propagator::Value::Int(4));
        r.insert("qty".into(), propagator::Value::Int(20));
        let fields =
            serde_bytes::ByteBuf::from(propagator::record::encode_record(&r).expect("enc"));
        let cmds = vec![
            propagator::wire::Command::Store {
                file: propagator::Fnr(10),
                isn: Some(propagator::Isn(k)),
                fields,
            },
            propagator::wire::Command::Et { id: None },
        ];
        c.batch(cmds).expect("commit");
    }
    cl.wait_converged(std::time::Duration::from_secs(120))
        .expect("converged");
    // A copy set of the full replicate, then more master changes.
    let area = tmp.path().join("area").display().to_string();
    let full = cl.nodes[1].addr.to_string();
    ok(&etp(&[
        "copy", "take", "--node", &full, "--area", &area, "--file", "20",
    ]));
    for k in 1..=10u64 {
        let mut r = propagator::Record::new();
        r.insert("qty".into(), propagator::Value::Int(25));
        let fields =
            serde_bytes::ByteBuf::from(propagator::record::encode_record(&r).expect("enc"));
        c.batch(vec![
            propagator::wire::Command::Update {
                file: propagator::Fnr(10),
                isn: propagator::Isn(k),
                fields,
            },
            propagator::wire::Command::Et { id: None },
        ])
        .expect("commit");
    }
    cl.wait_converged(std::time::Duration::from_secs(120))
        .expect("converged");
    let diagnose_with = |extra: &[&str]| {
        let mut args = vec!["recover", "diagnose", "--node", &m, "--json"];
        args.extend_from_slice(extra);
        let out = etp(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        (out.status.code(), v)
    };
    let diagnose = || {
        let out = etp(&["recover", "diagnose", "--node", &m, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        (out.status.code(), v)
    };
    // Everything intact: triage ends at its last leaf, exit 0.
    let (code, v) = diagnose();
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["triage"]["plan"]["leaf"], "all_intact", "{v}");
    // The full replicate's file damaged behind the engine's back.
    cl.nodes[1].stop().expect("stop");
    tamper(&cl.nodes[1].data, FULL, vec![(propagator::Isn(3), None)]);
    cl.nodes[1].restart().expect("restart");
    let (code, v) = diagnose();
    assert_eq!(code, Some(1), "{v}");
    let path = v["triage"]["path"].as_array().expect("path");
    let q = path
        .iter()
        .find(|p| p["probe"] == "replicate_damaged")
        .expect("asked whether a replicate is damaged");
    assert_eq!(q["answer"], "yes", "{q}");
    assert!(
        q["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("items_full"),
        "{q}"
    );
    assert_eq!(v["triage"]["plan"]["case"], "case2_replicate", "{v}");
    assert_eq!(v["case"]["tree"], "case2_replicate", "{v}");
    // Without a copy area the case walk stops at its first question…
    assert_eq!(v["case"]["plan"]["plan"], "stopped", "{v}");
    // …with one, the probes find the copy set with its protection log
    // intact, and little to replay since it: restore it and roll it forward.
    let (code, v) = diagnose_with(&["--area", &area]);
    assert_eq!(code, Some(1));
    let case = &v["case"];
    assert_eq!(case["plan"]["leaf"], "restore_and_regenerate", "{case}");
    let first = &case["path"][0];
    assert_eq!(first["probe"], "unit_copy_with_intact_plog");
    assert!(
        first["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("copy set"),
        "{first}"
    );
    assert!(case["path"]
        .as_array()
        .expect("path")
        .iter()
        .any(|p| p["probe"] == "reload_quicker_than_roll_forward" && p["answer"] == "no"));
    // A database down: triage stops at its first question.
    cl.nodes[2].kill();
    let (code, v) = diagnose();
    assert_eq!(code, Some(1));
    let first = &v["triage"]["path"][0];
    assert_eq!(first["probe"], "databases_restarted");
    assert_eq!(first["answer"], "no");
    assert!(
        first["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("database 3"),
        "{first}"
    );
}
