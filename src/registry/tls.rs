//! The registry connection's TLS: one rustls configuration from `[avro]` (its PEM files checked before
//! use, so that a wrong file is named by its key rather than surfacing as a failed handshake), and a
//! failed handshake explained with the setting that fixes it.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;

use super::{RegistryError, RegistrySettings};

const CA_FILE: &str = "registry_ca_file";
const CERT_FILE: &str = "registry_client_cert_file";
const KEY_FILE: &str = "registry_client_key_file";

/// How long a probe waits for the registry's verdict on the client certificate.
const VERDICT_WAIT: Duration = Duration::from_secs(2);

/// The client's TLS configuration: the public authorities plus those of `registry_ca_file`, and the
/// client certificate of `registry_client_cert_file` with its key.
pub(super) fn client_config(
    settings: &RegistrySettings,
) -> Result<Arc<ClientConfig>, RegistryError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        for (n, der) in certificates(CA_FILE, path)?.into_iter().enumerate() {
            roots.add(der).map_err(|err| {
                file_error(
                    CA_FILE,
                    path,
                    format!("certificate {} cannot be an authority: {err}", n + 1),
                )
            })?;
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| tls_setup(settings, err))?
            .with_root_certificates(roots);
    let mut config = match &settings.client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(CERT_FILE, cert)?;
            let key_der = private_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|err| {
                    let reason = match err {
                        rustls::Error::InconsistentKeys(_) => format!(
                            "is not the private key of the certificate in avro.{CERT_FILE} ({})",
                            cert.display()
                        ),
                        other => format!("cannot be used: {other}"),
                    };
                    file_error(KEY_FILE, key, reason)
                })?
        }
    };
    // reqwest speaks HTTP/1.1 only here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates in the PEM file `path` (at least one).
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
    let text = read(key, path)?;
    let found = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(key, path, format!("is not PEM: {err}")))?;
    if found.is_empty() {
        return Err(file_error(
            key,
            path,
            "holds no certificate (PEM `BEGIN CERTIFICATE`)".to_owned(),
        ));
    }
    Ok(found)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, RegistryError> {
    let text = read(KEY_FILE, path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|err| {
        let reason = match err {
            pem::Error::NoItemsFound => "holds no unencrypted private key (PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)".to_owned(),
            other => format!("is not PEM: {other}"),
        };
        file_error(KEY_FILE, path, reason)
    })
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|err| file_error(key, path, err.to_string()))
}

fn file_error(key: &'static str, path: &Path, reason: String) -> RegistryError {
    RegistryError::TlsFile {
        key,
        path: path.to_owned(),
        reason,
    }
}

fn tls_setup(settings: &RegistrySettings, err: rustls::Error) -> RegistryError {
    RegistryError::Tls {
        url: crate::config::redact_secrets(&settings.url),
        cause: err.to_string(),
        fix: "sluice could not set up TLS with its cryptography provider: report this message"
            .to_owned(),
    }
}

/// The rustls error in `err`'s chain. It travels inside `io::Error`s (one in another, on the way to a
/// connection), whose `source` skips the error they wrap: those are looked into instead.
pub(super) fn rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped as &(dyn StdError + 'static)),
            None => current.source(),
        };
    }
    None
}

/// Opens a TLS connection to `url` as the client would and waits briefly for the registry's verdict:
/// the rustls error, if TLS is what fails.
///
/// In TLS 1.3 a server judges the client certificate after the client has finished its handshake, so
/// its refusal can reach a pooled connection before the request does, and the request fails without
/// the reason ("connection was not ready"). A fresh connection that only listens hears the refusal.
pub(super) async fn probe(config: Arc<ClientConfig>, url: &reqwest::Url) -> Option<rustls::Error> {
    let port = url.port_or_known_default()?;
    // An IPv6 address comes in brackets.
    let address = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(address.to_owned()).ok()?;
    let listen = async {
        let tcp = tokio::net::TcpStream::connect((address, port)).await.ok()?;
        let mut tls = match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(err) => return rustls_error(&err).cloned(),
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(VERDICT_WAIT, tls.read(&mut byte)).await {
            Ok(Err(err)) => rustls_error(&err).cloned(),
            // Silence or an answer: TLS is not what failed.
            Ok(Ok(_)) | Err(_) => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), listen)
        .await
        .ok()
        .flatten()
}

/// What to change for a TLS failure, naming the `[avro]` key.
pub(super) fn fix(error: &rustls::Error, settings: &RegistrySettings) -> String {
    use rustls::Error;
    let client_cert = settings.client_identity.as_ref().map(|(cert, _)| cert);
    match (error, client_cert) {
        (Error::InvalidCertificate(CertificateError::UnknownIssuer), _) => {
            match &settings.ca_file {
                None => format!(
                    "no authority sluice trusts signed the registry's certificate: set avro.{CA_FILE} to a PEM file of the authority that did"
                ),
                Some(path) => format!(
                    "the registry's certificate is not signed by an authority in avro.{CA_FILE} ({}): name the PEM file of the authority that signed it",
                    path.display()
                ),
            }
        }
        (
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ),
            _,
        ) => "the registry's certificate is not issued for the host in avro.registry_url: use a host name the certificate names, or give the registry a certificate for this one".to_owned(),
        (
            Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ),
            _,
        ) => "the registry's certificate is outside its validity period: renew it (or correct this host's clock)".to_owned(),
        (Error::InvalidCertificate(_), _) => format!(
            "the registry's certificate cannot be verified: have the registry present a valid certificate of an authority in avro.{CA_FILE}"
        ),
        (Error::AlertReceived(AlertDescription::CertificateRequired), None) => format!(
            "the registry requires a client certificate: set avro.{CERT_FILE} and avro.{KEY_FILE}"
        ),
        (Error::AlertReceived(AlertDescription::HandshakeFailure), None) => format!(
            "the registry ended the handshake; if it requires a client certificate, set avro.{CERT_FILE} and avro.{KEY_FILE}"
        ),
        (Error::AlertReceived(AlertDescription::UnknownCA), Some(cert)) => format!(
            "the registry does not trust the authority that signed avro.{CERT_FILE} ({}): use a client certificate signed by an authority the registry trusts",
            cert.display()
        ),
        (
            Error::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied,
            ),
            Some(cert),
        ) => format!(
            "the registry refused the client certificate in avro.{CERT_FILE} ({}): use one it accepts (signed by an authority it trusts, valid now, for client authentication)",
            cert.display()
        ),
        (Error::InvalidMessage(_), _) => "the registry did not answer in TLS: if it serves plain HTTP, use an http:// avro.registry_url".to_owned(),
        _ => format!(
            "check the registry's TLS settings against avro.{CA_FILE}, avro.{CERT_FILE} and avro.{KEY_FILE}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::pki::Pki;
    use sluice_testkit::registry::RegistryDouble;

    #[test]
    fn a_rustls_error_is_found_inside_io_errors_inside_io_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let refusal = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            refusal.clone(),
        ));
        assert_eq!(rustls_error(&Outer(io)), Some(&refusal));
        let plain = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(rustls_error(&plain), None);
    }

    #[tokio::test]
    async fn a_probe_hears_why_the_registry_refused_the_handshake() {
        let pki = Pki::new();
        let registry = RegistryDouble::options()
            .tls(pki.path("server.crt"), pki.path("server.key"))
            .require_client_certificate(pki.path("ca.crt"))
            .start()
            .unwrap();
        let url = reqwest::Url::parse(&registry.url()).unwrap();
        let trusting = RegistrySettings {
            ca_file: Some(pki.path("ca.crt")),
            ..RegistrySettings::for_url(&registry.url())
        };
        // The refusal that comes after the client's side of the handshake is done.
        let without_certificate = client_config(&trusting).unwrap();
        assert_eq!(
            probe(without_certificate, &url).await,
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            ))
        );
        // A refusal during it.
        let untrusting = client_config(&RegistrySettings::for_url(&registry.url())).unwrap();
        assert_eq!(
            probe(untrusting, &url).await,
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
        // Nothing to hear when TLS is fine.
        let accepted = client_config(&RegistrySettings {
            client_identity: Some((pki.path("client.crt"), pki.path("client.key"))),
            ..trusting
        })
        .unwrap();
        assert_eq!(probe(accepted, &url).await, None);
        assert_eq!(
            registry.tls_refusals().len(),
            2,
            "{:?}",
            registry.tls_refusals()
        );
    }
}
