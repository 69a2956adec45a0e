//! The HTTP endpoint in `[api]`: `/metrics` (Prometheus text format), `/health/live` and `/health/ready`.
//! Routed by axum; each connection is served by hyper directly, because axum's own server sets no bound
//! on how long a client may take to send its request. One GET per connection, answered and closed, which
//! is all a scraper or a probe sends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::handler::Handler;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long a client may take to send its request head, and how large the head may be (hyper's smallest
/// buffer): a scrape or a probe sends a few hundred bytes at once.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const HEAD_MAX_BYTES: usize = 8 * 1024;
/// How long a connection may last in all, for a client that sends its request but never reads the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once, in all and from one client address. Past either, new ones are closed at
/// once rather than queued, so that a flood neither piles up behind the head timeout nor takes the file
/// descriptors the pipeline's own connections need, and one client cannot hold every slot while the
/// kubelet's and the scraper's probes come from other addresses.
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_PEER: usize = 64;

const TEXT: &str = "text/plain; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on api.address {address}: {source}")]
pub struct ApiError {
    address: String,
    source: std::io::Error,
}

/// Binds `address` and serves until the process ends; returns the bound address (port 0 picks one).
pub async fn serve(address: &str, metrics: Arc<Metrics>) -> Result<SocketAddr, ApiError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ApiError {
            address: address.to_owned(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ApiError {
        address: address.to_owned(),
        source,
    })?;
    let service = TowerToHyperService::new(router(metrics));
    let admission = Arc::new(Admission::default());
    tokio::spawn(async move {
        let mut last_refusal_logged: Option<Instant> = None;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Some(ticket) = admission.admit(peer.ip()) else {
                        if last_refusal_logged
                            .is_none_or(|at| at.elapsed() > Duration::from_secs(60))
                        {
                            tracing::warn!(%peer, "api: too many connections open ({MAX_CONNECTIONS} in all, {MAX_PER_PEER} from one address), closing new ones until some end");
                            last_refusal_logged = Some(Instant::now());
                        }
                        continue;
                    };
                    let connection = connection(stream, service.clone());
                    // A client that hung up, sent garbage or stalled concerns nobody.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
                        drop(ticket);
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(bound)
}

/// Counts the connections open, in all and by client address.
#[derive(Default)]
struct Admission {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// An admitted connection; dropping it makes room for another.
struct Ticket {
    admission: Arc<Admission>,
    peer: IpAddr,
}

impl Admission {
    /// Room for one more connection from `peer`, or None.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Ticket> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (all, by_peer) = &mut *open;
        let from_peer = by_peer.entry(peer).or_default();
        if *all >= MAX_CONNECTIONS || *from_peer >= MAX_PER_PEER {
            return None;
        }
        *all += 1;
        *from_peer += 1;
        Some(Ticket {
            admission: self.clone(),
            peer,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (all, by_peer) = &mut *open;
        *all -= 1;
        if let Some(count) = by_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                by_peer.remove(&self.peer);
            }
        }
    }
}

/// Serves one connection on `stream` as `serve` serves each one it accepts, until it closes: for serving
/// requests without a socket (the fuzz target in `fuzz/`).
pub async fn serve_stream<S>(stream: S, metrics: Arc<Metrics>) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    connection(stream, TowerToHyperService::new(router(metrics))).await
}

/// One connection: one request, with bounds on its head's time and size.
fn connection<S>(
    stream: S,
    service: TowerToHyperService<Router>,
) -> http1::Connection<TokioIo<S>, TowerToHyperService<Router>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(HEAD_MAX_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
}

fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get_only(scrape))
        .route("/health/live", get_only(live))
        .route("/health/ready", get_only(ready))
        .fallback(unknown)
        .with_state(metrics)
}

/// A GET route that refuses every other method; axum would answer HEAD with the GET handler, and an
/// unlisted method with an empty 405.
fn get_only<H, T>(handler: H) -> MethodRouter<Arc<Metrics>>
where
    H: Handler<T, Arc<Metrics>>,
    T: 'static,
{
    get(handler).head(refuse).fallback(refuse)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    let content_type = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        metrics.render(),
    )
        .into_response()
}

async fn live() -> Response {
    text(StatusCode::OK, "live\n".to_owned())
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.readiness() {
        Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.as_str()),
        ),
    }
}

async fn unknown(method: Method) -> Response {
    if method == Method::GET {
        text(StatusCode::NOT_FOUND, "not found\n".to_owned())
    } else {
        refuse().await
    }
}

async fn refuse() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned())
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::metrics::SourceMetrics;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Sends `request` as is and reads the answer until the server closes the connection.
    async fn exchange(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("the server closes the connection")
            .unwrap();
        answer
    }

    async fn fetch(address: SocketAddr, path: &str) -> (String, String) {
        answer(exchange(address, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await)
    }

    /// The status line and the body.
    fn answer(text: String) -> (String, String) {
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn answers_each_path_as_before() {
        let metrics = Arc::new(Metrics::default());
        metrics.event_published("public.orders", "c", 10);
        let address = serve("127.0.0.1:0", metrics.clone()).await.unwrap();

        let scraped = exchange(address, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(scraped.starts_with("HTTP/1.1 200 OK\r\n"), "{scraped}");
        assert!(
            scraped.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{scraped}"
        );
        assert!(
            scraped.ends_with(&metrics.render()),
            "the body is the exposition: {scraped}"
        );
        assert_eq!(
            fetch(address, "/health/live").await,
            ("HTTP/1.1 200 OK".to_owned(), "live\n".to_owned())
        );
        assert_eq!(
            fetch(address, "/health/ready").await,
            (
                "HTTP/1.1 503 Service Unavailable".to_owned(),
                "not ready: not streaming from the source\n".to_owned()
            )
        );
        metrics.set_streaming(true);
        assert_eq!(
            fetch(address, "/health/ready").await,
            ("HTTP/1.1 200 OK".to_owned(), "ready\n".to_owned())
        );
        assert_eq!(
            fetch(address, "/nothing").await,
            (
                "HTTP/1.1 404 Not Found".to_owned(),
                "not found\n".to_owned()
            )
        );
        for request in [
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "HEAD /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
            "DELETE /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (status, body) = answer(exchange(address, request).await);
            assert_eq!(status, "HTTP/1.1 405 Method Not Allowed", "{request}");
            if !request.starts_with("HEAD") {
                assert_eq!(body, "GET only\n", "{request}");
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_request_is_dropped() {
        let address = serve("127.0.0.1:0", Arc::new(Metrics::default()))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let answer = exchange(address, "GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
        assert!(started.elapsed() >= HEAD_TIMEOUT, "{answer}");
        assert!(!answer.contains("200 OK"), "{answer}");
        let oversized = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(HEAD_MAX_BYTES)
        );
        let answer = exchange(address, &oversized).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let err = serve(&address, Arc::new(Metrics::default()))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on api.address {address}: ")),
            "{err}"
        );
    }
}
