//! Where and how to reach PostgreSQL: the URL tokio-postgres understands, plus the libpq TLS parameters it
//! does not (`sslmode=verify-ca|verify-full`, `sslrootcert`, `sslcert`, `sslkey`), with libpq's meaning.
//! The catalog connections (tokio-postgres) and the replication connection (our own client) share one
//! rustls configuration built from them.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// libpq's `sslmode`, all six but `allow` (which prefers plain text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it; its certificate is checked only against an `sslrootcert`.
    Prefer,
    /// TLS or no connection; the certificate is checked against `sslrootcert` when one is given.
    Require,
    /// TLS with a certificate signed by `sslrootcert`.
    VerifyCa,
    /// Also the certificate's names must include the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (it prefers plain text): use prefer, \
                            require, verify-ca or verify-full"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
            ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: it only knows whether TLS is optional or required.
    fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// A parsed `source.url`.
#[derive(Clone, Debug)]
pub struct PgConnection {
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
}

/// The TLS side of a connection: the mode and, unless disabled, the rustls configuration.
#[derive(Clone, Debug)]
pub struct PgTls {
    pub mode: SslMode,
    client: Option<Arc<ClientConfig>>,
}

/// The libpq parameters sluice takes out of the URL before tokio-postgres parses the rest.
const TLS_PARAMETERS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PgConnection {
    /// Parses a libpq URL (`postgres://…?sslmode=verify-full&sslrootcert=/etc/ca.pem`) or key=value
    /// string, and loads the certificate files it names. Errors name the parameter at fault; they never
    /// contain the password.
    pub fn parse(url: &str) -> Result<PgConnection, String> {
        let (rest, tls) = split_tls_parameters(url)?;
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|err: tokio_postgres::Error| {
                sluice_core::config::redact_secrets(&err.to_string())
            })?;
        let get = |key: &str| {
            tls.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let mode = match get("sslmode") {
            Some(mode) => SslMode::parse(mode)?,
            // libpq's default; sluice's until TLS was supported was plain text, which prefer falls back to.
            None => SslMode::Prefer,
        };
        config.ssl_mode(mode.for_tokio_postgres());
        let client = match mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(client_config(
                mode,
                get("sslrootcert"),
                get("sslcert"),
                get("sslkey"),
            )?)),
        };
        Ok(PgConnection {
            config,
            tls: PgTls { mode, client },
        })
    }

    /// The URL's database name (empty when it names none).
    pub fn database(&self) -> String {
        self.config.get_dbname().unwrap_or_default().to_owned()
    }
}

impl PgTls {
    /// The rustls configuration, unless `sslmode=disable`.
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.client.clone()
    }
}

/// Splits the TLS parameters off a URL's query (or off a key=value string).
fn split_tls_parameters(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut tls = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), tls));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if TLS_PARAMETERS.contains(&key) {
                tls.push((key.to_owned(), percent_decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, tls));
    }
    // key=value form: values with spaces are single-quoted, as libpq writes them.
    let mut kept = Vec::new();
    for (key, value, raw) in key_values(url)? {
        if TLS_PARAMETERS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            kept.push(raw);
        }
    }
    Ok((kept.join(" "), tls))
}

/// `key=value` pairs of a libpq connection string: (key, unquoted value, the pair as written).
fn key_values(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Ok(pairs);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!("`{key}` in the connection string has no `=value`"));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        if let Some((_, c)) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("the quoted value of `{key}` is not closed")),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        let end = chars.peek().map_or(text.len(), |(i, _)| *i);
        pairs.push((key, value, text[start..end].trim_end().to_owned()));
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in `{text}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` does not decode to UTF-8"))
}

fn client_config(
    mode: SslMode,
    root_cert: Option<&str>,
    client_cert: Option<&str>,
    client_key: Option<&str>,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // libpq: with a root certificate, prefer and require check the chain too (as verify-ca does).
    let chain = match (mode, root_cert) {
        (_, Some(path)) => Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(load_roots(path)?),
                provider.clone(),
            )
            .build()
            .map_err(|err| format!("sslrootcert {path}: {err}"))?,
        ),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(
                "sslmode=verify-ca and verify-full need sslrootcert=<PEM file of the certificate authority>"
                    .into(),
            )
        }
        (_, None) => None,
    };
    let verifier = Arc::new(LibpqVerifier {
        chain,
        check_name: mode == SslMode::VerifyFull,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|err| format!("sslcert {cert}: {err}"))?;
            if chain.is_empty() {
                return Err(format!("sslcert {cert}: no certificate in the file"));
            }
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|err| format!("sslkey {key}: {err}"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|err| format!("sslcert {cert} with sslkey {key}: {err}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => {
            Err("sslcert needs sslkey (the client certificate's private key)".into())
        }
        (None, Some(_)) => Err("sslkey needs sslcert (the client certificate)".into()),
    }
}

fn load_roots(path: &str) -> Result<RootCertStore, String> {
    if !Path::new(path).is_file() {
        return Err(format!("sslrootcert {path}: no such file"));
    }
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(path).map_err(|err| format!("sslrootcert {path}: {err}"))?
    {
        let cert = cert.map_err(|err| format!("sslrootcert {path}: {err}"))?;
        roots
            .add(cert)
            .map_err(|err| format!("sslrootcert {path}: {err}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {path}: no certificate in the file"));
    }
    Ok(roots)
}

/// libpq's meaning of `sslmode`. With a root certificate, the chain must lead to it, and with verify-full
/// the certificate must also name the host (rustls checks the chain before the name, so only a name
/// mismatch is let through otherwise). Without one (prefer, require), the connection is encrypted, not
/// authenticated. The handshake signatures are checked in every mode, so the peer holds the key of the
/// certificate it shows.
#[derive(Debug)]
struct LibpqVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server name a certificate is checked against: the host as written in the URL.
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {err}")))
}

// tokio-postgres' TLS hooks, implemented over tokio-rustls.

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = TlsStream;
    type TlsConnect = Connector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<Connector> {
        let config = self.client.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS requested with sslmode=disable",
            )
        })?;
        Ok(Connector {
            config,
            name: server_name(host)?,
        })
    }
}

pub struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for Connector {
    type Stream = TlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(TlsStream(stream))
        })
    }
}

pub struct TlsStream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for TlsStream {
    /// SCRAM works without channel binding, which tokio-postgres then does not ask for.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (rest, tls) = split_tls_parameters(
            "postgres://u:p@db:5432/shop?sslmode=verify-full&connect_timeout=5&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/shop?connect_timeout=5");
        assert_eq!(
            tls,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/etc/ca.pem".to_owned()),
            ]
        );
        let (rest, tls) = split_tls_parameters(
            "host=db dbname=shop sslmode=require sslkey='/keys/my key.pem' user=u",
        )
        .unwrap();
        assert_eq!(rest, "host=db dbname=shop user=u");
        assert_eq!(tls[1], ("sslkey".to_owned(), "/keys/my key.pem".to_owned()));
        assert_eq!(
            split_tls_parameters("postgres://db/shop").unwrap(),
            ("postgres://db/shop".to_owned(), vec![])
        );
    }

    #[test]
    fn modes_and_their_requirements() {
        let parse = |url: &str| PgConnection::parse(url).map(|c| c.tls.mode);
        assert_eq!(parse("postgres://db/shop"), Ok(SslMode::Prefer));
        assert_eq!(
            parse("postgres://db/shop?sslmode=disable"),
            Ok(SslMode::Disable)
        );
        assert_eq!(
            parse("postgres://db/shop?sslmode=require"),
            Ok(SslMode::Require)
        );
        let err = parse("postgres://db/shop?sslmode=verify-full").unwrap_err();
        assert!(err.contains("sslrootcert"), "{err}");
        let err =
            parse("postgres://db/shop?sslmode=verify-ca&sslrootcert=/nonexistent.pem").unwrap_err();
        assert!(err.contains("/nonexistent.pem: no such file"), "{err}");
        let err = parse("postgres://db/shop?sslmode=allow").unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        let err = parse("postgres://db/shop?sslmode=strict").unwrap_err();
        assert!(err.contains("`strict`"), "{err}");
        let err = parse("postgres://db/shop?sslmode=require&sslcert=/c.pem").unwrap_err();
        assert!(err.contains("sslcert needs sslkey"), "{err}");
        let err = parse("postgres://u:hunter2@db/shop?bogus=1").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
