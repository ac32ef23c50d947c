//! The JSON interface contract: every command's `--json` output, success and error, follows its
//! schema in docs/schemas/ (the harness checks every run of every test; this file runs one
//! scenario per output and shows the check has teeth), the schemas are strict, and the error
//! kinds they list are the library's, with the same exit codes.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;

/// The schemas, by the name `schema_of` gives.
const SCHEMAS: [&str; 9] = [
    "attach",
    "rollback",
    "status",
    "status-all",
    "fleet",
    "watch",
    "resolve",
    "rehearse",
    "error",
];

fn load(name: &str) -> Value {
    let path = repo_root().join(format!("docs/schemas/{name}.schema.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every object type with properties in `schema` (not the `if` conditions that look at a
/// property), with its JSON pointer.
fn objects<'a>(schema: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && map.get("type") == Some(&json!("object")) {
                out.push((at.clone(), schema));
            }
            for (k, v) in map {
                objects(v, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                objects(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Each schema is a valid JSON Schema; every object it describes forbids unknown fields and
/// requires every field it lists; the top level has `schema_version`.
#[test]
fn schemas_are_strict() {
    for name in SCHEMAS {
        let schema = load(name);
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            schema["properties"]["schema_version"],
            json!({ "const": 1 }),
            "{name}"
        );
        let mut found = Vec::new();
        objects(&schema, String::new(), &mut found);
        assert!(!found.is_empty());
        for (at, object) in found {
            assert_eq!(
                object["additionalProperties"],
                Value::Bool(false),
                "{name}{at} allows unknown fields"
            );
            let listed: BTreeSet<&str> = object["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let required: BTreeSet<&str> = object["required"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}{at} has no required list"))
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(
                listed, required,
                "{name}{at}: every field is always present"
            );
        }
    }
}

/// The error kinds the schemas accept are exactly the library's, each with its exit code.
#[test]
fn error_kinds_are_the_librarys() {
    let schema = load("error");
    let kinds: Vec<&str> = schema["$defs"]["error"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = rpatch::ErrorKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(kinds, ours);
    for kind in rpatch::ErrorKind::ALL {
        let valid = json!({ "schema_version": 1, "error": {
            "code": kind.exit_code(), "kind": kind.name(), "message": "m" } });
        schema_violations("error", &valid).unwrap();
        let wrong_code = json!({ "schema_version": 1, "error": {
            "code": kind.exit_code() + 1, "kind": kind.name(), "message": "m" } });
        assert!(schema_violations("error", &wrong_code).is_err(), "{kind}");
    }
    assert_eq!(load("rehearse")["$defs"]["error"], schema["$defs"]["error"]);
}

/// `status --all` lists each patch as `status PID` does: the two schemas define it alike.
#[test]
fn status_all_patches_are_status_patches() {
    assert_eq!(
        load("status-all")["$defs"]["patch"],
        load("status")["$defs"]["patch"]
    );
}

/// Real outputs of attach (a dry run, and a patch binding the target's private globals), status,
/// rollback and resolve, and an error of each command, follow their schemas; the same output
/// with a field renamed, removed or added does not.
#[test]
fn real_outputs_follow_their_schemas_and_changed_ones_do_not() {
    let t = build_targets();
    let state = state_dir();
    let target = Target::spawn(t.bin("private"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_private.so");

    let dry = attach(state.path(), pid, &lib, &["bump"], &["--dry-run", "--json"]);
    dry.expect_ok();
    let dry = dry.json();
    assert!(dry["patches"][0]["replacement"].is_null(), "{dry}");
    let report = attach_ok(state.path(), pid, &lib, &["bump"]);
    assert!(
        !report["bindings"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let status = rpatch(state.path(), &["status", &pid.to_string(), "--json"]);
    status.expect_ok();
    let rolled = rpatch(state.path(), &["rollback", &pid.to_string(), "--json"]);
    rolled.expect_ok();
    schema_violations("rollback", &rolled.json()).unwrap();
    let resolve = rpatch(
        state.path(),
        &[
            "resolve",
            "--exe",
            t.bin("inl").to_str().unwrap(),
            "scale",
            "--json",
        ],
    );
    resolve.expect_ok();
    for (command, run) in [
        ("rollback", rollback(state.path(), pid, &["--json"])),
        (
            "attach",
            attach(state.path(), pid, &lib, &["no_such_fn"], &["--json"]),
        ),
        (
            "status",
            rpatch(state.path(), &["status", &dead_pid().to_string(), "--json"]),
        ),
        (
            "resolve",
            rpatch(
                state.path(),
                &["resolve", &pid.to_string(), "no_such_fn_anywhere", "--json"],
            ),
        ),
    ] {
        assert_ne!(run.code, 0, "{command} should fail: {run:?}");
        assert_eq!(schema_of(&run), Some("error"));
        schema_violations("error", &run.json()).unwrap();
    }

    // The check has teeth: each change of a valid output is caught.
    for (name, valid) in [
        ("attach", report),
        ("status", status.json()),
        ("resolve", resolve.json()),
    ] {
        schema_violations(name, &valid).unwrap();
        let mut renamed = valid.clone();
        let object = renamed.as_object_mut().unwrap();
        let pid_value = object.remove("pid").unwrap_or(Value::Null);
        object.insert("process_id".into(), pid_value);
        assert!(
            schema_violations(name, &renamed).is_err(),
            "{name}: renamed"
        );
        let mut missing = valid.clone();
        missing.as_object_mut().unwrap().remove("schema_version");
        assert!(
            schema_violations(name, &missing).is_err(),
            "{name}: missing"
        );
        let mut extra = valid.clone();
        extra["surprise"] = json!(1);
        assert!(schema_violations(name, &extra).is_err(), "{name}: added");
    }
    assert_untraced(pid);
    drop(target);
}
