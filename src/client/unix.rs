//! HTTP/1.1 over the Unix socket a running `fleetkv serve` keeps in its
//! store directory ([`SOCKET_FILE`]), for a client on the same host (`fleetkv
//! --data DIR …` while a server owns DIR, [`super::Http::over_socket`]).
//!
//! ureq 2 connects over TCP only, so requests on the socket are written
//! here: one request per connection (`Connection: close`), the answer's head
//! read up to `MAX_HEAD` bytes, its body by `Content-Length`, chunked
//! transfer coding or to the end. That is the whole of HTTP a client needs
//! from its own server.
//!
//! Also owns finding the socket: [`find`] refuses a path that is not a
//! socket or belongs to another user, and removes a stale one (nobody
//! listening: the server was killed).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::wire::SOCKET_FILE;

/// Largest answer head read.
const MAX_HEAD: usize = 64 << 10;

/// The live server socket in store directory `dir`, if there is one.
/// `Err` (with the reason) for a path that must not be used.
pub fn find(dir: &Path) -> Result<Option<PathBuf>, String> {
    let path = dir.join(SOCKET_FILE);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{} is not a socket; a fleetkv server keeps its socket there: remove the file",
            path.display()
        ));
    }
    let me = current_uid();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to user {}, not to you ({me}): refusing to send credentials to it",
            path.display(),
            meta.uid()
        ));
    }
    match UnixStream::connect(&path) {
        Ok(_) => Ok(Some(path)),
        // Nobody listens: a server that was killed left it behind.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let _ = std::fs::remove_file(&path);
            Ok(None)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// This process's effective user id. std has no `geteuid`, and the crate
/// takes no `libc` dependency for one call: `/proc/self` is owned by it.
fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// An answer: status, headers (lower-case names) and the body to read.
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// `(lower-case name, value)` in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, read as it arrives.
    pub body: Box<dyn Read + Send>,
}

impl Reply {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request to the server at `socket` and reads the answer's head.
pub fn send(
    socket: &Path,
    timeout: Duration,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Reply> {
    let mut conn = UnixStream::connect(socket)?;
    let timeout = (!timeout.is_zero()).then_some(timeout);
    conn.set_read_timeout(timeout)?;
    conn.set_write_timeout(timeout)?;
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if let Some(b) = body {
        conn.write_all(b)?;
    }
    let mut reader = BufReader::new(conn);
    let (status, headers) = read_head(&mut reader)?;
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body: Box<dyn Read + Send> = if method == "HEAD" || status == 204 || status == 304 {
        Box::new(io::empty())
    } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        Box::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
        })
    } else if let Some(len) = find("content-length") {
        let len = len
            .parse::<u64>()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        Box::new(reader.take(len))
    } else {
        Box::new(reader)
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The status line and headers, up to the empty line.
fn read_head(r: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut read = 0;
    let mut line = String::new();
    let mut next = |line: &mut String| -> io::Result<()> {
        line.clear();
        let n = r.read_line(line)?;
        read += n;
        if n == 0 {
            return Err(bad("the server closed the connection mid-answer".into()));
        }
        if read > MAX_HEAD {
            return Err(bad(format!("an answer head over {MAX_HEAD} bytes")));
        }
        Ok(())
    };
    next(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("not an HTTP status line: {:?}", line.trim_end())))?;
    let mut headers = Vec::new();
    loop {
        next(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            return Ok((status, headers));
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("not a header line: {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
}

/// A chunked body (RFC 9112 §7.1), trailers skipped.
struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Err(bad("the chunked body ended early".into()));
            }
            let size = line.trim_end().split(';').next().unwrap_or("").trim();
            self.left = u64::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if self.left == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    if self.inner.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(bad("the chunked body ended early".into()));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_and_heads_parse() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-DRP-List-Count: 3\r\n\r\n4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nTrailer: x\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let (status, headers) = read_head(&mut r).unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers[1], ("x-drp-list-count".into(), "3".into()));
        let mut body = String::new();
        Chunked {
            inner: r,
            left: 0,
            done: false,
        }
        .read_to_string(&mut body)
        .unwrap();
        assert_eq!(body, "abcdefg");
    }

    #[test]
    fn a_torn_answer_is_an_error() {
        let mut r = BufReader::new(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(read_head(&mut r).is_err());
        let mut r = BufReader::new(&b"garbage\r\n\r\n"[..]);
        assert!(read_head(&mut r).is_err());
        let mut body = Vec::new();
        let r = Chunked {
            inner: BufReader::new(&b"5\r\nab"[..]),
            left: 0,
            done: false,
        };
        assert!({ r }.read_to_end(&mut body).is_err());
    }
}
