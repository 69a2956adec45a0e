//! A TLS front for tansu. tansu 0.6 accepts `--cert` and `--key` but serves plain TCP whatever they say,
//! so the broker-security tests terminate TLS here, on a port of its own that tansu advertises, and
//! forward the bytes to tansu's listener. Clients see a broker that speaks TLS only: the handshake and
//! the certificate checks are librdkafka's own, against the certificate given here.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// Listening until dropped.
pub struct TlsFront {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
}

impl TlsFront {
    /// Serves TLS with `cert` and `key` (PEM files) on a free port, forwarding to `127.0.0.1:upstream`;
    /// with `client_ca`, only to clients presenting a certificate it signed.
    pub fn start(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        upstream: u16,
    ) -> Result<TlsFront> {
        let acceptor = TlsAcceptor::from(crate::tls::server_config(cert, key, client_ca)?);
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the TLS front")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = oneshot::channel();
        // A thread and runtime of its own: the front outlives no test, and must not depend on (or be
        // dropped inside) the runtime of the test that uses it.
        std::thread::Builder::new()
            .name("tls-front".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the TLS front");
                runtime.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).expect("the TLS front's listener");
                    tokio::select! {
                        _ = serve(listener, acceptor, upstream) => {}
                        _ = stopped => {}
                    }
                });
                runtime.shutdown_background();
            })
            .context("starting the TLS front's thread")?;
        Ok(TlsFront {
            port,
            stop: Some(stop),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, upstream: u16) {
    while let Ok((client, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A failed handshake is the client's refusal of the certificate: it sees that itself.
            let Ok(mut client) = acceptor.accept(client).await else {
                return;
            };
            let Ok(mut broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
        });
    }
}
