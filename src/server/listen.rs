//! The accept loop: TCP (or TLS) and Unix-socket connections served by
//! hyper's HTTP/1.1.
//!
//! Owns: accepting connections, the TLS handshake, per-connection limits that
//! must hold below HTTP requests — a deadline for a request's headers
//! (slowloris), a deadline for a write the client does not drain (a client
//! that stops reading, e.g. an event stream left open), a cap on open
//! connections and on header bytes — and the graceful stop. Must not: route,
//! authenticate or touch the store; it only hands each connection to the
//! router.
//!
//! `axum::serve` sets no timer, so hyper's header read timeout never fires
//! there; serving connections here is what makes the deadlines real.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

/// Limits every connection is held to.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimits {
    /// Longest a client may take to send a request's headers (and, with TLS,
    /// to finish the handshake).
    pub header_timeout: Duration,
    /// Longest a write may wait for a client to read.
    pub write_timeout: Duration,
    /// Largest request head hyper buffers before answering 431 itself.
    pub max_head_bytes: usize,
    /// Most connections open at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// How long a stop waits for open connections (event streams never end).
    pub grace: Duration,
}

/// A TLS acceptor from PEM files: the certificate chain and its private key.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {}: no certificate in the file",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Where connections come from: TCP (`--listen`, `--metrics-listen`) or the
/// Unix socket in the store directory.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connection, whichever listener it came from.
trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

impl Listener {
    async fn accept(&self) -> std::io::Result<Box<dyn Conn>> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, _) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok(Box::new(tcp))
            }
            Listener::Unix(l) => Ok(Box::new(l.accept().await?.0)),
        }
    }
}

/// Binds the Unix socket in store directory `dir` (mode 0600). The outer
/// `Err` refuses to start: something that is not a socket is where the
/// socket goes. The inner `Err` says why there is no socket (a path too
/// long for one, say) and the server goes on without it. A socket left
/// there is stale: this process holds the store's lock, so no other server
/// serves this directory; it is replaced.
pub(crate) fn bind_socket(
    dir: &Path,
) -> Result<Result<(UnixListener, std::path::PathBuf), String>, String> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let path = dir.join(crate::wire::SOCKET_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(format!(
                "{} is not a socket; the server keeps its socket there: remove the file",
                path.display()
            ))
        }
        Ok(_) => {
            if let Err(e) = std::fs::remove_file(&path) {
                return Ok(Err(format!("cannot replace {}: {e}", path.display())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Ok(Err(format!("{}: {e}", path.display()))),
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => return Ok(Err(format!("cannot listen on {}: {e}", path.display()))),
    };
    // Owner only. Between bind and here the socket has the umask's mode;
    // a client that connects then still needs credentials, as on TCP.
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(&path);
        return Ok(Err(format!("cannot make {} private: {e}", path.display())));
    }
    Ok(Ok((listener, path)))
}

/// Serves `router` on `listener` until `stop` resolves, then stops accepting,
/// lets open connections finish their requests (up to `limits.grace`) and
/// returns.
pub(crate) async fn serve(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper refuses a minimum below 8 KiB.
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_header_size(limits.max_head_bytes);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let conn = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                // Out of descriptors or a connection reset before accept:
                // back off briefly instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let mut io = TimeoutStream::new(conn);
        io.set_write_timeout(Some(limits.write_timeout));
        let io = Box::pin(io);
        let service = TowerToHyperService::new(router.clone());
        let http = http.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let handshake = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            // Connection errors (timeouts, resets, bad TLS) end only that
            // connection; there is nobody to answer.
            match tls {
                None => {
                    let _ = watcher
                        .watch(http.serve_connection(TokioIo::new(io), service))
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake, acceptor.accept(io)).await
                    {
                        let _ = watcher
                            .watch(http.serve_connection(TokioIo::new(stream), service))
                            .await;
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.grace, graceful.shutdown()).await;
}
