//! The HTTP endpoint in `[api]`: `/metrics` (Prometheus text format), `/health/live` and `/health/ready`.
//! Deliberately small: one GET per connection, answered and closed, which is all a scraper or a probe
//! sends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

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
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, metrics.clone()));
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

async fn answer(mut stream: TcpStream, metrics: Arc<Metrics>) {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The request line is all that matters; stop at the end of the head, or after 5 s or 16 KiB.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let line = String::from_utf8_lossy(&request);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/health/live") => ("200 OK", "text/plain; charset=utf-8", "live\n".to_owned()),
        ("GET", "/health/ready") => match metrics.readiness() {
            Ok(()) => ("200 OK", "text/plain; charset=utf-8", "ready\n".to_owned()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("not ready: {}\n", why.as_str()),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
