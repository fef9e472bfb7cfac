//! `schemas/*.json` must match the types. Regenerate with
//! `RIVET_UPDATE_SCHEMAS=1 cargo test -p rivet-protocol --test schemas`.

use std::path::Path;

#[test]
fn generated_schemas_match_the_checked_in_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let update = std::env::var_os("RIVET_UPDATE_SCHEMAS").is_some();
    let mut drifted = Vec::new();
    for (name, schema) in rivet_protocol::schemas() {
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if update {
            std::fs::write(&path, &text).unwrap();
        }
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == text => {}
            _ => drifted.push(path.display().to_string()),
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas drifted from the protocol types: {drifted:?}; run RIVET_UPDATE_SCHEMAS=1 cargo test -p rivet-protocol --test schemas and commit"
    );
}

#[test]
fn decoding_checks_the_schema_version_first() {
    use rivet_protocol::messages::ClassAnnounce;
    let ok = br#"{"schema":1,"class_key":"any","requires":[]}"#;
    assert_eq!(
        rivet_protocol::decode::<ClassAnnounce>(ok)
            .unwrap()
            .class_key,
        "any"
    );
    let newer = br#"{"schema":2,"class_key":"any","requires":[],"extra":true}"#;
    assert!(rivet_protocol::decode::<ClassAnnounce>(newer)
        .unwrap_err()
        .to_string()
        .contains("schema version 2"));
    let garbage = b"\xff not json";
    assert!(rivet_protocol::decode::<ClassAnnounce>(garbage)
        .unwrap_err()
        .to_string()
        .contains("undecodable"));
    let missing = br#"{"class_key":"any"}"#;
    assert!(rivet_protocol::decode::<ClassAnnounce>(missing).is_err());
}
