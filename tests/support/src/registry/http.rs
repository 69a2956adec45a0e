//! Just enough HTTP/1.1 for the registry double: one request per connection (answered with
//! `Connection: close`), bodies framed by Content-Length. Chunked request bodies are refused.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
pub(crate) const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub(crate) struct Request {
    pub method: String,
    /// The path without the query string, still percent-encoded.
    pub path: String,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

pub(crate) struct Response {
    pub status: u16,
    pub body: String,
}

/// Reads one request; `None` when the peer closed the connection without sending one.
pub(crate) async fn read_request<S>(stream: &mut S) -> Result<Option<Request>>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let mut buffer = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(at) = find(&buffer, b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD {
            bail!("request head longer than {MAX_HEAD} bytes");
        }
        let mut chunk = [0u8; 4096];
        let read = stream
            .read(&mut chunk)
            .await
            .context("reading the request")?;
        if read == 0 {
            if buffer.is_empty() {
                return Ok(None);
            }
            bail!("connection closed in the middle of the request head");
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = std::str::from_utf8(&buffer[..head_end]).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("malformed request line `{request_line}`");
    };
    let (method, path) = (
        method.to_owned(),
        target.split('?').next().unwrap_or_default().to_owned(),
    );
    let mut content_length = 0usize;
    let mut expect_continue = false;
    let mut authorization = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("malformed header line `{line}`")
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value
                    .parse()
                    .with_context(|| format!("Content-Length `{value}`"))?
            }
            "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                bail!("Transfer-Encoding `{value}` is not supported, send a Content-Length")
            }
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "authorization" => authorization = Some(value.to_owned()),
            _ => {}
        }
    }
    if content_length > MAX_BODY {
        bail!("request body of {content_length} bytes is over the {MAX_BODY}-byte limit");
    }
    let mut body = buffer.split_off(head_end + 4);
    if expect_continue && body.len() < content_length {
        // curl waits for this before sending bodies over 1 KiB.
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .context("writing 100 Continue")?;
    }
    while body.len() < content_length {
        let mut chunk = vec![0u8; (content_length - body.len()).min(64 * 1024)];
        let read = stream
            .read(&mut chunk)
            .await
            .context("reading the request body")?;
        if read == 0 {
            bail!(
                "connection closed after {} of {content_length} body bytes",
                body.len()
            );
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(content_length);
    Ok(Some(Request {
        method,
        path,
        authorization,
        body,
    }))
}

pub(crate) async fn write_response<S: AsyncWriteExt + Unpin>(
    stream: &mut S,
    response: &Response,
) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .context("writing the response head")?;
    stream
        .write_all(response.body.as_bytes())
        .await
        .context("writing the response body")?;
    stream.flush().await.context("flushing the response")
}

/// Decodes `%XX` escapes (clients escape `/`, spaces and the like in subjects).
pub(crate) fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(
            percent_decode("shop.public.orders-value"),
            "shop.public.orders-value"
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%e2%9c%93"), "%zz✓");
    }

    #[tokio::test]
    async fn a_request_with_a_body_split_across_reads_is_assembled() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            let body = r#"{"schema":"\"string\""}"#;
            let request = format!("POST /subjects/t%2Dvalue/versions?normalize=false HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            client.write_all(request.as_bytes()).await.unwrap();
            client
        });
        let request = read_request(&mut server).await.unwrap().unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/subjects/t%2Dvalue/versions");
        assert_eq!(request.body, br#"{"schema":"\"string\""}"#);
        drop(writer.await.unwrap());
    }
}
