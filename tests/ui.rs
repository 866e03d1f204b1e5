//! The UI over HTTP, without a browser (`.ci/ui.sh` drives a real one): the
//! login form and its cookies, CSRF on every form, claims on every page,
//! escaping, the live cluster stream, the machine list's paging and filter
//! errors.

mod common;

use std::io::{BufRead as _, BufReader};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;

/// One UI request (no redirects followed): (status, headers, body).
fn ui(
    s: &Server,
    method: &str,
    path: &str,
    cookies: &str,
    form: Option<&[(&str, &str)]>,
) -> (u16, Vec<(String, String)>, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut r = agent.request(method, &format!("{}{path}", s.url));
    if !cookies.is_empty() {
        r = r.set("Cookie", cookies);
    }
    let res = match form {
        Some(pairs) => r.send_form(pairs),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .flat_map(|n| {
            resp.all(&n)
                .into_iter()
                .map(|v| (n.clone(), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    (status, headers, resp.into_string().unwrap())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `name=value` of the `Set-Cookie` for `name`.
fn cookie_pair(headers: &[(String, String)], name: &str) -> String {
    header(headers, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie in {headers:?}"))
        .to_string()
}

fn hidden_csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

/// Logs in with `credential`: the session cookie pair and the session's
/// CSRF token.
fn log_in(s: &Server, credential: &str) -> (String, String) {
    let (_, h, page) = ui(s, "GET", "/ui/login", "", None);
    let login = cookie_pair(&h, "fleetkv_login");
    let (st, h, _) = ui(
        s,
        "POST",
        "/ui/login",
        &login,
        Some(&[("credential", credential), ("csrf", &hidden_csrf(&page))]),
    );
    assert_eq!(st, 303);
    let session = cookie_pair(&h, "fleetkv_session");
    let (_, _, index) = ui(s, "GET", "/ui/", &session, None);
    (session, hidden_csrf(&index))
}

fn cluster_of_13(s: &Server) {
    assert_eq!(s.cli(&["cluster", "init", "example"]).0, 0);
    for i in 1..=13 {
        let m = json!({"Name": format!("member-{i:02}"), "Profiles": ["example"]});
        assert_eq!(s.json("POST", "/machines", &m).0, 201);
    }
    for (m, role) in [
        ("member-01", "manager"),
        ("member-02", "leader"),
        ("member-03", "leader"),
        ("member-04", "leader"),
    ] {
        let (code, _, err) = s.cli(&["cluster", "role", "example", m, role]);
        assert_eq!(code, 0, "{err}");
    }
}

#[test]
fn login_sets_strict_http_only_cookies_and_refuses_forged_forms() {
    let s = Server::start(&[]);
    // Not logged in: to the form.
    let (st, h, _) = ui(&s, "GET", "/ui/", "", None);
    assert_eq!(st, 303);
    assert_eq!(header(&h, "location"), ["/ui/login"]);
    let (st, h, page) = ui(&s, "GET", "/ui/login", "", None);
    assert_eq!(st, 200);
    let login_cookie = header(&h, "set-cookie")[0].to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(login_cookie.contains(flag), "{login_cookie}");
    }
    assert!(header(&h, "content-security-policy")[0].contains("script-src 'self'"));
    let csrf = hidden_csrf(&page);
    let login = cookie_pair(&h, "fleetkv_login");
    // A form posted without the login cookie (another site's page) or with
    // a token that is not the cookie's is refused, whatever the credential.
    for (cookies, token) in [
        ("", csrf.as_str()),
        (login.as_str(), "0".repeat(64).as_str()),
    ] {
        let (st, h, _) = ui(
            &s,
            "POST",
            "/ui/login",
            cookies,
            Some(&[("credential", &s.key), ("csrf", token)]),
        );
        assert_eq!(st, 403);
        assert!(header(&h, "set-cookie")
            .iter()
            .all(|c| !c.starts_with("fleetkv_session")));
    }
    // A wrong credential: 401 and the form again.
    let (st, _, page) = ui(
        &s,
        "POST",
        "/ui/login",
        &login,
        Some(&[("credential", "admin:wrong"), ("csrf", &csrf)]),
    );
    assert_eq!(st, 401);
    assert!(page.contains("wrong user or password"), "{page}");
    // The admin key: a session cookie, HttpOnly and SameSite=Strict.
    let (st, h, _) = ui(
        &s,
        "POST",
        "/ui/login",
        &login,
        Some(&[("credential", &s.key), ("csrf", &csrf)]),
    );
    assert_eq!(st, 303);
    let set = header(&h, "set-cookie");
    let session = set
        .iter()
        .find(|c| c.starts_with("fleetkv_session="))
        .unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(session.contains(flag), "{session}");
    }
    let session = cookie_pair(&h, "fleetkv_session");
    let (st, _, index) = ui(&s, "GET", "/ui/", &session, None);
    assert_eq!(st, 200);
    // Logging out needs the session's CSRF token.
    let (st, _, _) = ui(&s, "POST", "/ui/logout", &session, Some(&[("csrf", &csrf)]));
    assert_eq!(st, 403);
    assert_eq!(ui(&s, "GET", "/ui/", &session, None).0, 200);
    let (st, _, _) = ui(
        &s,
        "POST",
        "/ui/logout",
        &session,
        Some(&[("csrf", &hidden_csrf(&index))]),
    );
    assert_eq!(st, 303);
    assert_eq!(ui(&s, "GET", "/ui/", &session, None).0, 303);
}

#[test]
fn the_cluster_page_counts_roles_and_escapes_names() {
    let s = Server::start(&[]);
    cluster_of_13(&s);
    let evil = json!({"Name": "<script>alert(1)</script>", "Profiles": ["example"], "Meta": {"icon": "<b>x</b>"}});
    assert_eq!(s.json("POST", "/machines", &evil).0, 201);
    let (session, _) = log_in(&s, &s.key);
    let (st, _, index) = ui(&s, "GET", "/ui/", &session, None);
    assert_eq!(st, 200);
    assert!(index.contains("href=\"/ui/clusters/example\""), "{index}");
    let (st, _, page) = ui(&s, "GET", "/ui/clusters/example", &session, None);
    assert_eq!(st, 200);
    assert!(page.contains("id=\"members\"><b>14</b>"), "{page}");
    assert!(page.contains("id=\"leaders\"><b>3</b>"), "{page}");
    assert!(page.contains("id=\"managers\"><b>1</b>"), "{page}");
    assert_eq!(page.matches("class=\"role role-leader\"").count(), 3);
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script>alert"));
    assert!(page.contains("&lt;b&gt;x&lt;/b&gt;"));
    // No such cluster: a page with the API's status.
    let (st, _, page) = ui(&s, "GET", "/ui/clusters/nope", &session, None);
    assert_eq!(st, 404, "{page}");
    assert!(page.starts_with("<!DOCTYPE html>"));
}

#[test]
fn every_page_asks_the_claims() {
    let s = Server::start(&[]);
    cluster_of_13(&s);
    // A token for the profile only: it may read its profile, not list machines.
    let (code, token, err) = s.cli(&["profiles", "token", "example", "--ttl", "600"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().trim_matches('"');
    let (session, _) = log_in(&s, token);
    for path in ["/ui/", "/ui/clusters/example", "/ui/machines"] {
        let (st, _, page) = ui(&s, "GET", path, &session, None);
        assert_eq!(st, 403, "{path}: {page}");
    }
    // A token that does not verify never gets a session.
    let (_, h, page) = ui(&s, "GET", "/ui/login", "", None);
    let (st, h, _) = ui(
        &s,
        "POST",
        "/ui/login",
        &cookie_pair(&h, "fleetkv_login"),
        Some(&[("credential", "not-a-token"), ("csrf", &hidden_csrf(&page))]),
    );
    assert_eq!(st, 401);
    assert!(header(&h, "set-cookie")
        .iter()
        .all(|c| !c.starts_with("fleetkv_session")));
}

#[test]
fn the_live_stream_sends_a_new_view_after_a_change() {
    let s = Server::start(&[]);
    cluster_of_13(&s);
    let (session, _) = log_in(&s, &s.key);
    let resp = ureq::get(&format!("{}/ui/clusters/example/live", s.url))
        .set("Cookie", &session)
        .timeout(Duration::from_secs(20))
        .call()
        .unwrap();
    assert!(resp.content_type().starts_with("text/event-stream"));
    let mut lines = BufReader::new(resp.into_reader()).lines();
    let mut next_view = || -> String {
        let mut data = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.is_empty() && !data.is_empty() {
                return data;
            }
            if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                data.push_str(d);
                data.push('\n');
            }
        }
        panic!("the stream ended");
    };
    let first = next_view();
    assert!(first.contains("id=\"leaders\"><b>3</b>"), "{first}");
    let (code, _, err) = s.cli(&["cluster", "role", "example", "member-05", "leader"]);
    assert_eq!(code, 0, "{err}");
    let changed = Instant::now();
    let second = next_view();
    assert!(second.contains("id=\"leaders\"><b>4</b>"), "{second}");
    eprintln!(
        "new view {} ms after the write",
        changed.elapsed().as_millis()
    );
    // Without a session there is no stream.
    let r = ureq::get(&format!("{}/ui/clusters/example/live", s.url)).call();
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
}

#[test]
fn the_machine_list_pages_from_the_count_and_shows_filter_errors_with_a_caret() {
    let s = Server::start(&[]);
    let batch: Vec<_> = (0..120)
        .map(|i| json!({"Name": format!("node-{i:03}"), "Params": {"rack": i % 3}}))
        .collect();
    let (st, v, _) = s.call(
        "POST",
        "/import?kind=machines",
        Some(("application/json", &json!(batch).to_string())),
        &[],
    );
    assert_eq!(st, 200, "{v}");
    let (session, _) = log_in(&s, &s.key);
    let (st, _, page) = ui(
        &s,
        "GET",
        "/ui/machines?filter=rack+Eq+1&page=0",
        &session,
        None,
    );
    assert_eq!(st, 200);
    assert!(page.contains("id=\"total\">40</span>"), "{page}");
    assert_eq!(page.matches("<td class=\"name\">").count(), 40);
    let (_, _, page) = ui(&s, "GET", "/ui/machines", &session, None);
    assert!(page.contains("id=\"total\">120</span>"));
    assert!(page.contains("page 1 of 3"));
    assert_eq!(page.matches("<td class=\"name\">").count(), 50);
    let (_, _, last) = ui(&s, "GET", "/ui/machines?filter=&page=2", &session, None);
    assert_eq!(last.matches("<td class=\"name\">").count(), 20);
    assert!(last.contains("node-119") && !last.contains("next →"));
    let (st, _, page) = ui(&s, "GET", "/ui/machines?filter=rack+Eqq+1", &session, None);
    assert_eq!(st, 200);
    assert!(page.contains("unknown operator at byte 5"), "{page}");
    assert!(
        page.contains("<pre class=\"caret\">rack Eqq 1\n     ^</pre>"),
        "{page}"
    );
    // The filter is echoed escaped.
    let (_, _, page) = ui(
        &s,
        "GET",
        "/ui/machines?filter=Name+Eq+%22%3Cscript%3E",
        &session,
        None,
    );
    assert!(!page.contains("<script>\""), "{page}");
}

#[test]
fn the_scripts_are_served_from_the_binary() {
    let s = Server::start(&[]);
    for path in [
        "/ui/assets/htmx-2.0.11.min.js",
        "/ui/assets/htmx-ext-sse-2.2.4.min.js",
    ] {
        let (st, h, body) = ui(&s, "GET", path, "", None);
        assert_eq!(st, 200, "{path}");
        assert!(header(&h, "content-type")[0].starts_with("text/javascript"));
        assert!(body.len() > 2000);
    }
    assert_eq!(ui(&s, "GET", "/ui/assets/nope.js", "", None).0, 404);
}

#[test]
fn a_live_page_that_stops_reading_is_dropped_and_frees_its_slot() {
    use std::io::{Read as _, Write as _};
    // One waiter slot: while the stalled page holds it, waits get 503.
    let s = Server::start(&["--write-timeout", "1", "--max-waiters", "1"]);
    assert_eq!(s.cli(&["cluster", "init", "c"]).0, 0);
    let m = json!({"Name": "big", "Profiles": ["c"]});
    assert_eq!(s.json("POST", "/machines", &m).0, 201);
    let (session, _) = log_in(&s, &s.key);
    let mut c = std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap();
    write!(
        c,
        "GET /ui/clusters/c/live HTTP/1.1\r\nHost: x\r\nCookie: {session}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let wait = "/wait/count?until=%3E%3D0&timeout=0";
    assert_eq!(
        s.call("GET", wait, None, &[]).0,
        503,
        "the page holds the slot"
    );
    // Each change renders the page's live part again, a 256 KiB icon
    // included: ~15 MB the browser never reads.
    for i in 0..60 {
        let icon = format!("{i}{}", "x".repeat(256 << 10));
        let patch = json!([{"op": "add", "path": "/Meta/icon", "value": icon}]).to_string();
        let (st, _, _) = s.call(
            "PATCH",
            "/machines/Name:big",
            Some(("application/json-patch+json", &patch)),
            &[],
        );
        assert_eq!(st, 200);
        std::thread::sleep(Duration::from_millis(60)); // one render each
    }
    let mut freed = false;
    for _ in 0..200 {
        if s.call("GET", wait, None, &[]).0 == 200 {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(freed, "the stalled page still holds its waiter slot");
    drop(c);
}
