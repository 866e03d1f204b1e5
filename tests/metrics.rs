//! `GET /metrics` end to end: the real `fleetkv serve` scraped over HTTP on
//! its main listener (claim `metrics/get/*`) and on `--metrics-listen`.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

/// A running server with its metrics listener; killed on drop.
struct Served {
    server: common::Server,
    metrics_url: String,
}

impl std::ops::Deref for Served {
    type Target = common::Server;
    fn deref(&self) -> &common::Server {
        &self.server
    }
}

impl Served {
    /// `fleetkv serve` on the store at `data` (a fresh one when `None`).
    fn start(data: Option<&std::path::Path>, extra: &[&str]) -> Served {
        let extra = [&["--metrics-listen", "127.0.0.1:0"], extra].concat();
        let server = match data {
            Some(d) => common::Server::start_at(d, &extra),
            None => common::Server::start(&extra),
        };
        let metrics_url = server
            .banner
            .iter()
            .find_map(|l| l.strip_prefix("fleetkv: metrics on "))
            .expect("the metrics listener's address before the main one")
            .to_string();
        Served {
            server,
            metrics_url,
        }
    }

    /// (status, body text) of `method url` with `auth` as Authorization.
    fn raw(
        &self,
        method: &str,
        url: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, String) {
        let mut r = ureq::request(method, url);
        if let Some(a) = auth {
            r = r.set("Authorization", a);
        }
        let res = match body {
            Some(b) => r
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => r.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        (resp.status(), resp.into_string().unwrap())
    }

    fn admin(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// An API call as admin: the status.
    fn api(&self, method: &str, path: &str, body: Option<Value>) -> u16 {
        let url = format!("{}/api/v3{path}", self.url);
        self.raw(method, &url, Some(&self.admin()), body.as_ref()).0
    }

    /// The main listener's `/metrics`, as admin.
    fn scrape(&self) -> Scrape {
        let (st, text) = self.raw(
            "GET",
            &format!("{}/metrics", self.url),
            Some(&self.admin()),
            None,
        );
        assert_eq!(st, 200, "{text}");
        Scrape::parse(&text)
    }
}

/// A parsed exposition: `# TYPE` per name, and every sample.
struct Scrape {
    text: String,
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, ty) = t.split_once(' ').unwrap();
                types.insert(name.to_string(), ty.to_string());
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').unwrap();
                    let labels = body
                        .split("\",")
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").unwrap();
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Scrape {
            text: text.to_string(),
            types,
            samples,
        }
    }

    /// The sample `name` whose labels include `labels` (0 when absent).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} is not one series: {found:?}"
        );
        found.first().copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

const POST_KIND: [(&str, &str); 2] = [("method", "POST"), ("route", "/api/v3/{kind}")];

#[test]
fn scrape_names_types_and_counters_that_move() {
    let s = Served::start(None, &["--durable"]);
    let before = s.scrape();

    // Writes of each kind and outcome, with names, keys and values that
    // must not reach the output.
    assert_eq!(
        s.api(
            "POST",
            "/params",
            Some(json!({"Name": "leakdef", "Schema": {"type": "string"}}))
        ),
        201
    );
    assert_eq!(
        s.api("POST", "/profiles", Some(json!({"Name": "leakprofile"}))),
        201
    );
    for i in 0..20 {
        let m = json!({"Name": format!("leakmachine{i}"), "Params": {"leakkey": format!("leakvalue{i}")}});
        assert_eq!(s.api("POST", "/machines", Some(m)), 201);
    }
    assert_eq!(
        s.api("POST", "/machines", Some(json!({"Name": "leakmachine0"}))),
        409
    );
    assert_eq!(s.api("POST", "/machines", Some(json!({"Name": ""}))), 400);
    assert_eq!(
        s.api(
            "POST",
            "/machines/Name:leakmachine1/params/leakkey",
            Some(json!("leaksetvalue"))
        ),
        200
    );
    assert_eq!(
        s.api("GET", "/machines/Name:leakmachine1/params/leakkey", None),
        200
    );
    // Not a route: counted as `unmatched`, whatever the path or method.
    assert_eq!(
        s.raw(
            "GET",
            &format!("{}/leakpath/x", s.url),
            Some(&s.admin()),
            None
        )
        .0,
        404
    );
    let odd = s.raw(
        "LEAKMETHOD",
        &format!("{}/api/v3/machines", s.url),
        Some(&s.admin()),
        None,
    );
    assert!(odd.0 >= 400, "{odd:?}");

    // An event stream, open while scraped, that has handed on one event.
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /api/v3/events?kind=machines HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        s.admin()
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 1];
    stream.read_exact(&mut head).unwrap(); // the response has begun
    assert_eq!(
        s.api("POST", "/machines", Some(json!({"Name": "streamed"}))),
        201
    );
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("event: change") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }

    // The background checkpoint of a new store's first writes is recorded
    // when it ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let a = s.scrape();
        if a.has("fleetkv_checkpoint_duration_seconds_count") || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    let types = [
        ("fleetkv_http_requests_total", "counter"),
        ("fleetkv_http_request_duration_seconds", "histogram"),
        ("fleetkv_writes_total", "counter"),
        ("fleetkv_write_duration_seconds", "histogram"),
        ("fleetkv_fsync_duration_seconds", "histogram"),
        ("fleetkv_open_duration_seconds", "gauge"),
        ("fleetkv_checkpoint_duration_seconds", "histogram"),
        ("fleetkv_store_revision", "gauge"),
        ("fleetkv_objects", "gauge"),
        ("fleetkv_index_memory_bytes", "gauge"),
        ("fleetkv_changelog_events", "gauge"),
        ("fleetkv_waiters_open", "gauge"),
        ("fleetkv_waiters_limit", "gauge"),
        ("fleetkv_event_streams_open", "gauge"),
        ("fleetkv_watch_lag_revisions", "histogram"),
    ];
    for (name, ty) in types {
        assert_eq!(
            after.types.get(name).map(String::as_str),
            Some(ty),
            "# TYPE {name}\n{}",
            after.text
        );
    }
    assert!(
        after
            .types
            .keys()
            .all(|n| types.iter().any(|(t, _)| t == n)),
        "undocumented metrics: {:?}",
        after.types.keys()
    );

    // Nothing the callers sent: names, param keys and values, paths, methods, credentials.
    for secret in ["leak", "streamed", &s.key] {
        assert!(!after.text.contains(secret), "{secret:?} in the scrape");
    }

    // Requests, by route template and status.
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let created = [POST_KIND[0], POST_KIND[1], ("status", "201")];
    assert_eq!(moved("fleetkv_http_requests_total", &created), 23.0);
    assert_eq!(
        moved("fleetkv_http_request_duration_seconds_count", &created),
        23.0
    );
    let conflict = [POST_KIND[0], POST_KIND[1], ("status", "409")];
    assert_eq!(moved("fleetkv_http_requests_total", &conflict), 1.0);
    let param = [
        ("method", "GET"),
        ("route", "/api/v3/{kind}/{id}/params/{*key}"),
        ("status", "200"),
    ];
    assert_eq!(moved("fleetkv_http_requests_total", &param), 1.0);
    assert_eq!(
        after.get(
            "fleetkv_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(after.get("fleetkv_http_requests_total", &[("method", "other")]) >= 1.0);
    // The earlier scrapes are requests too.
    assert!(
        after.get(
            "fleetkv_http_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        ) >= 1.0
    );

    // Writes, by kind and outcome, timed; each durable write flushed.
    let writes = |kind: &str, outcome: &str| {
        moved(
            "fleetkv_writes_total",
            &[("kind", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(writes("machine", "ok"), 22.0);
    assert_eq!(writes("machine", "conflict"), 1.0);
    assert_eq!(writes("machine", "invalid"), 1.0);
    assert_eq!(writes("profile", "ok"), 1.0);
    assert_eq!(writes("param", "ok"), 1.0);
    assert_eq!(
        moved(
            "fleetkv_write_duration_seconds_count",
            &[("kind", "machine"), ("outcome", "ok")]
        ),
        22.0
    );
    assert!(
        moved(
            "fleetkv_write_duration_seconds_sum",
            &[("kind", "machine"), ("outcome", "ok")]
        ) > 0.0
    );
    assert!(moved("fleetkv_fsync_duration_seconds_count", &[]) >= 24.0);
    assert!(after.get("fleetkv_open_duration_seconds", &[]) > 0.0);
    assert!(after.get("fleetkv_checkpoint_duration_seconds_count", &[]) >= 1.0);

    // The store's gauges, read at the scrape.
    let (_, info) = s.raw("GET", &format!("{}/api/v3/info", s.url), None, None);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        after.get("fleetkv_store_revision", &[]),
        info["Revision"].as_f64().unwrap()
    );
    assert_eq!(after.get("fleetkv_objects", &[("kind", "machines")]), 21.0);
    assert_eq!(after.get("fleetkv_objects", &[("kind", "profiles")]), 2.0);
    assert_eq!(after.get("fleetkv_objects", &[("kind", "params")]), 1.0);
    assert!(
        after.get("fleetkv_changelog_events", &[]) > before.get("fleetkv_changelog_events", &[])
    );
    // The index gauge is measured again only once the time since its last
    // measure is 100 times what that one took (`observe_store`): on a slow
    // build that can be after `after` was taken.
    let ix = |sc: &Scrape| sc.get("fleetkv_index_memory_bytes", &[("kind", "machines")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let grown = loop {
        let now = ix(&s.scrape());
        if now > ix(&before) + 21.0 * 100.0 || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        grown > ix(&before) + 21.0 * 100.0,
        "{} → {grown}",
        ix(&before),
    );

    // The stream, while it is open.
    assert_eq!(after.get("fleetkv_event_streams_open", &[]), 1.0);
    assert_eq!(after.get("fleetkv_waiters_open", &[]), 1.0);
    assert_eq!(after.get("fleetkv_waiters_limit", &[]), 256.0);
    assert!(after.get("fleetkv_watch_lag_revisions_count", &[]) >= 1.0);
    drop(stream);
}

#[test]
fn the_claim_guards_the_main_listener_and_the_metrics_listener_is_open() {
    // Tokens minted on the store before the server opens it.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let (allowed, refused) = {
        let store = fleetkv::Store::open(&data).unwrap();
        let mint = |c: &str| {
            store
                .generate_token(&[c.parse().unwrap()], Duration::from_secs(600))
                .unwrap()
        };
        (mint("metrics/get/*"), mint("machines/*/*"))
    };
    let s = Served::start(Some(&data), &[]);
    let url = format!("{}/metrics", s.url);

    let (st, body) = s.raw("GET", &url, None, None);
    assert_eq!(st, 401, "{body}");
    let (st, body) = s.raw("GET", &url, Some(&format!("Bearer {refused}")), None);
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("metrics/get/*"), "{body}");
    let (st, body) = s.raw("GET", &url, Some(&format!("Bearer {allowed}")), None);
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("# TYPE fleetkv_store_revision gauge"),
        "{body}"
    );
    // A basic-auth user passes, as for every call.
    let basic = format!("Basic {}", base64(&format!("admin:{}", s.key)));
    assert_eq!(s.raw("GET", &url, Some(&basic), None).0, 200);

    // The separate listener: no credentials, the same figures, nothing else.
    let (st, open) = s.raw("GET", &s.metrics_url, None, None);
    assert_eq!(st, 200, "{open}");
    let open = Scrape::parse(&open);
    assert_eq!(
        open.types
            .get("fleetkv_http_requests_total")
            .map(String::as_str),
        Some("counter")
    );
    // The refused scrapes were counted, the token's path as its template.
    assert_eq!(
        open.get(
            "fleetkv_http_requests_total",
            &[("route", "/metrics"), ("status", "403")]
        ),
        1.0
    );
    assert_eq!(
        open.get(
            "fleetkv_http_requests_total",
            &[("route", "/metrics"), ("status", "401")]
        ),
        1.0
    );
    let other = s.metrics_url.replace("/metrics", "/api/v3/machines");
    assert_eq!(s.raw("GET", &other, None, None).0, 404);
    for secret in [allowed.as_str(), refused.as_str(), &s.key] {
        assert!(!open.text.contains(secret), "a credential in the scrape");
    }
}

/// Standard base64, for a basic-auth header.
fn base64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = c.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) << (8 * (3 - c.len()));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}
