//! # The metrics endpoint: `GET /metrics` over plain HTTP/1.1
//!
//! Prometheus scrapes a node over HTTP. The endpoint answers one request per connection and
//! nothing else, so a small hand-written server on the node's thread does: it needs no HTTP
//! library, and what it accepts is easy to bound.
//!
//! ## What it answers
//! | request | answer |
//! |---|---|
//! | `GET /metrics` (any query string) | `200`, the text format of [`super::Metrics::collect`] |
//! | another method on `/metrics` | `405`, with `Allow: GET` |
//! | `GET` of another path | `404` |
//! | a request line or head that is not HTTP/1.x, or over [`REQUEST_BYTES_MAX`] | `400` |
//!
//! Every answer closes the connection (`Connection: close`); a request body is never read.
//!
//! ## Who can reach it, and the limits
//! The endpoint is off unless `node.metrics_listen` is set, and has no authentication: it
//! shows counters and bucket names, never keys or values, and it changes nothing. Still,
//! anyone who can reach the port can open connections to it, so every resource is bounded:
//! at most [`CONNECTIONS_MAX`] connections at once (more are closed on accept), a request
//! head of at most [`REQUEST_BYTES_MAX`] bytes that must arrive within [`READ_TIMEOUT_MS`],
//! and an answer that must be taken within [`WRITE_TIMEOUT_MS`]. Bind it to loopback or to a
//! monitoring network, not to the clients' (docs/TRUST.md, "Ports").

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Connections served at once; one more is closed on accept. A scraper needs one.
pub const CONNECTIONS_MAX: usize = 8;

/// The largest request head read (request line and headers); a longer one gets `400`.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// How long a connection has to send its whole request head; then it is closed.
pub const READ_TIMEOUT_MS: u64 = 5_000;

/// How long a connection has to take the whole answer; then it is closed.
pub const WRITE_TIMEOUT_MS: u64 = 10_000;

/// The content type of the answer: OpenMetrics 1.0 text, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve `GET /metrics` on `listener` forever (until the task is dropped), answering with
/// `render()`. Runs on the node's thread (`spawn_local`).
pub async fn serve(listener: TcpListener, render: Rc<dyn Fn() -> String>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: wait instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.get() >= CONNECTIONS_MAX {
            tracing::debug!(%peer, "metrics: connection refused, {CONNECTIONS_MAX} open");
            continue;
        }
        open.set(open.get() + 1);
        let (open, render) = (Rc::clone(&open), Rc::clone(&render));
        tokio::task::spawn_local(async move {
            if let Err(e) = answer(stream, &*render).await {
                tracing::debug!(%peer, error = %e, "metrics: connection ended");
            }
            open.set(open.get() - 1);
        });
    }
}

/// Read one request from `stream` and answer it.
async fn answer(mut stream: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    let read = Duration::from_millis(READ_TIMEOUT_MS);
    let head = match tokio::time::timeout(read, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow request")),
    };
    let (status, extra, body) = match head.as_deref().map(route) {
        Some(Route::Metrics) => ("200 OK", "", render()),
        Some(Route::MethodNotAllowed) => {
            ("405 Method Not Allowed", "Allow: GET\r\n", "only GET\n".to_string())
        }
        Some(Route::NotFound) => ("404 Not Found", "", "the metrics are at /metrics\n".into()),
        None | Some(Route::BadRequest) => ("400 Bad Request", "", "bad request\n".to_string()),
    };
    let content_type = if status.starts_with("200") { CONTENT_TYPE } else { "text/plain" };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let write = Duration::from_millis(WRITE_TIMEOUT_MS);
    match tokio::time::timeout(write, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow reader")),
    }
}

/// The request head, up to the blank line that ends it: `None` when it is over
/// [`REQUEST_BYTES_MAX`] or the connection ended first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    loop {
        if let Some(end) = find(&head, b"\r\n\r\n").or_else(|| find(&head, b"\n\n")) {
            head.truncate(end);
            return Ok(String::from_utf8(head).ok());
        }
        if head.len() >= REQUEST_BYTES_MAX {
            return Ok(None);
        }
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buffer[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    MethodNotAllowed,
    NotFound,
    BadRequest,
}

/// Route a request head (pure): its request line is `METHOD TARGET HTTP/1.x`.
fn route(head: &str) -> Route {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match (path, method) {
        ("/metrics", "GET") => Route::Metrics,
        ("/metrics", _) => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests are routed by method and path, and anything that is not an HTTP/1 request
    /// line is a bad request.
    #[test]
    fn routes() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route("HEAD /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route("GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(route("GET /metrics"), Route::BadRequest);
        assert_eq!(route("GET /metrics HTTP/2 extra"), Route::BadRequest);
        assert_eq!(route("GET metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route("G=T /metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(""), Route::BadRequest);
    }
}
