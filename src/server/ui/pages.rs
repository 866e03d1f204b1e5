//! The UI's HTML, written with maud: every `(value)` is escaped, so a
//! machine named `<script>` is shown as text.
//!
//! Owns: page layout, the login form, the cluster list, a cluster's live
//! part and the machine list. Must not: read the store or check claims —
//! handlers pass in what a page shows.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use crate::cluster::Role;

/// The vendored scripts' paths (see `ui/vendor/`).
pub(super) const HTMX_JS: &str = "/ui/assets/htmx-2.0.11.min.js";
pub(super) const SSE_JS: &str = "/ui/assets/htmx-ext-sse-2.2.4.min.js";

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff;text-decoration:none}header form{margin-left:auto}
main{padding:1em 1.2em}table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #e3e6eb;padding:.35em .6em;text-align:left;font-size:.95em}
th{background:#eef0f4}.counts{display:flex;gap:1em;margin:.8em 0}
.count{background:#fff;border:1px solid #e3e6eb;border-radius:6px;padding:.5em 1em}
.count b{display:block;font-size:1.6em}.role-manager{color:#8a3ffc}.role-leader{color:#0f62fe;font-weight:600}
.icon{background:#eef0f4;border-radius:4px;padding:0 .4em;font-size:.85em}
.error{background:#fff1f1;border:1px solid #da1e28;padding:.6em;border-radius:6px}
pre.caret{margin:.4em 0 0;font-size:1em}.pager{margin:.8em 0;display:flex;gap:1em;align-items:center}
input[type=text],input[type=password]{font-family:monospace;padding:.3em;min-width:28em}
";

/// The page frame; `csrf` (a session's token) adds the logout button.
pub(super) fn page(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false}"#;
                title { (title) " · fleetkv" }
                style { (PreEscaped(STYLE)) }
                script src=(HTMX_JS) {}
                script src=(SSE_JS) {}
            }
            body {
                header {
                    b { "fleetkv" }
                    a href="/ui/" { "Clusters" }
                    a href="/ui/machines" { "Machines" }
                    @if let Some(token) = csrf {
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(token);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login form; `csrf` is also in the login cookie.
pub(super) fn login(csrf: &str, problem: Option<&str>) -> Markup {
    page(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(p) = problem {
                p.error { (p) }
            }
            form method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(csrf);
                p {
                    label for="credential" { "Admin key, or user:password" }
                    br;
                    input type="password" id="credential" name="credential" autofocus;
                }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// One cluster's line on the index.
pub(super) struct ClusterRow {
    pub(super) name: String,
    pub(super) members: u64,
}

pub(super) fn clusters(csrf: &str, rows: &[ClusterRow]) -> Markup {
    page(
        "Clusters",
        Some(csrf),
        html! {
            h1 { "Clusters" }
            @if rows.is_empty() {
                p { "No cluster profile yet (a profile whose " code { "cluster/profile" } " names itself)." }
            } @else {
                table {
                    thead { tr { th { "Cluster" } th { "Members" } } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { a href={ "/ui/clusters/" (segment(&r.name)) } { (r.name) } }
                                td { (r.members) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A member as the cluster page shows it.
pub(super) struct Member {
    pub(super) name: String,
    pub(super) uuid: String,
    pub(super) role: Role,
    pub(super) workflow: String,
    pub(super) icon: Option<String>,
}

/// What the cluster page's live part shows.
pub(super) struct ClusterView {
    pub(super) name: String,
    pub(super) members: u64,
    pub(super) leaders: u64,
    pub(super) managers: u64,
    /// Members per Workflow (`""`: none), from the count path.
    pub(super) workflows: Vec<(String, u64)>,
    pub(super) shown: Vec<Member>,
    pub(super) revision: u64,
}

/// The cluster page: its live part, replaced on every change the server's
/// event stream reports (`sse-swap`), no reload, no polling.
pub(super) fn cluster(csrf: &str, view: &ClusterView) -> Markup {
    page(
        &view.name,
        Some(csrf),
        html! {
            h1 { "Cluster " (view.name) }
            div #live hx-ext="sse" sse-connect={ "/ui/clusters/" (segment(&view.name)) "/live" } sse-swap="cluster" {
                (cluster_live(view))
            }
        },
    )
}

pub(super) fn cluster_live(view: &ClusterView) -> Markup {
    html! {
        div.counts {
            div.count #members { b { (view.members) } "members" }
            div.count #leaders { b { (view.leaders) } "leaders" }
            div.count #managers { b { (view.managers) } "managers" }
            @for (wf, n) in &view.workflows {
                div.count.workflow {
                    b { (n) }
                    @if wf.is_empty() { "no workflow" } @else { "in " (wf) }
                }
            }
        }
        @if (view.shown.len() as u64) < view.members {
            p { "Showing the first " (view.shown.len()) " of " (view.members) " members." }
        }
        table #member-table {
            thead { tr { th { "Name" } th { "Role" } th { "Workflow" } th { "Icon" } th { "Uuid" } } }
            tbody {
                @for m in &view.shown {
                    tr {
                        td.name { (m.name) }
                        td class={ "role role-" (m.role) } { (m.role) }
                        td { (m.workflow) }
                        td { @if let Some(i) = &m.icon { span.icon { (i) } } }
                        td { code { (m.uuid) } }
                    }
                }
            }
        }
        p { small { "As of revision " span #revision { (view.revision) } "." } }
    }
}

/// The machine list: its filter, the page's rows and the total.
pub(super) struct MachineList<'a> {
    pub(super) filter: &'a str,
    /// A filter that did not parse or bind: the message and the input with
    /// a caret under the spot.
    pub(super) problem: Option<(String, String)>,
    pub(super) rows: Vec<Value>,
    pub(super) total: u64,
    pub(super) page: usize,
    pub(super) per_page: usize,
}

pub(super) fn machines(csrf: &str, list: &MachineList<'_>) -> Markup {
    let pages = (list.total as usize).div_ceil(list.per_page).max(1);
    let link = |page: usize| {
        format!(
            "/ui/machines?filter={}&page={page}",
            query_value(list.filter)
        )
    };
    page(
        "Machines",
        Some(csrf),
        html! {
            h1 { "Machines" }
            form method="get" action="/ui/machines" {
                input type="text" name="filter" value=(list.filter)
                    placeholder="Profiles Eq example cluster/leader Eq true";
                " "
                button type="submit" { "Filter" }
            }
            @if let Some((message, caret)) = &list.problem {
                div.error #filter-error {
                    (message)
                    pre.caret { (caret) }
                }
            } @else {
                div.pager {
                    span #total { (list.total) } " machines"
                    @if list.page > 0 { a href=(link(list.page - 1)) { "← previous" } }
                    span { "page " (list.page + 1) " of " (pages) }
                    @if list.page + 1 < pages { a href=(link(list.page + 1)) { "next →" } }
                }
                table #machine-table {
                    thead { tr { th { "Name" } th { "Workflow" } th { "Profiles" } th { "Icon" } th { "Uuid" } } }
                    tbody {
                        @for m in &list.rows {
                            tr {
                                td.name { (text(&m["Name"])) }
                                td { (text(&m["Workflow"])) }
                                td { (m["Profiles"].as_array().map(|p| p.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                                td { @let icon = text(&m["Meta"]["icon"]); @if !icon.is_empty() { span.icon { (icon) } } }
                                td { code { (text(&m["Uuid"])) } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// An error page.
pub(super) fn error(csrf: Option<&str>, message: &str) -> Markup {
    page(
        "Error",
        csrf,
        html! {
            h1 { "Cannot show this" }
            p.error { (message) }
        },
    )
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment.
pub(super) fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn query_value(s: &str) -> String {
    segment(s)
}
