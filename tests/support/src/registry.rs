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

mod http;
mod routes;
mod store;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use store::Store;

/// A running registry double. Dropping it stops the server.
pub struct RegistryDouble {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RegistryDouble {
    /// Serves on a free loopback port.
    pub fn start() -> Result<RegistryDouble> {
        RegistryDouble::start_on("127.0.0.1:0")
    }

    /// Serves on `addr` (e.g. `127.0.0.1:8081`).
    pub fn start_on(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<RegistryDouble> {
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
        let store = Arc::new(Mutex::new(Store::default()));
        let (shutdown, stopped) = oneshot::channel();
        let served = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name(format!("registry-double-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)
                        .expect("registering the listener with the runtime");
                    serve(listener, served, stopped).await;
                })
            })
            .context("spawning the registry double's thread")?;
        Ok(RegistryDouble {
            addr,
            store,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

async fn serve(
    listener: TcpListener,
    store: Arc<Mutex<Store>>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, Arc::clone(&store)));
                }
                // Out of file descriptors and the like: keep serving, the client sees its connect fail.
                Err(err) => eprintln!("registry double: accept failed: {err}"),
            },
        }
    }
}

async fn answer(mut stream: TcpStream, store: Arc<Mutex<Store>>) {
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
    let _ = http::write_response(&mut stream, &response).await;
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
        let mut stream = std::net::TcpStream::connect(registry.addr()).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
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
