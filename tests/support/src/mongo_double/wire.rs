//! The wire protocol's framing, as the double reads and writes it: OP_MSG (with document sequences) and
//! the legacy OP_QUERY / OP_REPLY of the handshake.

use anyhow::{bail, Context, Result};
use bson::{Bson, Document};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub(super) const OP_REPLY: i32 = 1;
pub(super) const OP_QUERY: i32 = 2004;
pub(super) const OP_MSG: i32 = 2013;

/// One request: its id, its opcode and the command document.
pub(super) struct Request {
    pub id: i32,
    pub op_code: i32,
    pub body: Document,
}

pub(super) async fn read_request(socket: &mut TcpStream) -> Result<Request> {
    let length = socket.read_i32_le().await?;
    if !(16..=48_000_000).contains(&length) {
        bail!("message length {length}");
    }
    let mut message = vec![0u8; length as usize - 4];
    socket.read_exact(&mut message).await?;
    let id = i32::from_le_bytes(message[0..4].try_into()?);
    let op_code = i32::from_le_bytes(message[8..12].try_into()?);
    let rest = &message[12..];
    let body = match op_code {
        OP_MSG => msg_body(rest)?,
        OP_QUERY => query_body(rest)?,
        other => bail!("opcode {other} is not served by the test double"),
    };
    Ok(Request { id, op_code, body })
}

/// OP_MSG: flag bits, then sections; the body is the kind-0 section, with each kind-1 document sequence
/// added to it as an array (which is what the server does).
fn msg_body(bytes: &[u8]) -> Result<Document> {
    let flags = u32::from_le_bytes(bytes[0..4].try_into()?);
    let end = if flags & 1 != 0 {
        bytes.len() - 4
    } else {
        bytes.len()
    };
    let mut at = 4;
    let mut body = None;
    let mut sequences = Vec::new();
    while at < end {
        let kind = bytes[at];
        at += 1;
        match kind {
            0 => {
                let size = i32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
                body = Some(Document::from_reader(&bytes[at..at + size])?);
                at += size;
            }
            1 => {
                let size = i32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
                let section = &bytes[at + 4..at + size];
                let name_end = section
                    .iter()
                    .position(|b| *b == 0)
                    .context("sequence name")?;
                let name = String::from_utf8(section[..name_end].to_vec())?;
                let mut docs = Vec::new();
                let mut rest = &section[name_end + 1..];
                while !rest.is_empty() {
                    let doc_size = i32::from_le_bytes(rest[0..4].try_into()?) as usize;
                    docs.push(Bson::Document(Document::from_reader(&rest[..doc_size])?));
                    rest = &rest[doc_size..];
                }
                sequences.push((name, docs));
                at += size;
            }
            other => bail!("OP_MSG section kind {other}"),
        }
    }
    let mut body = body.context("OP_MSG without a body section")?;
    for (name, docs) in sequences {
        body.insert(name, docs);
    }
    Ok(body)
}

/// OP_QUERY (only the handshake uses it): flags, collection name, skip, limit, query.
fn query_body(bytes: &[u8]) -> Result<Document> {
    let name_end = 4 + bytes[4..]
        .iter()
        .position(|b| *b == 0)
        .context("collection name")?;
    let query = &bytes[name_end + 1 + 8..];
    let mut body = Document::from_reader(query)?;
    // A handshake may wrap the command in `$query`.
    if let Ok(inner) = body.get_document("$query") {
        body = inner.clone();
    }
    Ok(body)
}

fn header(length: usize, response_to: i32, op_code: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&(length as i32).to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    out
}

pub(super) fn op_msg(response_to: i32, reply: &Document) -> Vec<u8> {
    let mut body = Vec::new();
    reply
        .to_writer(&mut body)
        .expect("a reply document serialises");
    let mut out = header(16 + 4 + 1 + body.len(), response_to, OP_MSG);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&body);
    out
}

pub(super) fn op_reply(response_to: i32, reply: &Document) -> Vec<u8> {
    let mut body = Vec::new();
    reply
        .to_writer(&mut body)
        .expect("a reply document serialises");
    let mut out = header(16 + 20 + body.len(), response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&1i32.to_le_bytes());
    out.extend_from_slice(&body);
    out
}
