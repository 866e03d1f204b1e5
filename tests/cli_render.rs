//! `fleetkv machines render ID FILE|-`.

use std::path::Path;

use tempfile::TempDir;

mod common;

use common::embedded as run;

fn ok(db: &Path, args: &[&str]) -> String {
    let (code, out, err) = run(db, args, None);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

#[test]
fn render_prints_the_text_and_errors_exit_2() {
    let dir = TempDir::new().unwrap();
    let db = &dir.path().join("db");
    ok(
        db,
        &["machines", "create", r#"{"Name":"m1","Workflow":"wf"}"#],
    );
    ok(
        db,
        &["machines", "set", "m1", "param", "my/data", "to", "42"],
    );

    let text = "{{ .Machine.Name }}/{{ .Machine.Workflow }} data={{ .Param \"my/data\" }}\n\
                {{- if .ParamExists \"cluster/profile\" }} yes{{ else }} no{{ end }}\n";
    let (code, out, err) = run(db, &["machines", "render", "Name:m1", "-"], Some(text));
    assert_eq!((code, out.as_str()), (0, "m1/wf data=42 no\n"), "{err}");

    let file = dir.path().join("task.tmpl");
    std::fs::write(&file, "x\n{{ frob }}\n").unwrap();
    let (code, out, err) = run(
        db,
        &["machines", "render", "m1", file.to_str().unwrap()],
        None,
    );
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.contains("task.tmpl:2:4") && err.contains("unknown function"),
        "{err}"
    );
    assert!(err.contains("\n  {{ frob }}\n     ^"), "{err}");

    // A token for a profile that does not exist is a positioned error; once
    // it exists the rendered token works with -T on that profile.
    ok(
        db,
        &[
            "machines",
            "set",
            "m1",
            "param",
            "cluster/profile",
            "to",
            "c1",
        ],
    );
    let tok = "{{ .GenerateProfileToken (.Param \"cluster/profile\") 7200 }}";
    let (code, _, err) = run(db, &["machines", "render", "m1", "-"], Some(tok));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("profile c1 not found"), "{err}");
    ok(db, &["profiles", "create", "c1"]);
    let (code, token, err) = run(db, &["machines", "render", "m1", "-"], Some(tok));
    assert_eq!(code, 0, "{err}");
    let token = token.trim();
    ok(
        db,
        &[
            "-T", token, "profiles", "set", "c1", "param", "k", "to", "v",
        ],
    );
    let (code, _, err) = run(db, &["-T", token, "profiles", "show", "global"], None);
    assert_eq!(code, 6, "a profile token reaches only its profile: {err}");

    let (code, _, _) = run(db, &["machines", "render", "nosuch", "-"], Some("x"));
    assert_eq!(code, 4);
    let (code, _, err) = run(db, &["profiles", "render", "global", "-"], Some("x"));
    assert_eq!(code, 2, "{err}");
}
