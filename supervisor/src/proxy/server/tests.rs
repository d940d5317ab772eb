//! The proxy between a real HTTP client and a real upstream on loopback:
//! corral's scripted model server, or a small server of the test's own
//! when the test needs to see headers or cut a stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_harness::mock_llm::{MockServer, Script};
use corral_harness::TokenUsage;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::*;
use crate::proxy::admit::{Ask, Decision};

const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct TestGate {
    decision: Mutex<Option<Decision>>,
    asks: Mutex<Vec<Ask>>,
    records: Mutex<Vec<CallRecord>>,
}

impl Gate for TestGate {
    fn admit(&self, ask: Ask) -> Admission {
        self.asks.lock().unwrap().push(ask);
        let decision = self.decision.lock().unwrap().clone().unwrap_or(Decision::Allow { max_output: None });
        Box::pin(async move { decision })
    }
    fn record(&self, call: CallRecord) {
        self.records.lock().unwrap().push(call);
    }
}

impl TestGate {
    async fn record_of(&self, call: u64) -> CallRecord {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(r) = self.records.lock().unwrap().iter().find(|r| r.call == call) {
                return r.clone();
            }
            assert!(Instant::now() < deadline, "no record of call {call}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

const TOKEN: &str = "corral-test-token";
const REAL_KEY: &str = "sk-real-key-never-shown";

async fn proxy_to(base: &str, gate: Arc<TestGate>) -> Proxy {
    let upstream = |credential| Upstream { base: base.to_owned(), credential: Some(credential) };
    let upstreams = HashMap::from([
        (Family::Anthropic, upstream(Credential::ApiKey(REAL_KEY.into()))),
        (
            Family::OpenAi,
            Upstream { base: format!("{base}/v1"), credential: Some(Credential::Bearer(REAL_KEY.into())) },
        ),
        (Family::Gemini, upstream(Credential::ApiKey(REAL_KEY.into()))),
    ]);
    start(ProxyConfig { token: Token(TOKEN.into()), upstreams }, gate).await.expect("proxy starts")
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn post(proxy: &Proxy, path: &str, headers: &[(&str, &str)], body: Value) -> Response<Incoming> {
    let mut req = Request::post(format!("http://{}{path}", proxy.addr)).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client().request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.expect("the proxy answers")
}

async fn text(response: Response<Incoming>) -> String {
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn script(steps: Value) -> Script {
    Script::from_json(&steps.to_string()).unwrap()
}

fn anthropic_body() -> Value {
    json!({"model": "claude-x", "max_tokens": 32000, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_streamed_anthropic_call_is_counted_as_the_script_says() {
    let mock = MockServer::start(
        script(
            json!([{"text": "hello", "usage": {"input": 120, "output": 30, "cache_read": 1000, "cache_write": 50}}]),
        ),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&mock.url(), gate.clone()).await;
    let response = post(&proxy, "/v1/messages?beta=true", &[("x-api-key", TOKEN)], anthropic_body()).await;
    assert_eq!(response.status(), 200);
    let body = text(response).await;
    assert!(body.contains("message_delta"), "{body}");
    let record = gate.record_of(1).await;
    assert_eq!(record.usage, TokenUsage { input: 120, output: 30, cache_read: 1000, cache_write: 50 });
    assert_eq!((record.flag, record.status, record.provider), (None, 200, Provider::Anthropic));
    // The query reached the upstream with the path.
    assert_eq!(mock.requests()[0].path, "/v1/messages?beta=true");
}

#[tokio::test]
async fn a_responses_call_is_counted_as_the_script_says() {
    let mock = MockServer::start(
        script(json!([{"text": "done", "usage": {"input": 700, "output": 40, "cache_read": 200}}])),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&mock.url(), gate.clone()).await;
    let body = json!({"model": "gpt-mock", "stream": true, "input": [{"role": "user", "content": "hi"}]});
    let response = post(&proxy, "/v1/responses", &[("authorization", &format!("Bearer {TOKEN}"))], body).await;
    assert_eq!(response.status(), 200);
    text(response).await;
    let record = gate.record_of(1).await;
    // The script's input is OpenAI's input_tokens, cached ones included.
    assert_eq!(record.usage, TokenUsage { input: 500, output: 40, cache_read: 200, cache_write: 0 });
    assert_eq!(mock.requests()[0].path, "/v1/responses");
}

#[tokio::test]
async fn any_other_token_is_refused_and_nothing_goes_upstream() {
    let mock = MockServer::start(script(json!([{"text": "x"}])), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&mock.url(), gate.clone()).await;
    for headers in [vec![], vec![("x-api-key", "corral-test-tokeN")], vec![("authorization", "Bearer sk-other")]] {
        let response = post(&proxy, "/v1/messages", &headers, anthropic_body()).await;
        assert_eq!(response.status(), 401);
        assert!(text(response).await.contains("authentication_error"));
    }
    let response = post(&proxy, "/v1/files", &[("x-api-key", TOKEN)], json!({})).await;
    assert_eq!(response.status(), 404);
    assert!(mock.requests().is_empty());
    assert!(gate.asks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_call_never_reaches_the_upstream_and_ends_the_turn() {
    let mock = MockServer::start(script(json!([{"text": "x"}])), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gate = Arc::new(TestGate::default());
    *gate.decision.lock().unwrap() = Some(Decision::Refuse { message: "corral: the token budget is spent".into() });
    let proxy = proxy_to(&mock.url(), gate.clone()).await;
    let response = post(&proxy, "/v1/messages", &[("x-api-key", TOKEN)], anthropic_body()).await;
    assert_eq!(response.status(), 402);
    let body: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["error"]["type"], "billing_error");
    let response = post(&proxy, "/v1/responses", &[("authorization", &format!("Bearer {TOKEN}"))], json!({})).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_none());
    assert!(mock.requests().is_empty());
    let record = gate.record_of(1).await;
    assert_eq!((record.status, record.usage), (402, TokenUsage::default()));
    assert!(record.refused.unwrap().contains("spent"));
}

#[tokio::test]
async fn the_crossing_call_goes_with_its_cap_lowered_and_its_estimate_from_the_last_call() {
    let mock = MockServer::start(
        script(json!([{"text": "a", "usage": {"input": 1000, "output": 5}}, {"text": "b", "usage": {"input": 1000, "output": 5}}])),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&mock.url(), gate.clone()).await;
    text(post(&proxy, "/v1/messages", &[("x-api-key", TOKEN)], anthropic_body()).await).await;
    gate.record_of(1).await;
    *gate.decision.lock().unwrap() = Some(Decision::Allow { max_output: Some(77) });
    text(post(&proxy, "/v1/messages", &[("x-api-key", TOKEN)], anthropic_body()).await).await;
    let record = gate.record_of(2).await;
    assert_eq!(mock.requests()[1].body["max_tokens"], 77);
    assert_eq!(record.output_cap, Some(77));
    let asks = gate.asks.lock().unwrap().clone();
    // No basis for the first; the second, the same body, reads what the first read.
    assert_eq!((asks[0].estimate_input, asks[1].estimate_input), (0, 1000));
    assert_eq!(asks[1].asked_output, Some(32000));
}

#[tokio::test]
async fn several_answers_share_the_cap_and_a_request_corral_cannot_bound_is_never_sent() {
    let mock = MockServer::start(
        script(json!([{"text": "a", "usage": {"input": 10, "output": 5}}])),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&mock.url(), gate.clone()).await;
    let bearer = format!("Bearer {TOKEN}");
    let chat = |extra: Value| {
        let mut body =
            json!({"model": "gpt-mock", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, field) in [(json!({"n": 2.5}), "`n`"), (json!({"n": "8"}), "`n`")] {
        let response = post(&proxy, "/v1/chat/completions", &[("authorization", &bearer)], chat(extra)).await;
        assert_eq!(response.status(), 400);
        assert!(text(response).await.contains(field));
    }
    let gemini = json!({"contents": [], "generation_config": {"max_output_tokens": 999_999}});
    let response = post(&proxy, "/v1beta/models/gemini-x:generateContent", &[("x-goog-api-key", TOKEN)], gemini).await;
    assert_eq!(response.status(), 400);
    assert!(text(response).await.contains("generation_config"));
    assert!(mock.requests().is_empty(), "a request corral cannot bound went upstream");
    assert!(gate.asks.lock().unwrap().is_empty());

    // Eight answers: asked and held as eight caps, and capped so that all
    // eight together stay within what the budget leaves.
    *gate.decision.lock().unwrap() = Some(Decision::Allow { max_output: Some(1000) });
    let response = post(&proxy, "/v1/chat/completions", &[("authorization", &bearer)], chat(json!({"n": 8}))).await;
    text(response).await;
    let record = gate.record_of(1).await;
    assert_eq!(gate.asks.lock().unwrap()[0].asked_output, Some(32_000));
    assert_eq!(mock.requests()[0].body["max_tokens"], 125);
    assert_eq!(record.output_cap, Some(1000));
}

/// An upstream of the test's own: it records the headers of each request
/// and answers with `events`, sending each when `release` lets it (one
/// permit an event, and one first for the head when `hold_head`), and
/// cuts the connection after them when `cut`.
struct OwnUpstream {
    addr: std::net::SocketAddr,
    headers: Arc<Mutex<Vec<hyper::HeaderMap>>>,
    release: Arc<tokio::sync::Semaphore>,
    _task: tokio::task::JoinHandle<()>,
}

async fn upstream_of_own(events: Vec<String>, cut: bool, hold_head: bool) -> OwnUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let headers = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (seen, gate) = (headers.clone(), release.clone());
    let task = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (seen, gate, events) = (seen.clone(), gate.clone(), events.clone());
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Read the head and the body by hand, so the answer can be
                // written (and cut) byte for byte.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let head_end = loop {
                    let n = stream.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut map = hyper::HeaderMap::new();
                for line in head.lines().skip(1) {
                    if let Some((k, v)) = line.split_once(':') {
                        map.append(
                            hyper::header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                            v.trim().parse().unwrap(),
                        );
                    }
                }
                seen.lock().unwrap().push(map);
                if hold_head {
                    gate.acquire().await.unwrap().forget();
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                stream.write_all(head.as_bytes()).await.unwrap();
                for event in &events {
                    gate.acquire().await.unwrap().forget();
                    let data = format!("event: x\ndata: {event}\n\n");
                    stream.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await.unwrap();
                    stream.flush().await.unwrap();
                }
                if !cut {
                    stream.write_all(b"0\r\n\r\n").await.unwrap();
                }
                stream.shutdown().await.ok();
            });
        }
    });
    OwnUpstream { addr, headers, release, _task: task }
}

fn anthropic_events(input: u64, output: u64) -> Vec<String> {
    vec![
        format!(
            r#"{{"type":"message_start","message":{{"id":"m","usage":{{"input_tokens":{input},"output_tokens":1}}}}}}"#
        ),
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#.into(),
        format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn"}},"usage":{{"output_tokens":{output}}}}}"#
        ),
        r#"{"type":"message_stop"}"#.into(),
    ]
}

#[tokio::test]
async fn the_real_key_replaces_the_token_and_each_event_passes_as_it_comes() {
    let upstream = upstream_of_own(anthropic_events(300, 20), false, false).await;
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&format!("http://{}", upstream.addr), gate.clone()).await;
    let headers = [("x-api-key", TOKEN), ("accept-encoding", "gzip"), ("x-http-method-override", "DELETE")];
    let response = post(&proxy, "/v1/messages", &headers, anthropic_body()).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // One event released at a time: each reaches the client before the
    // upstream sends the next, so nothing is held back.
    let mut got = String::new();
    let events = anthropic_events(300, 20);
    for (i, event) in events.iter().enumerate() {
        upstream.release.add_permits(1);
        let deadline = Instant::now() + PATIENCE;
        while !got.contains(event.as_str()) {
            let frame = tokio::time::timeout_at(deadline.into(), body.frame()).await.expect("event passed on");
            if let Some(data) = frame.expect("stream open").unwrap().data_ref() {
                got.push_str(&String::from_utf8_lossy(data));
            }
        }
        // (After the last, the upstream ends the body without waiting.)
        if i + 1 < events.len() {
            assert!(gate.records.lock().unwrap().is_empty(), "recorded before the end, at event {i}");
        }
    }
    while body.frame().await.is_some() {}
    let record = gate.record_of(1).await;
    assert_eq!((record.usage.input, record.usage.output, record.flag), (300, 20, None));
    let headers = upstream.headers.lock().unwrap()[0].clone();
    assert_eq!(headers.get("x-api-key").unwrap(), REAL_KEY);
    assert!(headers.get("accept-encoding").is_none());
    assert!(headers.get("x-http-method-override").is_none(), "the method it was metered by is the method sent");
    assert!(!format!("{headers:?}").contains(TOKEN));
}

#[tokio::test]
async fn a_stream_cut_mid_way_is_charged_its_estimate() {
    let upstream = upstream_of_own(anthropic_events(300, 20)[..2].to_vec(), true, false).await;
    upstream.release.add_permits(2);
    let gate = Arc::new(TestGate::default());
    *gate.decision.lock().unwrap() = Some(Decision::Allow { max_output: Some(900) });
    let proxy = proxy_to(&format!("http://{}", upstream.addr), gate.clone()).await;
    let response = post(&proxy, "/v1/messages", &[("x-api-key", TOKEN)], anthropic_body()).await;
    let _ = response.into_body().collect().await;
    let record = gate.record_of(1).await;
    assert_eq!((record.usage.input, record.usage.output), (300, 900));
    assert!(record.flag.unwrap().contains("cut"));
}

/// Waits until the upstream has had `n` requests.
async fn requests_reach(upstream: &OwnUpstream, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while upstream.headers.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "the call never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_agent_that_hangs_up_before_the_answer_is_charged_what_the_answer_says() {
    let upstream = upstream_of_own(anthropic_events(300, 20), false, true).await;
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&format!("http://{}", upstream.addr), gate.clone()).await;
    let url = format!("http://{}/v1/messages", proxy.addr);
    let request =
        Request::post(url).header("x-api-key", TOKEN).body(Full::new(Bytes::from(anthropic_body().to_string())));
    let call = tokio::spawn(async move { client().request(request.unwrap()).await });
    requests_reach(&upstream, 1).await;
    // The agent gives up while the call is upstream: its connection goes.
    call.abort();
    let _ = call.await;
    upstream.release.add_permits(1 + anthropic_events(300, 20).len());
    let record = gate.record_of(1).await;
    assert_eq!((record.status, record.usage.input, record.usage.output, record.flag), (200, 300, 20, None));
}

#[tokio::test]
async fn an_agent_that_hangs_up_mid_answer_is_charged_what_the_whole_answer_says() {
    let upstream = upstream_of_own(anthropic_events(300, 20), false, false).await;
    upstream.release.add_permits(1);
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&format!("http://{}", upstream.addr), gate.clone()).await;
    let response = post(&proxy, "/v1/messages", &[("x-api-key", TOKEN)], anthropic_body()).await;
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame()).await.expect("the first event passed on");
    assert!(first.is_some());
    drop(body);
    upstream.release.add_permits(anthropic_events(300, 20).len());
    let record = gate.record_of(1).await;
    assert_eq!((record.usage.input, record.usage.output, record.flag), (300, 20, None));
}

#[tokio::test]
async fn closing_charges_an_open_call_its_estimate_and_sends_nothing_after() {
    let upstream = upstream_of_own(anthropic_events(300, 20), false, true).await;
    let gate = Arc::new(TestGate::default());
    *gate.decision.lock().unwrap() = Some(Decision::Allow { max_output: Some(900) });
    let proxy = proxy_to(&format!("http://{}", upstream.addr), gate.clone()).await;
    let address = proxy.addr;
    let first = tokio::spawn(async move {
        let request = Request::post(format!("http://{address}/v1/messages"))
            .header("x-api-key", TOKEN)
            .body(Full::new(Bytes::from(anthropic_body().to_string())))
            .unwrap();
        client().request(request).await
    });
    requests_reach(&upstream, 1).await;
    assert_eq!(proxy.open.close("the owner ended"), 1);
    let record = gate.record_of(1).await;
    assert_eq!((record.usage.output, record.flag.as_deref()), (900, Some("the owner ended")));
    // A second call is refused at once and never reaches the upstream;
    // its owner is ending, so nothing of it is recorded either.
    let response = post(&proxy, "/v1/messages", &[("x-api-key", TOKEN)], anthropic_body()).await;
    assert_eq!(response.status(), 503);
    assert!(gate.records.lock().unwrap().iter().all(|r| r.call == 1));
    assert_eq!(upstream.headers.lock().unwrap().len(), 1);
    // The first call's answer, when it comes, is passed on and not
    // recorded twice.
    upstream.release.add_permits(1 + anthropic_events(300, 20).len());
    let answer = tokio::time::timeout(PATIENCE, first).await.unwrap().unwrap().expect("answered");
    assert!(text(answer).await.contains("message_stop"));
    assert_eq!(gate.records.lock().unwrap().iter().filter(|r| r.call == 1).count(), 1);
}

#[tokio::test]
async fn a_first_call_cut_before_any_usage_is_charged_its_bodys_bytes() {
    // The answer's text, then the cut: no usage was ever seen.
    let upstream = upstream_of_own(anthropic_events(300, 20)[1..2].to_vec(), true, false).await;
    upstream.release.add_permits(1);
    let gate = Arc::new(TestGate::default());
    *gate.decision.lock().unwrap() = Some(Decision::Allow { max_output: Some(900) });
    let proxy = proxy_to(&format!("http://{}", upstream.addr), gate.clone()).await;
    let response = post(&proxy, "/v1/messages", &[("x-api-key", TOKEN)], anthropic_body()).await;
    let _ = response.into_body().collect().await;
    let record = gate.record_of(1).await;
    let bytes = anthropic_body().to_string().len() as u64;
    assert_eq!((record.estimate_input, record.usage.input, record.usage.output), (0, bytes, 900));
    assert!(record.flag.unwrap().contains("cut"));
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reached_charges_nothing() {
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&base, gate.clone()).await;
    let response = post(&proxy, "/v1/messages", &[("x-api-key", TOKEN)], anthropic_body()).await;
    assert_eq!(response.status(), 502);
    let record = gate.record_of(1).await;
    assert_eq!((record.status, record.usage), (502, TokenUsage::default()));
    assert!(record.flag.unwrap().contains("cannot be reached"));
}

#[test]
fn debug_output_names_no_secret() {
    let config = ProxyConfig {
        token: Token(TOKEN.into()),
        upstreams: HashMap::from([(
            Family::OpenAi,
            super::Upstream { base: "https://x/v1".into(), credential: Some(Credential::Bearer(REAL_KEY.into())) },
        )]),
    };
    let shown = format!("{config:?}");
    assert!(!shown.contains(TOKEN) && !shown.contains(REAL_KEY), "{shown}");
}

#[test]
fn random_tokens_differ() {
    let (a, b) = (Token::random().unwrap(), Token::random().unwrap());
    assert_ne!(a, b);
    assert!(a.0.starts_with("corral-") && a.0.len() == 7 + 64);
}

/// A Responses stream: its id, then its usage.
fn responses_events(id: &str, input: u64, output: u64) -> Vec<String> {
    vec![
        json!({"type": "response.created", "response": {"id": id, "model": "gpt-x", "usage": null}}).to_string(),
        json!({"type": "response.completed", "response": {"id": id, "model": "gpt-x",
            "usage": {"input_tokens": input, "output_tokens": output}}})
        .to_string(),
    ]
}

#[tokio::test]
async fn a_call_that_continues_a_response_is_estimated_and_charged_no_less_than_that_conversation() {
    // Regression: a call sending only its new turn with
    // `previous_response_id` was estimated (and, cut, charged) from its
    // small body, though the upstream reads the whole conversation again.
    let upstream = upstream_of_own(responses_events("resp_1", 5000, 300), false, true).await;
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&format!("http://{}", upstream.addr), gate.clone()).await;
    let auth = format!("Bearer {TOKEN}");
    upstream.release.add_permits(1 + 2);
    let first = json!({"model": "gpt-x", "stream": true, "input": [{"role": "user", "content": "x".repeat(20_000)}]});
    let response = post(&proxy, "/v1/responses", &[("authorization", &auth)], first).await;
    text(response).await;
    assert_eq!((gate.record_of(1).await.usage.input, gate.record_of(1).await.flag), (5000, None));
    // The next call sends only its new turn, and is cut before its answer.
    let next = json!({"model": "gpt-x", "stream": true, "previous_response_id": "resp_1",
        "input": [{"role": "user", "content": "go on"}]});
    let address = proxy.addr;
    let pending = tokio::spawn(async move {
        let request = Request::post(format!("http://{address}/v1/responses"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from(next.to_string())))
            .unwrap();
        client().request(request).await
    });
    requests_reach(&upstream, 2).await;
    let ask = gate.asks.lock().unwrap()[1].clone();
    assert!(ask.estimate_input >= 5300, "estimated at {} input tokens", ask.estimate_input);
    assert!(ask.input_floor >= 5300, "floored at {} input tokens", ask.input_floor);
    assert_eq!(proxy.open.close("the owner ended"), 1);
    let record = gate.record_of(2).await;
    assert!(record.usage.input >= 5300, "charged {:?}", record.usage);
    pending.abort();
}

#[tokio::test]
async fn a_call_whose_stored_input_corral_cannot_size_is_refused_and_never_sent() {
    let steps = script(json!([{"text": "x"}, {"text": "y"}]));
    let mock = MockServer::start(steps, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gate = Arc::new(TestGate::default());
    let proxy = proxy_to(&mock.url(), gate.clone()).await;
    let auth = format!("Bearer {TOKEN}");
    let turn = json!([{"role": "user", "content": "hi"}]);
    for (field, value, says) in [
        ("previous_response_id", json!("resp_never_seen"), "did not pass this agent's proxy"),
        ("previous_response_id", json!(7), "not a response id"),
        ("conversation", json!("conv_1"), "a stored conversation"),
        ("prompt", json!({"id": "pmpt_1"}), "a stored prompt"),
    ] {
        let body = json!({"model": "gpt-x", "stream": true, "input": turn, field: value});
        let response = post(&proxy, "/v1/responses", &[("authorization", &auth)], body).await;
        assert_eq!(response.status(), 400, "{field}: {value}");
        let said = text(response).await;
        assert!(said.contains(says), "{field}: {value}: {said}");
    }
    assert!(mock.requests().is_empty(), "a refused call reached the upstream");
    // A response that passed the proxy may be continued.
    let body = json!({"model": "gpt-x", "stream": true, "input": turn});
    let answer = text(post(&proxy, "/v1/responses", &[("authorization", &auth)], body).await).await;
    let at = answer.find("resp_mock_").expect("the answer names its response");
    let id: String = answer[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    let body = json!({"model": "gpt-x", "stream": true, "input": turn, "previous_response_id": id});
    let response = post(&proxy, "/v1/responses", &[("authorization", &auth)], body).await;
    assert_eq!(response.status(), 200, "{}", text(response).await);
}
