//! The metering proxy's cost on loopback: time to first byte and total
//! time of streamed model calls, direct to an upstream and through
//! corral's proxy, and the throughput of one large streamed answer (issue
//! 10's figures).
//!
//! The upstream is a small hyper server in this process that answers every
//! `POST /v1/messages` with an Anthropic stream of its own: `message_start`,
//! ten `content_block_delta` events, `message_delta`, `message_stop`, each
//! event its own chunk, written as soon as the last went out. The proxy
//! (`corral::proxy::start`) runs in the same process with a gate that
//! admits every call and counts the records; the client is hyper's, with
//! keep-alive, one connection to each side. Calls alternate direct and
//! proxied so both see the same load; the bench checks that every proxied
//! call was recorded with the stream's usage.
//!
//! Time to first byte: from sending the request to the first body chunk.
//! Total: to the body's end. The anchor is the direct figure; the proxy's
//! cost is the proxied figure minus it, at p50 and p99.
//!
//! Then one answer of 10 MB (64 kB `content_block_delta` events), direct
//! and proxied, five times each: MB/s, median.
//!
//! Run: `cargo bench -p corral --bench proxy`. `PROXY_BENCH_CALLS` sets the
//! number of calls of each kind (1,000); `PROXY_BENCH_MB` the size of the
//! large answer (10).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use corral::proxy::server::Admission;
use corral::proxy::{Ask, CallRecord, Credential, Decision, Family, Gate, ProxyConfig, Token, Upstream};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

mod common;
use common::{env_number, load_average, percentile};

const TOKEN: &str = "corral-bench-token";

struct CountingGate {
    records: AtomicU64,
    output: AtomicU64,
}

impl Gate for CountingGate {
    fn admit(&self, _ask: Ask) -> Admission {
        Box::pin(async { Decision::Allow { max_output: None } })
    }
    fn record(&self, call: CallRecord) {
        self.records.fetch_add(1, Ordering::Relaxed);
        self.output.fetch_add(call.usage.output, Ordering::Relaxed);
    }
}

fn event(data: &str) -> Bytes {
    Bytes::from(format!("event: x\ndata: {data}\n\n"))
}

/// The upstream's answer: small (ten text deltas) or `big_mb` megabytes.
fn answer(big_mb: Option<usize>) -> Vec<Bytes> {
    let mut events = vec![event(
        r#"{"type":"message_start","message":{"id":"m","model":"claude-bench","usage":{"input_tokens":100,"output_tokens":1}}}"#,
    )];
    match big_mb {
        None => {
            for _ in 0..10 {
                events.push(event(
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"token "}}"#,
                ));
            }
        }
        Some(mb) => {
            let text = "x".repeat(64 * 1024);
            let delta = event(&format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
            ));
            for _ in 0..(mb * 16) {
                events.push(delta.clone());
            }
        }
    }
    events.push(event(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":10}}"#));
    events.push(event(r#"{"type":"message_stop"}"#));
    events
}

async fn upstream(big_mb: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let small = Arc::new(answer(None));
    let big = Arc::new(answer(Some(big_mb)));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let (small, big) = (small.clone(), big.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let events =
                        if req.uri().path().ends_with("/big/v1/messages") { big.clone() } else { small.clone() };
                    async move {
                        let _ = req.into_body().collect().await;
                        let mut response = Response::new(Frames(events.iter().cloned().collect()));
                        response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// The upstream's answer body: one frame per event, each its own chunk on
/// the wire.
struct Frames(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn main() {
    let calls: usize = env_number("PROXY_BENCH_CALLS", 1000);
    let big_mb: usize = env_number("PROXY_BENCH_MB", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let up = upstream(big_mb).await;
        let gate = Arc::new(CountingGate { records: AtomicU64::new(0), output: AtomicU64::new(0) });
        let base = format!("http://{up}");
        let upstreams = HashMap::from([(
            Family::Anthropic,
            Upstream { base: base.clone(), credential: Some(Credential::ApiKey("sk-bench".into())) },
        )]);
        let proxy = corral::proxy::start(ProxyConfig { token: Token(TOKEN.into()), upstreams }, gate.clone())
            .await
            .expect("proxy starts");
        let proxied = format!("http://{}", proxy.addr);
        let direct_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let proxy_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let body = Bytes::from(
            r#"{"model":"claude-bench","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let call = |client: &Client<_, Full<Bytes>>, url: String| {
            let request = Request::post(url)
                .header("x-api-key", TOKEN)
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .unwrap();
            let sent = Instant::now();
            let response = client.request(request);
            async move {
                let mut body = response.await.expect("answered").into_body();
                let mut first = None;
                let mut bytes = 0usize;
                while let Some(frame) = body.frame().await {
                    if let Some(data) = frame.expect("frame").data_ref() {
                        first.get_or_insert_with(|| sent.elapsed());
                        bytes += data.len();
                    }
                }
                (first.unwrap().as_secs_f64() * 1000.0, sent.elapsed().as_secs_f64() * 1000.0, bytes)
            }
        };

        // Warm both paths (connections, the proxy's upstream pool).
        for _ in 0..20 {
            call(&direct_client, format!("{base}/v1/messages")).await;
            call(&proxy_client, format!("{proxied}/v1/messages")).await;
        }
        let warm_records = gate.records.load(Ordering::Relaxed);
        let (mut d_ttfb, mut d_total, mut p_ttfb, mut p_total) = (vec![], vec![], vec![], vec![]);
        for _ in 0..calls {
            let (t, total, _) = call(&direct_client, format!("{base}/v1/messages")).await;
            d_ttfb.push(t);
            d_total.push(total);
            let (t, total, _) = call(&proxy_client, format!("{proxied}/v1/messages")).await;
            p_ttfb.push(t);
            p_total.push(total);
        }
        // Records arrive as each body ends; the last may trail by a moment.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while gate.records.load(Ordering::Relaxed) < warm_records + calls as u64 && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        let recorded = gate.records.load(Ordering::Relaxed) - warm_records;
        assert_eq!(recorded, calls as u64, "every proxied call is recorded");
        for v in [&mut d_ttfb, &mut d_total, &mut p_ttfb, &mut p_total] {
            v.sort_by(f64::total_cmp);
        }
        println!("proxy bench: {calls} streamed calls each way on loopback, load average {}", load_average());
        for (what, direct, proxied) in [("time to first byte", &d_ttfb, &p_ttfb), ("total time", &d_total, &p_total)] {
            let (d50, d99, p50, p99) =
                (percentile(direct, 50.0), percentile(direct, 99.0), percentile(proxied, 50.0), percentile(proxied, 99.0));
            println!(
                "  {what:<18} direct (anchor) p50 {d50:.3} ms p99 {d99:.3} ms | proxied p50 {p50:.3} ms p99 {p99:.3} ms | added p50 {:.3} ms p99 {:.3} ms",
                p50 - d50,
                p99 - d99
            );
        }

        let mut direct_rates = vec![];
        let mut proxied_rates = vec![];
        for _ in 0..5 {
            let (_, ms, bytes) = call(&direct_client, format!("{base}/big/v1/messages")).await;
            direct_rates.push(bytes as f64 / 1e6 / (ms / 1000.0));
            let (_, ms, bytes) = call(&proxy_client, format!("{proxied}/big/v1/messages")).await;
            assert!(bytes >= big_mb << 20, "the whole answer came through ({bytes} bytes)");
            proxied_rates.push(bytes as f64 / 1e6 / (ms / 1000.0));
        }
        direct_rates.sort_by(f64::total_cmp);
        proxied_rates.sort_by(f64::total_cmp);
        println!(
            "  one {big_mb} MB streamed answer, median of 5: direct (anchor) {:.0} MB/s | proxied {:.0} MB/s ({:.0}% of direct); load average {}",
            direct_rates[2],
            proxied_rates[2],
            proxied_rates[2] / direct_rates[2] * 100.0,
            load_average()
        );
    });
}
