//! A schema-registry TEST DOUBLE — not a schema registry.
//!
//! It answers, over real HTTP, the calls of Confluent's documented REST API that sluice makes:
//!
//! - `POST /subjects/{subject}/versions` registers a schema and answers `{"id": N}`: ids are global from 1,
//!   the same schema (compared as parsed JSON) keeps its id, each new schema of a subject gets a version;
//! - `POST /subjects/{subject}` looks a schema up (`40401` unknown subject, `40403` unknown schema);
//! - `GET /schemas/ids/{id}`, `GET /subjects`, `GET /subjects/{subject}/versions`,
//!   `GET /subjects/{subject}/versions/{n|latest}`, `GET /config` (always `BACKWARD`).
//!
//! It does no compatibility checking (`set_reject_all` and `reject_subjects_starting_with` make
//! registrations fail with 409 instead; `set_unavailable` makes every call fail with 503;
//! `require_authorization` answers 401 to calls without the expected `Authorization` header),
//! no Avro validation beyond "is JSON" (422/42201 otherwise), no deletes, and keeps everything in memory.
//! The server runs on its own thread and runtime, so it answers even while a test blocks its own thread.
//!
//! [`RegistryOptions`] serves it over TLS (rustls), optionally demanding a client certificate signed by a
//! given authority, and optionally demanding basic credentials or a bearer token from the start.

mod http;
mod routes;
mod store;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use store::Store;

/// A running registry double. Dropping it stops the server.
pub struct RegistryDouble {
    addr: SocketAddr,
    tls: bool,
    store: Arc<Mutex<Store>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RegistryDouble {
    /// Serves plain HTTP on a free loopback port.
    pub fn start() -> Result<RegistryDouble> {
        RegistryOptions::default().start()
    }

    /// Serves plain HTTP on `addr` (e.g. `127.0.0.1:8081`).
    pub fn start_on(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<RegistryDouble> {
        RegistryOptions::default().start_on(addr)
    }

    /// Options for a double over TLS or demanding credentials: `RegistryDouble::options().tls(…).start()`.
    pub fn options() -> RegistryOptions {
        RegistryOptions::default()
    }

    /// The base URL: `http://127.0.0.1:PORT`, or over TLS `https://localhost:PORT`, the name the test
    /// certificates carry.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every registered schema with its id, in id order, as first registered.
    pub fn schemas(&self) -> Vec<(u32, String)> {
        self.store().schemas()
    }

    /// Every subject with at least one version, sorted.
    pub fn subjects(&self) -> Vec<String> {
        self.store().subjects()
    }

    /// While set, every registration is refused with 409 (incompatible schema), for negative tests.
    pub fn set_reject_all(&self, reject: bool) {
        self.store().set_reject_prefix(reject.then_some(""))
    }

    /// While set, registrations under subjects that start with `prefix` are refused with 409.
    pub fn reject_subjects_starting_with(&self, prefix: Option<&str>) {
        self.store().set_reject_prefix(prefix)
    }

    /// While set, every call must carry exactly this `Authorization` header (`Basic …`, `Bearer …`), or
    /// is answered 401.
    pub fn require_authorization(&self, header: Option<&str>) {
        self.store().required_authorization = header.map(str::to_owned);
    }

    /// Why each TLS handshake the double refused failed (rustls' words, e.g. `peer sent no certificates`),
    /// in order: what the server side saw of a refused client.
    pub fn tls_refusals(&self) -> Vec<String> {
        self.store().tls_refusals.clone()
    }

    /// While set, every call fails with HTTP 503: a registry that is down, which clients should wait out.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.store().unavailable = unavailable;
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for RegistryDouble {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a double serves: plain HTTP unless `tls` is given; with `require_client_certificate` the TLS
/// handshake refuses clients without a certificate that authority signed; with `require_basic` or
/// `require_bearer` every call without those credentials is answered 401, as Confluent's registry does.
// No Debug: it holds the credentials.
#[derive(Clone, Default)]
pub struct RegistryOptions {
    tls: Option<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
    authorization: Option<String>,
}

impl RegistryOptions {
    /// Serve TLS with this certificate chain and private key (PEM).
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> RegistryOptions {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Demand a client certificate signed by the authority in `ca` (PEM); needs `tls`.
    pub fn require_client_certificate(mut self, ca: impl Into<PathBuf>) -> RegistryOptions {
        self.client_ca = Some(ca.into());
        self
    }

    /// Demand HTTP basic authentication with exactly these credentials.
    pub fn require_basic(mut self, username: &str, password: &str) -> RegistryOptions {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        self.authorization = Some(format!("Basic {encoded}"));
        self
    }

    /// Demand exactly this bearer token.
    pub fn require_bearer(mut self, token: &str) -> RegistryOptions {
        self.authorization = Some(format!("Bearer {token}"));
        self
    }

    /// Serves on a free loopback port.
    pub fn start(self) -> Result<RegistryDouble> {
        self.start_on("127.0.0.1:0")
    }

    /// Serves on `addr` (e.g. `127.0.0.1:8081`).
    pub fn start_on(self, addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<RegistryDouble> {
        let acceptor =
            match (&self.tls, &self.client_ca) {
                (Some((cert, key)), client_ca) => Some(TlsAcceptor::from(
                    crate::tls::server_config(cert, key, client_ca.as_deref())?,
                )),
                (None, Some(_)) => bail!("a client certificate can only be required over TLS"),
                (None, None) => None,
            };
        let listener = std::net::TcpListener::bind(&addr)
            .with_context(|| format!("binding the registry double to {addr:?}"))?;
        let addr = listener
            .local_addr()
            .context("local address of the registry double")?;
        listener
            .set_nonblocking(true)
            .context("making the registry double's listener non-blocking")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the registry double's runtime")?;
        let mut store = Store::default();
        store.required_authorization = self.authorization;
        let store = Arc::new(Mutex::new(store));
        let (shutdown, stopped) = oneshot::channel();
        let served = Arc::clone(&store);
        let tls = acceptor.is_some();
        let thread = std::thread::Builder::new()
            .name(format!("registry-double-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)
                        .expect("registering the listener with the runtime");
                    serve(listener, acceptor, served, stopped).await;
                })
            })
            .context("spawning the registry double's thread")?;
        Ok(RegistryDouble {
            addr,
            tls,
            store,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    store: Arc<Mutex<Store>>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let store = Arc::clone(&store);
                    match &tls {
                        None => tokio::spawn(answer(stream, store)),
                        Some(acceptor) => tokio::spawn(handshake(acceptor.clone(), stream, store)),
                    };
                }
                // Out of file descriptors and the like: keep serving, the client sees its connect fail.
                Err(err) => eprintln!("registry double: accept failed: {err}"),
            },
        }
    }
}

/// The TLS handshake, then the request; a refused handshake is recorded for `tls_refusals`.
async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, store: Arc<Mutex<Store>>) {
    match acceptor.accept(stream).into_fallible().await {
        Ok(stream) => answer(stream, store).await,
        Err((err, mut stream)) => {
            store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .tls_refusals
                .push(err.to_string());
            // In TLS 1.3 a client sends its request before it learns that its certificate was refused.
            // Closing with that request unread would reset the connection and could destroy the alert
            // on its way; reading until the client closes lets it see why.
            let _ = stream.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read_to_end(&mut sink),
            )
            .await;
        }
    }
}

async fn answer<S>(mut stream: S, store: Arc<Mutex<Store>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let response = match http::read_request(&mut stream).await {
        Ok(Some(request)) => routes::handle(
            &mut store.lock().unwrap_or_else(|p| p.into_inner()),
            &request,
        ),
        Ok(None) => return,
        Err(err) => {
            let body = store::ApiError::new(400, 400, format!("bad request: {err:#}"))
                .body()
                .to_string();
            http::Response { status: 400, body }
        }
    };
    // The client may have gone away; nobody else to tell.
    if http::write_response(&mut stream, &response).await.is_ok() {
        // Over TLS this sends close_notify, so the client sees a clean end of the connection.
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::io::{Read, Write};

    /// A blocking HTTP/1.1 client good for one request per connection: enough to test over real sockets.
    fn call(
        registry: &RegistryDouble,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        call_as(registry, None, method, path, body)
    }

    /// [`call`] with this `Authorization` header.
    fn call_as(
        registry: &RegistryDouble,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut stream = std::net::TcpStream::connect(registry.addr()).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        let authorization = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{authorization}Content-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
            registry.addr(),
            http::CONTENT_TYPE,
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(head.contains(http::CONTENT_TYPE), "{head}");
        (
            status,
            serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {body}")),
        )
    }

    fn schema(fields: &[&str]) -> String {
        let fields: Vec<Value> = fields
            .iter()
            .map(|f| json!({ "name": f, "type": "string" }))
            .collect();
        json!({ "type": "record", "name": "Row", "fields": fields }).to_string()
    }

    #[test]
    fn registers_and_looks_up_over_http() {
        let registry = RegistryDouble::start().unwrap();
        let v1 = schema(&["a"]);
        let v2 = schema(&["a", "b"]);
        let path = "/subjects/shop.public.orders-value/versions";

        assert_eq!(
            call(
                &registry,
                "POST",
                path,
                Some(&json!({ "schema": v1, "schemaType": "AVRO" }))
            ),
            (200, json!({ "id": 1 }))
        );
        // Same schema with other whitespace: same id, no new version.
        let v1_pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&v1).unwrap()).unwrap();
        assert_eq!(
            call(
                &registry,
                "POST",
                path,
                Some(&json!({ "schema": v1_pretty }))
            ),
            (200, json!({ "id": 1 }))
        );
        assert_eq!(
            call(&registry, "POST", path, Some(&json!({ "schema": v2 }))),
            (200, json!({ "id": 2 }))
        );
        assert_eq!(call(&registry, "GET", path, None), (200, json!([1, 2])));

        let (status, found) = call(
            &registry,
            "POST",
            "/subjects/shop.public.orders-value",
            Some(&json!({ "schema": v1 })),
        );
        assert_eq!(status, 200);
        assert_eq!(
            found,
            json!({ "subject": "shop.public.orders-value", "id": 1, "version": 1, "schema": v1 })
        );
        let (status, missing) = call(
            &registry,
            "POST",
            "/subjects/shop.public.orders-value",
            Some(&json!({ "schema": schema(&["z"]) })),
        );
        assert_eq!((status, &missing["error_code"]), (404, &json!(40403)));

        assert_eq!(
            call(&registry, "GET", "/schemas/ids/2", None),
            (200, json!({ "schema": v2 }))
        );
        assert_eq!(call(&registry, "GET", "/schemas/ids/3", None).0, 404);
        let (_, latest) = call(
            &registry,
            "GET",
            "/subjects/shop.public.orders-value/versions/latest",
            None,
        );
        assert_eq!((&latest["id"], &latest["version"]), (&json!(2), &json!(2)));
        assert_eq!(
            call(&registry, "GET", "/config", None),
            (200, json!({ "compatibilityLevel": "BACKWARD" }))
        );

        assert_eq!(registry.schemas(), vec![(1, v1), (2, v2)]);
        assert_eq!(
            registry.subjects(),
            vec!["shop.public.orders-value".to_owned()]
        );
    }

    #[test]
    fn subjects_in_paths_are_percent_decoded() {
        let registry = RegistryDouble::start().unwrap();
        let body = json!({ "schema": "\"string\"" });
        assert_eq!(
            call(
                &registry,
                "POST",
                "/subjects/odd%2Fname%20x/versions",
                Some(&body)
            )
            .0,
            200
        );
        assert_eq!(
            call(&registry, "GET", "/subjects", None),
            (200, json!(["odd/name x"]))
        );
    }

    #[test]
    fn errors_follow_confluent_codes() {
        let registry = RegistryDouble::start().unwrap();
        let (status, body) = call(
            &registry,
            "POST",
            "/subjects/t-value/versions",
            Some(&json!({ "schema": "{not json" })),
        );
        assert_eq!((status, &body["error_code"]), (422, &json!(42201)));
        let (status, body) = call(&registry, "GET", "/nowhere", None);
        assert_eq!((status, &body["error_code"]), (404, &json!(404)));
        let (status, body) = call(&registry, "GET", "/subjects/unknown/versions", None);
        assert_eq!((status, &body["error_code"]), (404, &json!(40401)));

        registry.set_reject_all(true);
        let (status, body) = call(
            &registry,
            "POST",
            "/subjects/t-value/versions",
            Some(&json!({ "schema": "\"long\"" })),
        );
        assert_eq!((status, &body["error_code"]), (409, &json!(409)));
        assert!(registry.schemas().is_empty());
    }

    #[test]
    fn required_credentials_are_checked_with_confluents_answer() {
        let unauthorized = (401, json!({ "error_code": 401, "message": "Unauthorized" }));
        let basic = RegistryDouble::options()
            .require_basic("sluice", "s3cret")
            .start()
            .unwrap();
        assert_eq!(call(&basic, "GET", "/subjects", None), unauthorized);
        let wrong = Some("Basic c2x1aWNlOndyb25n");
        assert_eq!(
            call_as(&basic, wrong, "GET", "/subjects", None),
            unauthorized
        );
        // "sluice:s3cret" in base64.
        let right = Some("Basic c2x1aWNlOnMzY3JldA==");
        assert_eq!(
            call_as(&basic, right, "GET", "/subjects", None),
            (200, json!([]))
        );

        let bearer = RegistryDouble::options()
            .require_bearer("t0ken")
            .start()
            .unwrap();
        let wrong = Some("Bearer t0ke");
        assert_eq!(
            call_as(&bearer, wrong, "GET", "/subjects", None),
            unauthorized
        );
        assert_eq!(
            call_as(&bearer, Some("Bearer t0ken"), "GET", "/subjects", None),
            (200, json!([]))
        );
    }

    #[test]
    fn a_client_certificate_is_only_required_over_tls() {
        let err = RegistryDouble::options()
            .require_client_certificate("/nonexistent/ca.crt")
            .start()
            .err()
            .expect("no TLS, no client certificates");
        assert_eq!(
            err.to_string(),
            "a client certificate can only be required over TLS"
        );
    }

    #[tokio::test]
    async fn answers_while_the_test_runtime_is_single_threaded() {
        // The double has its own runtime: a current-thread test runtime doing blocking calls cannot starve it.
        let registry = RegistryDouble::start().unwrap();
        let body = json!({ "schema": "\"string\"" });
        assert_eq!(
            call(&registry, "POST", "/subjects/s/versions", Some(&body)),
            (200, json!({ "id": 1 }))
        );
    }

    #[test]
    fn drop_stops_the_server() {
        let registry = RegistryDouble::start().unwrap();
        let addr = registry.addr();
        drop(registry);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still accepts connections"
        );
    }
}
