//! Go-template rendering and job snapshots (issue #7 part 7).

use fleetkv::template::TemplateErrorKind as K;
use fleetkv::{
    Error, Machine, ParamDef, Profile, RenderContext, Store, Template, TemplateError, TokenMinter,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The seed's `cluster-utilities` stanza, verbatim.
const CLUSTER_UTILITIES: &str = r#"{{ if .ParamExists "cluster/profile" }}
CLUSTER_PROFILE={{.Param "cluster/profile"}}
PROFILE_TOKEN={{.GenerateProfileToken (.Param "cluster/profile") 7200}}
echo " Cluster Profile is $CLUSTER_PROFILE"
{{ else }}
echo " WARNING: no cluster profile defined! Run cluster-initialize task."
{{ end }}
"#;

const UUID: &str = "3e2b5c1a-8f4d-4e0a-9c7b-2d1f6a5e4b3c";

/// Mints `tok:<profile>:<ttl>`; refuses profile `nope`.
struct TestMinter;

impl TokenMinter for TestMinter {
    fn profile_token(&self, profile: &str, ttl_secs: u64) -> fleetkv::Result<String> {
        if profile == "nope" {
            return Err(Error::Invalid {
                what: "profile".into(),
                reason: "refused".into(),
            });
        }
        Ok(format!("tok:{profile}:{ttl_secs}"))
    }
}

fn machine() -> Machine {
    let mut m = Machine::new("m1");
    m.uuid = UUID.parse().unwrap();
    m.address = "10.0.0.5".into();
    m.workflow = "wf".into();
    m
}

fn render_set(templates: &[(&str, &str)], params: Value) -> Result<String, TemplateError> {
    let m = machine();
    let params: Map<String, Value> = serde_json::from_value(params).unwrap();
    let parsed = templates
        .iter()
        .map(|(n, t)| Template::parse(n, t))
        .collect::<Result<Vec<_>, _>>()?;
    parsed[0].render(&RenderContext {
        machine: &m,
        params: &params,
        templates: &parsed,
        minter: &TestMinter,
    })
}

fn render(text: &str, params: Value) -> Result<String, TemplateError> {
    render_set(&[("t", text)], params)
}

fn ok(text: &str, params: Value) -> String {
    render(text, params).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

#[test]
fn cluster_utilities_renders_as_drp() {
    assert_eq!(
        ok(CLUSTER_UTILITIES, json!({"cluster/profile": "example"})),
        "\nCLUSTER_PROFILE=example\nPROFILE_TOKEN=tok:example:7200\n\
         echo \" Cluster Profile is $CLUSTER_PROFILE\"\n\n"
    );
    assert_eq!(
        ok(CLUSTER_UTILITIES, json!({"other": 1})),
        "\necho \" WARNING: no cluster profile defined! Run cluster-initialize task.\"\n\n"
    );
}

#[test]
fn values_print_as_go() {
    let p = json!({"s": "x y", "i": 7200, "f": 1.5, "big": 1000000, "t": true, "n": null,
                   "o": {"b": [1, "<a&b>"], "a": {}}, "e": []});
    for (k, want) in [
        ("s", "x y"),
        ("i", "7200"),
        ("f", "1.5"),
        ("big", "1e+06"),
        ("t", "true"),
        ("n", "<no value>"),
        ("o", r#"{"a":{},"b":[1,"\u003ca\u0026b\u003e"]}"#),
        ("e", "[]"),
    ] {
        assert_eq!(
            ok(&format!("{{{{ .Param {k:?} }}}}"), p.clone()),
            want,
            "{k}"
        );
    }
}

#[test]
fn if_truthiness_table() {
    let p = json!({"f": false, "t": true, "z": 0, "z2": 0.0, "one": 1, "es": "", "s": "x",
                   "n": null, "eo": {}, "o": {"a": 1}, "ea": [], "a": [0]});
    for (k, want) in [
        ("f", false),
        ("t", true),
        ("z", false),
        ("z2", false),
        ("one", true),
        ("es", false),
        ("s", true),
        ("n", false),
        ("eo", false),
        ("o", true),
        ("ea", false),
        ("a", true),
    ] {
        let text = format!("{{{{ if .Param {k:?} }}}}yes{{{{ else }}}}no{{{{ end }}}}");
        assert_eq!(ok(&text, p.clone()), if want { "yes" } else { "no" }, "{k}");
    }
    let p = json!({"a": 1, "b": ""});
    for (text, want) in [
        (r#"{{ if not (.ParamExists "zz") }}1{{ end }}"#, "1"),
        (r#"{{ if .ParamExists "b" }}1{{ else }}0{{ end }}"#, "1"),
        (
            r#"{{ if .ParamExists "c" }}1{{ else if .Param "a" }}2{{ else }}3{{ end }}"#,
            "2",
        ),
        (
            r#"{{ if and (.Param "a") (.Param "b") }}1{{ else }}0{{ end }}"#,
            "0",
        ),
        (r#"{{ or (.Param "b") "dflt" }}"#, "dflt"),
        (
            r#"{{ if eq (.Param "a") 1 2 }}1{{ end }}{{ if ne "x" "y" }}2{{ end }}"#,
            "12",
        ),
        (
            "{{ if true }}{{ if false }}a{{ else }}b{{ end }}{{ end }}",
            "b",
        ),
        (
            r#"{{ if "" }}x{{ end }}{{ if nil }}y{{ end }}{{/* gone */}}"#,
            "",
        ),
    ] {
        assert_eq!(ok(text, p.clone()), want, "{text}");
    }
}

#[test]
fn nested_template_calls_share_the_context() {
    let task = "{{template \"setup.tmpl\" .}}\ncl=$(get_param \"my/data\")\n";
    let out = render_set(
        &[("task", task), ("setup.tmpl", CLUSTER_UTILITIES)],
        json!({"cluster/profile": "c1"}),
    )
    .unwrap();
    assert!(
        out.starts_with("\nCLUSTER_PROFILE=c1\nPROFILE_TOKEN=tok:c1:7200\n"),
        "{out}"
    );
    assert!(
        out.ends_with("\n\n\ncl=$(get_param \"my/data\")\n"),
        "{out:?}"
    );
    // Called with no dot, methods have no context; `.` passes it through.
    let e = render_set(
        &[("a", "{{ template \"b\" }}"), ("b", "{{ .Param \"x\" }}")],
        json!({"x": 1}),
    )
    .unwrap_err();
    assert_eq!(
        (e.kind, e.template_name.as_str(), e.offset),
        (K::WrongType, "b", 3)
    );
    let out = render_set(
        &[
            ("a", "[{{ template \"b\" .Machine }}]"),
            ("b", "{{ .Name }}"),
        ],
        json!({}),
    );
    assert_eq!(out.unwrap(), "[m1]");
    // Runaway recursion is an error, not a stack overflow.
    let e = render_set(&[("a", "{{ template \"a\" . }}")], json!({})).unwrap_err();
    assert_eq!(e.kind, K::TooDeep);
}

#[test]
fn trim_markers() {
    let p = json!({"x": "X"});
    assert_eq!(ok("a  \n {{- .Param \"x\" -}} \n\t b", p.clone()), "aXb");
    assert_eq!(ok("a {{- .Param \"x\" }} b", p.clone()), "aX b");
    assert_eq!(ok("a {{ .Param \"x\" -}} b", p.clone()), "a Xb");
    assert_eq!(
        ok("a {{-3}} b", p.clone()),
        "a -3 b",
        "{{-3 is a number, not a trim"
    );
    assert_eq!(
        ok(
            "l1\n{{- if true }}\n  yes\n{{- else }}\n  no\n{{- end }}\nl2",
            p.clone()
        ),
        "l1\n  yes\nl2"
    );
    assert_eq!(ok("x {{- /* c */ -}} y", p), "xy");
}

#[test]
fn machine_fields() {
    assert_eq!(
        ok(
            "{{ .Machine.Name }} {{ .Machine.Uuid }} {{ .Machine.Address }} {{ .Machine.Workflow }} {{ .Machine.Runnable }}",
            json!({}),
        ),
        format!("m1 {UUID} 10.0.0.5 wf true")
    );
    assert_eq!(
        ok(
            "{{ if .Machine.Profiles }}p{{ else }}none{{ end }}",
            json!({})
        ),
        "none"
    );
}

#[test]
fn escapes_and_literals() {
    assert_eq!(
        ok(
            r#"{{ "a\tb\u00e9\x41" }}|{{ `raw\n` }}|{{ 1.5 }}|{{ -2 }}"#,
            json!({})
        ),
        "a\tbéA|raw\\n|1.5|-2"
    );
    for bad in [r#"{{ "\x+1" }}"#, r#"{{ "\q" }}"#, "{{ 1x }}", "{{ .A. }}"] {
        assert_eq!(err(bad).kind, K::Syntax, "{bad}");
    }
}

fn err(text: &str) -> TemplateError {
    match render(text, json!({"p": "nope", "n": 5})) {
        Ok(s) => panic!("{text:?} rendered {s:?}"),
        Err(e) => e,
    }
}

#[test]
fn errors_are_positioned() {
    for (text, kind, line, column, offset) in [
        ("ab\n {{ .Param \"x\" ", K::UnclosedAction, 2, 2, 4),
        ("{{ .Parm \"x\" }}", K::UnknownFunction, 1, 4, 3),
        ("{{ frob 1 }}", K::UnknownFunction, 1, 4, 3),
        ("{{ .Param }}", K::ArgumentCount, 1, 4, 3),
        ("{{ .Param \"a\" \"b\" }}", K::ArgumentCount, 1, 4, 3),
        ("{{ not .ParamExists \"a\" }}", K::ArgumentCount, 1, 8, 7),
        ("{{ .Param 5 }}", K::WrongType, 1, 11, 10),
        (
            "{{ .GenerateProfileToken \"p\" \"7200\" }}",
            K::WrongType,
            1,
            30,
            29,
        ),
        ("x\n{{ .Param \"abc }}", K::UnterminatedString, 2, 11, 12),
        ("{{ template \"nosuch\" . }}", K::UnknownTemplate, 1, 13, 12),
        ("a\n{{ end }}", K::Unmatched, 2, 1, 2),
        ("{{ else }}", K::Unmatched, 1, 1, 0),
        ("x{{ if true }}", K::UnclosedIf, 1, 2, 1),
        ("{{ .Param \"zz\" }}", K::NoValue, 1, 11, 10),
        (
            "{{ .GenerateProfileToken (.Param \"p\") 1 }}",
            K::TokenMinting,
            1,
            4,
            3,
        ),
        ("{{ range .Machine }}{{ end }}", K::Unsupported, 1, 4, 3),
        ("{{ .Param \"p\" | printf }}", K::Unsupported, 1, 15, 14),
        ("{{ $x := 1 }}", K::Unsupported, 1, 4, 3),
        ("{{ .Machine.Nope }}", K::UnknownField, 1, 13, 12),
        ("{{ .Nope }}", K::UnknownField, 1, 5, 4),
        ("{{ (.Param \"p\" }}", K::Syntax, 1, 16, 15),
        ("{{ }}", K::Syntax, 1, 4, 3),
        ("{{ if }}{{ end }}", K::Syntax, 1, 7, 6),
        ("{{ .Param \"p\" )", K::UnclosedAction, 1, 1, 0),
        ("é{{ .Param \"zz\" }}", K::NoValue, 1, 12, 12),
    ] {
        let e = err(text);
        assert_eq!(
            (e.kind, e.line, e.column, e.offset),
            (kind, line, column, offset),
            "{text:?}: {e}"
        );
        assert_eq!(e.template_name, "t");
        assert!(!e.expected.is_empty() && !e.found.is_empty(), "{e}");
    }
    let e = err("{{ .Param \"zz\" }}");
    assert!(e.found.contains("param zz has no value"), "{e}");
    let shown = err("line one\n  {{ frob }}").to_string();
    assert_eq!(
        shown,
        "template t:2:6 (byte 14): unknown function: expected a function (not, and, or, eq, ne), found \"frob\"\n    {{ frob }}\n       ^"
    );
    let e: Error = err("{{ end }}").into();
    assert!(matches!(e, Error::Template(_)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_text_never_panics(s in "(\\{\\{-? ?|-?\\}\\}|[ .()\"`$|\\\\a-z0-9]|if |else |end |template |\\.Param |\\.Machine\\.|not |\n){0,40}") {
        let _ = render(&s, json!({"a": 1}));
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,64}") {
        let _ = render(&s, json!({}));
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let e = err(&format!(
        "{{{{ {}1{} }}}}",
        "(".repeat(5000),
        ")".repeat(5000)
    ));
    assert_eq!(e.kind, K::TooDeep);
    let e = err(&"{{ if true }}".repeat(5000));
    assert_eq!(e.kind, K::TooDeep);
}

#[test]
fn job_snapshot_keeps_params_from_creation() {
    let s = Store::temporary().unwrap();
    s.params()
        .create(ParamDef::new(
            "my/data",
            json!({"type": "string", "default": "none"}),
        ))
        .unwrap();
    let mut p = Profile::new("example");
    p.params.insert("cluster/profile".into(), json!("example"));
    s.profiles().create(p).unwrap();
    let mut m = Machine::new("m1");
    m.profiles = vec!["example".into()];
    let m = s.machines().create(m).unwrap();
    let task =
        "{{ template \"setup.tmpl\" . }}data={{ .Param \"my/data\" }} name={{ .Machine.Name }}\n";
    let templates = [("task", task), ("setup.tmpl", CLUSTER_UTILITIES)];
    let job = s.create_job("m1", &templates, &TestMinter).unwrap();
    assert_eq!(job.machine, m.uuid);
    assert_eq!(job.revision, s.revision());
    assert!(job
        .rendered
        .contains("CLUSTER_PROFILE=example\nPROFILE_TOKEN=tok:example:7200\n"));
    assert!(
        job.rendered.ends_with("data=none name=m1\n"),
        "{:?}",
        job.rendered
    );

    s.machines()
        .set_param("m1", "my/data", json!("foo"))
        .unwrap();
    s.profiles()
        .remove_param("example", "cluster/profile")
        .unwrap();
    assert_eq!(
        s.job(job.uuid).unwrap(),
        job,
        "later param changes do not alter the job"
    );

    let again = s
        .create_job(&m.uuid.to_string(), &templates, &TestMinter)
        .unwrap();
    assert_ne!(again.uuid, job.uuid);
    assert!(again.revision > job.revision);
    assert!(again.rendered.contains("WARNING: no cluster profile"));
    assert!(again.rendered.ends_with("data=foo name=m1\n"));

    let v = serde_json::to_value(&job).unwrap();
    for k in ["Uuid", "Machine", "Revision", "Rendered", "CreatedAt"] {
        assert!(v.get(k).is_some(), "{k} in {v}");
    }
    assert!(matches!(
        s.job(uuid::Uuid::new_v4()),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        s.create_job("m1", &[("t", "{{ end }}")], &TestMinter),
        Err(Error::Template(_))
    ));
    assert!(matches!(
        s.create_job("nosuch", &templates, &TestMinter),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.create_job("m1", &[], &TestMinter),
        Err(Error::Invalid { .. })
    ));
}
