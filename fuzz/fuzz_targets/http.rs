//! A client's bytes through the HTTP endpoint: the real hyper connection with the endpoint's bounds and
//! the axum router, over an in-memory stream; the answer is read until the server closes.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn metrics() -> Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| {
            let metrics = Arc::new(Metrics::default());
            metrics.event_published("public.orders", "c", 10);
            metrics
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(sluice::api::serve_stream(server, metrics()));
        // The server may answer and close before reading everything: a failed write is no finding.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        let _ = served.await.expect("the connection task does not panic");
    });
});
