//! The HTTP endpoint under abuse, next to a running pipeline: from one address, clients that send their
//! request head a line at a time, that never send anything, that send megabytes of headers, that never
//! read the answer — more than the endpoint serves from one address; then a flood from ten addresses past
//! its limit in all. Probes (from 127.0.0.1, the abusers from other loopback addresses) are answered
//! within a bound throughout the first, and again once the flood's connections time out; the pipeline
//! keeps publishing.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, Daemon, Services};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// How long a probe may take while abusive clients hold connections below the limit.
const PROBE_BOUND: Duration = Duration::from_secs(2);
/// sluice's bound on a request head's arrival (api.rs), plus slack for a loaded machine.
const HEAD_TIMEOUT_AND_SLACK: Duration = Duration::from_secs(8);
/// The abusive clients' address in the first part: 127.0.0.2.
const ABUSER: u8 = 2;

/// GETs `path` `times` times; each must answer 200 within `bound`.
async fn probes_answer(address: &str, path: &str, times: usize, bound: Duration) {
    for _ in 0..times {
        let started = Instant::now();
        let (address, owned_path) = (address.to_owned(), path.to_owned());
        let answer =
            tokio::task::spawn_blocking(move || sluice_testkit::http_get(&address, &owned_path))
                .await
                .unwrap();
        let took = started.elapsed();
        let (status, _) = answer.unwrap_or_else(|err| panic!("GET {path}: {err:#}"));
        assert!(status.contains("200"), "GET {path}: {status}");
        assert!(took < bound, "GET {path} took {took:?}");
    }
}

/// A connection to `address` from the loopback address `127.0.0.<host>`.
async fn connect_from(host: u8, address: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(([127, 0, 0, host], 0).into())?;
    socket.connect(address.parse().expect("an address")).await
}

/// Sends the start of a request, then one header line a second, for ever; ends when the server closes.
/// Returns how long the server let it go on.
fn slow_client(address: String) -> JoinHandle<Duration> {
    tokio::spawn(async move {
        let started = Instant::now();
        let Ok(mut stream) = connect_from(ABUSER, &address).await else {
            return started.elapsed();
        };
        if stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            return started.elapsed();
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stream.write_all(b"X-Slow: a\r\n").await.is_err() {
                return started.elapsed();
            }
            let mut byte = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(10), stream.read(&mut byte)).await
            {
                return started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(60) {
                return started.elapsed();
            }
        }
    })
}

/// Megabytes of headers: refused (431) or cut off, never read whole.
async fn huge_headers(address: &str) -> String {
    let Ok(mut stream) = connect_from(ABUSER, address).await else {
        return String::new();
    };
    let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..20_000 {
        request.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(100)).as_bytes());
    }
    // The server closes once it has seen too much: the rest of the write fails.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_endpoint_answers_probes_and_the_pipeline_runs_under_abuse() {
    let services = Services::start().await;
    services
        .sql("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        .await;
    let mut config = services.config(&["public.orders"]);
    config.api_address = Some("127.0.0.1:0".into());
    let path = services.write(&config);
    let mut daemon = Daemon::start(&path);
    services.wait_streaming(&mut daemon).await;
    let address = daemon.api_address();

    // From one address, more than the endpoint serves from one: 100 slow clients, 100 silent ones,
    // 10 that never read their answer, 10 with megabytes of headers.
    let slow: Vec<JoinHandle<Duration>> = (0..100).map(|_| slow_client(address.clone())).collect();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.extend(connect_from(ABUSER, &address).await);
    }
    for _ in 0..10 {
        if let Ok(mut stream) = connect_from(ABUSER, &address).await {
            let _ = stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            held.push(stream);
        }
    }
    let mut huge = Vec::new();
    for _ in 0..10 {
        huge.push(huge_headers(&address).await);
    }
    for answer in &huge {
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "megabytes of headers are refused: {answer}"
        );
    }
    probes_answer(&address, "/health/live", 10, PROBE_BOUND).await;
    probes_answer(&address, "/metrics", 10, PROBE_BOUND).await;
    services
        .sql("INSERT INTO orders SELECT g, 'during abuse' FROM generate_series(1, 100) g")
        .await;
    let records = services
        .read("shop.public.orders", 100, Duration::from_secs(60))
        .await;
    assert_eq!(
        records.len(),
        100,
        "the pipeline publishes while the endpoint is abused"
    );

    // The slow clients are cut off by the head timeout, not served for ever.
    for client in slow {
        let lasted = client.await.unwrap();
        assert!(
            lasted < HEAD_TIMEOUT_AND_SLACK,
            "a client sending its head a line a second was served for {lasted:?}"
        );
    }
    drop(held);

    // Past the limit in all: 40 silent connections from each of ten addresses. The endpoint closes those
    // beyond it at once; the pipeline goes on; probes are answered again once the held ones time out.
    let flood_started = Instant::now();
    let mut flood = Vec::new();
    for host in 10..20 {
        for _ in 0..40 {
            flood.extend(connect_from(host, &address).await);
        }
    }
    services
        .sql("INSERT INTO orders SELECT g, 'during the flood' FROM generate_series(101, 200) g")
        .await;
    let answered_again = loop {
        let (address, started) = (address.clone(), Instant::now());
        let answer =
            tokio::task::spawn_blocking(move || sluice_testkit::http_get(&address, "/health/live"))
                .await
                .unwrap();
        if matches!(&answer, Ok((status, _)) if status.contains("200")) {
            break flood_started.elapsed();
        }
        assert!(
            flood_started.elapsed() < HEAD_TIMEOUT_AND_SLACK + Duration::from_secs(5),
            "probes unanswered {:?} after the flood began: {answer:?}",
            flood_started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200).saturating_sub(started.elapsed())).await;
    };
    eprintln!("probes answered again {answered_again:?} after a flood of 400 connections");
    let records = services
        .read("shop.public.orders", 200, Duration::from_secs(60))
        .await;
    assert_eq!(
        records.len(),
        200,
        "the pipeline publishes through the flood"
    );
    assert!(daemon.exited().is_none(), "{}", daemon.log());
    let (status, body) = http_get(&daemon, "/health/ready");
    assert!(status.contains("200"), "{status}\n{body}");
    drop(flood);
    daemon.stop_cleanly();
}
