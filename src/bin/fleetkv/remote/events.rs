//! `watch` on a server: the server-sent events of `GET /api/v3/events`,
//! printed as the JSON lines the embedded `watch` prints; `machines
//! watch-count` likewise from `GET /api/v3/watch/members`.
//!
//! A reader thread holds the stream and parses it ([`Parser`]: the
//! `text/event-stream` format — `field: value` lines, `:` comments, an empty
//! line ending an event). Each `change` event's data is the event's JSON,
//! serialized by the server exactly as the embedded watch does, and is
//! printed as is. A dropped connection (or one silent for longer than the
//! server's 15-second keep-alives allow) is reopened with `Last-Event-ID`,
//! so nothing is lost or repeated. An `error` event (a compacted log, a
//! failed read) reopens the stream once: the server then answers the reason
//! as a typed error (a compacted revision is a 400, exit 2), else the
//! message ends the watch (exit 1).
//!
//! `--timeout S` ends the watch (exit 0, like the embedded one) S seconds
//! after the server accepted the stream, so the backlog of `--from` is read
//! whatever the connection's set-up cost.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleetkv::{Filter, Kind};

use super::{enc, filter_text, status_failure, transport, Remote};
use crate::{Failure, Out};

/// Longest silence on a stream before it is taken as dropped (the server
/// sends a keep-alive comment every 15 seconds).
const SILENCE: Duration = Duration::from_secs(45);

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `event:` (default `message`).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last event id seen on the stream so far (`id:`).
    pub id: Option<String>,
}

/// A `text/event-stream` parser, fed one line at a time.
#[derive(Default)]
pub struct Parser {
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
}

impl Parser {
    /// Feeds one line (with or without its line ending); returns the event
    /// an empty line completes.
    pub fn line(&mut self, line: &str) -> Option<Message> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(Message {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data: data.strip_suffix('\n').unwrap_or(&data).to_string(),
                id: self.last_id.clone(),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// What the reader thread hands over.
enum Item {
    /// The stream is open (the first time only).
    Open,
    /// One event's JSON line.
    Line(String),
    /// The end, with why.
    Failed(Failure),
}

impl Remote {
    /// `watch KIND [FILTER] [--from REV] [--timeout S]` on the server.
    pub fn watch(
        &self,
        kind: Kind,
        filter: Option<Filter>,
        from: Option<u64>,
        timeout: Option<Duration>,
    ) -> Out {
        let mut path = format!("{}/events?kind={}", self.http.base(), kind.plural());
        if let Some(f) = &filter {
            path += &format!("&filter={}", enc(&filter_text(f), false));
        }
        if let Some(r) = from {
            path += &format!("&from={r}");
        }
        self.stream(path, "change", timeout)
    }

    /// `cluster observe NAME`: the leaders stream of `path`.
    pub fn observe(&self, path: &str, timeout: Option<f64>) -> Out {
        let timeout = timeout.map(crate::seconds).transpose()?;
        self.stream(format!("{}{path}", self.http.base()), "leaders", timeout)
    }

    /// `machines watch-count FILTER… [--members] [--from REV] [--timeout S]`
    /// on the server: the messages of `GET /api/v3/watch/members`, printed
    /// as the embedded verb prints them. A reconnect resumes after the last
    /// message's revision (`Last-Event-ID`).
    pub fn watch_members(
        &self,
        filter: &Filter,
        members: bool,
        from: Option<u64>,
        timeout: Option<Duration>,
    ) -> Out {
        let mut path = format!(
            "{}/watch/members?filter={}",
            self.http.base(),
            enc(&filter_text(filter), false)
        );
        if members {
            path += "&members=true";
        }
        if let Some(r) = from {
            path += &format!("&from={r}");
        }
        self.stream(path, "members", timeout)
    }

    /// Prints the data of each `event` event of the stream at `path` as a
    /// line, reopening the stream after a drop, until `timeout` after it
    /// first opened.
    fn stream(&self, path: String, event: &'static str, timeout: Option<Duration>) -> Out {
        let auth = self.http.authorization().map(String::from);
        let open: Opener = match self.http.socket() {
            Some(socket) => {
                let (socket, timeout) = (socket.to_path_buf(), self.http.timeout());
                let target = path.trim_start_matches(self.http.base()).to_string();
                let url = path.clone();
                Box::new(move |last_id| {
                    let mut headers = vec![("Accept", "text/event-stream")];
                    if let Some(a) = &auth {
                        headers.push(("Authorization", a));
                    }
                    if let Some(id) = last_id {
                        headers.push(("Last-Event-ID", id));
                    }
                    let reply = fleetkv::client::unix::send(
                        &socket,
                        timeout.max(SILENCE),
                        "GET",
                        &format!("/api/v3{target}"),
                        &headers,
                        None,
                    )
                    .map_err(|e| Refused::Down(super::unreachable(&url, &e)))?;
                    if reply.status >= 400 {
                        let mut text = String::new();
                        let _ = { reply.body }.read_to_string(&mut text);
                        return Err(Refused::Status(status_failure(&url, reply.status, &text)));
                    }
                    Ok(reply.body)
                })
            }
            None => {
                let agent = self
                    .agent_builder()
                    .timeout_connect(self.http.timeout())
                    .timeout_read(SILENCE)
                    .build();
                let url = path.clone();
                Box::new(move |last_id| {
                    let mut r = agent.get(&url).set("Accept", "text/event-stream");
                    if let Some(a) = &auth {
                        r = r.set("Authorization", a);
                    }
                    if let Some(id) = last_id {
                        r = r.set("Last-Event-ID", id);
                    }
                    match r.call() {
                        Ok(resp) => Ok(Box::new(resp.into_reader()) as Box<dyn Read + Send>),
                        Err(ureq::Error::Status(code, resp)) => {
                            let text = resp.into_string().unwrap_or_default();
                            Err(Refused::Status(status_failure(&url, code, &text)))
                        }
                        Err(ureq::Error::Transport(t)) => Err(Refused::Down(transport(&url, &t))),
                    }
                })
            }
        };
        let (tx, rx) = mpsc::channel();
        let retry_for = self.http.timeout();
        std::thread::spawn(move || read(&*open, event, retry_for, &tx));
        let mut deadline: Option<Instant> = None;
        loop {
            let item = match deadline {
                None => rx.recv().ok(),
                Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(i) => Some(i),
                    Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                },
            };
            match item {
                Some(Item::Open) => deadline = timeout.map(|t| Instant::now() + t),
                Some(Item::Line(l)) => outln!("{l}"),
                Some(Item::Failed(f)) => return Err(f),
                None => return Err(Failure::other("the event stream ended")),
            }
        }
    }
}

/// Opens the event stream (resuming after the given event id): its body,
/// or why not.
type Open = dyn Fn(Option<&str>) -> Result<Box<dyn Read + Send>, Refused> + Send;
type Opener = Box<Open>;

/// Why the stream did not open.
enum Refused {
    /// The server answered an error: final.
    Status(Failure),
    /// The server was not reached: retried for a while once the stream has
    /// been open.
    Down(Failure),
}

/// The reader thread: opens the stream, parses it, reopens it after a drop.
fn read(open: &Open, event: &str, retry_for: Duration, tx: &mpsc::Sender<Item>) {
    let mut last_id: Option<String> = None;
    let mut opened = false;
    // An `error` event reopens the stream once; two in a row end the watch.
    let mut after_error: Option<String> = None;
    let mut down_since: Option<Instant> = None;
    loop {
        let body = match open(last_id.as_deref()) {
            Ok(body) => body,
            Err(Refused::Status(f)) => {
                let _ = tx.send(Item::Failed(f));
                return;
            }
            Err(Refused::Down(f)) => {
                let since = *down_since.get_or_insert_with(Instant::now);
                if !opened || since.elapsed() >= retry_for {
                    let _ = tx.send(Item::Failed(f));
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        down_since = None;
        if !opened {
            opened = true;
            if tx.send(Item::Open).is_err() {
                return;
            }
        }
        let mut parser = Parser::default();
        let mut reader = BufReader::new(body);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let Some(m) = parser.line(&line) else {
                continue;
            };
            if m.id.is_some() {
                last_id = m.id.clone();
            }
            match m.event.as_str() {
                e if e == event => {
                    after_error = None;
                    if tx.send(Item::Line(m.data)).is_err() {
                        return;
                    }
                }
                "error" => {
                    if let Some(prev) = after_error.take() {
                        let _ = tx.send(Item::Failed(Failure::other(prev)));
                        return;
                    }
                    after_error = Some(m.data);
                    break;
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(text: &str) -> Vec<Message> {
        let mut p = Parser::default();
        text.split_inclusive('\n')
            .filter_map(|l| p.line(l))
            .collect()
    }

    #[test]
    fn events_ids_and_comments() {
        let got = feed(
            ": keep-alive\n\nid: 3.0\nevent: change\ndata: {\"a\":1}\n\n:\n\
             event: change\ndata:{\"b\":2}\r\n\r\n",
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].event, "change");
        assert_eq!(got[0].data, "{\"a\":1}");
        assert_eq!(got[0].id.as_deref(), Some("3.0"));
        // No leading space to strip; CRLF endings; the last id carries over.
        assert_eq!(got[1].data, "{\"b\":2}");
        assert_eq!(got[1].id.as_deref(), Some("3.0"));
    }

    #[test]
    fn multi_line_data_and_defaults() {
        let got = feed("data: one\ndata\ndata:  two\nretry: 10\nid: bad\0id\n\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, "message");
        assert_eq!(got[0].data, "one\n\n two");
        assert_eq!(got[0].id, None, "an id with NUL is ignored");
    }

    #[test]
    fn an_event_without_data_is_dropped() {
        let got = feed("event: change\nid: 7.1\n\ndata: x\n\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, "message", "the event name was reset");
        assert_eq!(got[0].id.as_deref(), Some("7.1"));
    }
}
