//! The proxy's HTTP side: a server on loopback that takes an agent's model
//! calls and a client that sends them upstream.
//!
//! For each request: route it by path (nothing the proxy cannot meter or
//! knows to be free goes upstream), check the agent's token (any other is
//! refused with 401), read the body (up to [`MAX_REQUEST_BYTES`]), ask the
//! [`Gate`] for an admission with the call's estimate, lower its output
//! cap to what the admission allows, swap the token for the real key, and
//! send it. The response goes back to the agent frame by frame as it
//! arrives (no buffering), through a [`WireMeter`]; when its body ends,
//! is cut, or the agent hangs up, the call's [`CallRecord`] goes to the
//! gate. HTTP/1.1 with keep-alive on both sides; HTTPS upstreams through
//! rustls with the bundled web roots.
//!
//! Owns: the agent-side listener, the upstream connections and the
//! credentials (held in memory only; `Debug` prints none). Never does:
//! decide a budget (the gate does), write a file.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use corral_harness::TokenUsage;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admit::{Ask, Decision};
use super::meter::{End, Estimate, WireMeter};
use super::provider::{self, Family, Provider, Route};
use super::request::{self, LastCall, UNCAPPED_OUTPUT};

/// The largest request body taken: above Anthropic's 32 MB and Gemini's
/// 20 MB inline limits, so no call a provider takes is turned away.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// A future the gate answers with.
pub type Admission = Pin<Box<dyn Future<Output = Decision> + Send>>;

/// Where the proxy's admissions come from and its records go: the
/// monitor's link to the daemon (or a test's double).
pub trait Gate: Send + Sync + 'static {
    /// Whether `ask` may go upstream. Fails closed: an answer that cannot
    /// be had is a refusal, never an unmetered call.
    fn admit(&self, ask: Ask) -> Admission;
    /// A call has ended (or was refused): keep and report its record.
    fn record(&self, call: CallRecord);
}

/// One model call, as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub call: u64,
    pub provider: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The status the agent got (corral's own on a refusal).
    pub status: u16,
    /// What the call is charged.
    pub usage: TokenUsage,
    /// Why the estimate was charged, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// Why corral refused the call: it never went upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub estimate_input: u64,
    /// The output cap the call went upstream with, if corral set or kept one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cap: Option<u64>,
    pub started_at: DateTime<Utc>,
    /// From the request's arrival to the first byte of the answer's body.
    pub ttfb_ms: f64,
    pub duration_ms: f64,
}

/// How the proxy reaches one upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Scheme, host, port and any path prefix, e.g. `https://api.openai.com/v1`.
    pub base: String,
    pub credential: Option<Credential>,
}

/// A real key and how the provider wants it presented.
#[derive(Clone)]
pub enum Credential {
    /// `x-api-key` (Anthropic) or `x-goog-api-key` (Gemini).
    ApiKey(String),
    /// `Authorization: Bearer` (OpenAI; Anthropic's `ANTHROPIC_AUTH_TOKEN`).
    Bearer(String),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match &self.credential {
            Some(Credential::ApiKey(_)) => "api key (hidden)",
            Some(Credential::Bearer(_)) => "bearer token (hidden)",
            None => "none",
        };
        f.debug_struct("Upstream").field("base", &self.base).field("credential", &key).finish()
    }
}

/// What one agent's proxy serves.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The agent's token: the only one the proxy takes.
    pub token: Token,
    pub upstreams: HashMap<Family, Upstream>,
}

/// A per-agent token; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(hidden)")
    }
}

impl Token {
    /// 32 random bytes from the kernel, hex, with a prefix saying whose.
    pub fn random() -> std::io::Result<Token> {
        let mut bytes = [0u8; 32];
        let mut file = std::fs::File::open("/dev/urandom")?;
        std::io::Read::read_exact(&mut file, &mut bytes)?;
        Ok(Token(format!("corral-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())))
    }

    /// Compares in time independent of where the two differ.
    fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;
type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

struct Inner {
    config: ProxyConfig,
    gate: Arc<dyn Gate>,
    client: HttpsClient,
    next_call: std::sync::atomic::AtomicU64,
    last: Mutex<Option<LastCall>>,
}

/// A running proxy; dropping it stops the listener (calls under way finish).
pub struct Proxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The upstream client: HTTP/1.1, keep-alive, HTTPS through rustls.
fn client() -> std::io::Result<HttpsClient> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(std::io::Error::other)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Starts a proxy on 127.0.0.1 at a port of the kernel's choosing, on the
/// current tokio runtime.
pub async fn start(config: ProxyConfig, gate: Arc<dyn Gate>) -> std::io::Result<Proxy> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let inner = Arc::new(Inner {
        config,
        gate,
        client: client()?,
        next_call: std::sync::atomic::AtomicU64::new(1),
        last: Mutex::new(None),
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let inner = inner.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let inner = inner.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(inner, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Proxy { addr, task })
}

fn json_response(status: u16, body: &Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// The token the request presents, in any of the places a provider's
/// clients put a key.
fn presented_tokens<'a>(headers: &'a HeaderMap, query: &'a str) -> Vec<&'a str> {
    let mut found = Vec::new();
    for name in ["x-api-key", "x-goog-api-key"] {
        found.extend(headers.get(name).and_then(|v| v.to_str().ok()));
    }
    if let Some(auth) = headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        found.push(auth.strip_prefix("Bearer ").unwrap_or(auth).trim());
    }
    found.extend(query.split('&').filter_map(|pair| pair.strip_prefix("key=")));
    found
}

/// The query without a Gemini `key=` (the real key goes in a header).
fn query_without_key(query: &str) -> String {
    query.split('&').filter(|p| !p.starts_with("key=") && !p.is_empty()).collect::<Vec<_>>().join("&")
}

const DROPPED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    // The meter reads the answer: ask for it unencoded.
    "accept-encoding",
    "x-api-key",
    "x-goog-api-key",
    "authorization",
];

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<ProxyBody> {
    let arrived = Instant::now();
    let started_at = Utc::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let Some(route) = provider::route(&method, &path) else {
        let message = format!(
            "corral's proxy forwards model calls only; {method} {path} is not one (it takes POST .../messages, \
             .../responses, .../chat/completions and Gemini's :generateContent)"
        );
        return json_response(404, &Family::OpenAi.error(404, &message).1);
    };
    let family = match route {
        Route::Call(p) => p.family(),
        Route::Free(f) => f,
    };
    if !presented_tokens(req.headers(), &query).iter().any(|t| inner.config.token.matches(t)) {
        let (status, body) = family.unauthorized("corral: this proxy takes only its agent's own token");
        return json_response(status, &body);
    }
    let Some(upstream) = inner.config.upstreams.get(&family) else {
        let message = format!("corral: no {} upstream is set for this agent", family.name());
        return json_response(502, &family.error(502, &message).1);
    };
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            let too_big = err.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            let (status, message) = if too_big {
                (413, format!("corral: the request body is larger than {MAX_REQUEST_BYTES} bytes"))
            } else {
                (400, format!("corral: the request body could not be read: {err}"))
            };
            return json_response(status, &family.error(status, &message).1);
        }
    };
    let provider = match route {
        Route::Free(_) => {
            return match send(&inner, family, upstream, &parts.method, &path, &query, &parts.headers, body).await {
                Ok(response) => response.map(|b| b.boxed_unsync()),
                Err(message) => json_response(502, &family.error(502, &message).1),
            };
        }
        Route::Call(provider) => provider,
    };

    // A model call: estimate, admit, bound, send, meter.
    let call = inner.next_call.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut json: Value = match serde_json::from_slice(&body) {
        Ok(json) => json,
        Err(err) => {
            let message = format!("corral: the request body is not JSON ({err}); corral sends only calls it can meter");
            return json_response(400, &family.error(400, &message).1);
        }
    };
    let last = *inner.last.lock().unwrap();
    let estimate_input = request::estimate_input(body.len() as u64, last);
    let asked_output = request::output_cap(provider, &json);
    let model = request::model(&json).or_else(|| provider::model_in_path(&path));
    let ask = Ask { call, provider, model: model.clone(), estimate_input, asked_output };
    let record = CallRecord {
        call,
        provider,
        model,
        status: 0,
        usage: TokenUsage::default(),
        flag: None,
        refused: None,
        estimate_input,
        output_cap: asked_output,
        started_at,
        ttfb_ms: 0.0,
        duration_ms: 0.0,
    };
    let max_output = match inner.gate.admit(ask).await {
        Decision::Allow { max_output } => max_output,
        // A gate answers a held call only once it is decided; one that
        // hands a hold over is refused (a guard fails closed).
        Decision::Refuse { message } | Decision::Hold { message } => {
            let (status, body) = provider.refusal(&message);
            let elapsed = arrived.elapsed().as_secs_f64() * 1000.0;
            inner.gate.record(CallRecord {
                status,
                refused: Some(message),
                output_cap: None,
                ttfb_ms: elapsed,
                duration_ms: elapsed,
                ..record
            });
            return json_response(status, &body);
        }
    };
    let output_cap = max_output.map(|cap| request::lower_output_cap(provider, &mut json, cap)).or(asked_output);
    request::ask_for_stream_usage(provider, &mut json);
    let body = Bytes::from(serde_json::to_vec(&json).expect("a JSON value serializes"));
    let estimate = Estimate { input: estimate_input, output: output_cap.unwrap_or(UNCAPPED_OUTPUT) };
    let record = CallRecord { output_cap, ..record };
    let request_bytes = body.len() as u64;
    match send(&inner, family, upstream, &parts.method, &path, &query, &parts.headers, body).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let streamed = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/event-stream"));
            let meter = WireMeter::new(provider, status, streamed);
            let (parts, incoming) = response.into_parts();
            let metered = MeteredBody {
                inner: incoming,
                open: Some(Open { meter, estimate, record: CallRecord { status, ..record }, request_bytes }),
                proxy: inner.clone(),
                arrived,
                first_byte: None,
            };
            Response::from_parts(parts, metered.boxed_unsync())
        }
        Err(message) => {
            let elapsed = arrived.elapsed().as_secs_f64() * 1000.0;
            inner.gate.record(CallRecord {
                status: 502,
                flag: Some(message.clone()),
                ttfb_ms: elapsed,
                duration_ms: elapsed,
                ..record
            });
            json_response(502, &family.error(502, &message).1)
        }
    }
}

/// Sends a request upstream with the real key in place of the agent's
/// token; the error is a message for the agent.
#[allow(clippy::too_many_arguments)]
async fn send(
    inner: &Inner,
    family: Family,
    upstream: &Upstream,
    method: &hyper::Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Incoming>, String> {
    // OpenAI's base URLs carry the version (`.../v1`), and so does the one
    // corral gives the agent: the agent's `/v1` is the upstream base's.
    let rest = match upstream.base.trim_end_matches('/').ends_with("/v1") {
        true => path.strip_prefix("/v1").unwrap_or(path),
        false => path,
    };
    let query = query_without_key(query);
    let uri = match query.is_empty() {
        true => format!("{}{rest}", upstream.base.trim_end_matches('/')),
        false => format!("{}{rest}?{query}", upstream.base.trim_end_matches('/')),
    };
    let mut request = Request::builder().method(method.clone()).uri(&uri);
    let out = request.headers_mut().expect("a fresh builder has headers");
    for (name, value) in headers {
        if !DROPPED_HEADERS.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    match &upstream.credential {
        Some(Credential::ApiKey(key)) => {
            let name = match family {
                Family::Gemini => HeaderName::from_static("x-goog-api-key"),
                _ => HeaderName::from_static("x-api-key"),
            };
            out.insert(
                name,
                HeaderValue::from_str(key).map_err(|_| "corral: the real key is not a valid header".to_string())?,
            );
        }
        Some(Credential::Bearer(token)) => {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "corral: the real key is not a valid header".to_string())?;
            out.insert(hyper::header::AUTHORIZATION, value);
        }
        None => {}
    }
    let request = request.body(Full::new(body)).map_err(|e| format!("corral: bad upstream address {uri}: {e}"))?;
    inner
        .client
        .request(request)
        .await
        .map_err(|e| format!("corral: the upstream {} cannot be reached: {e}", upstream.base))
}

struct Open {
    meter: WireMeter,
    estimate: Estimate,
    record: CallRecord,
    request_bytes: u64,
}

/// The upstream's answer on its way to the agent: each frame is passed on
/// as it comes and read by the meter on the way.
struct MeteredBody {
    inner: Incoming,
    open: Option<Open>,
    proxy: Arc<Inner>,
    arrived: Instant,
    first_byte: Option<Instant>,
}

impl MeteredBody {
    fn end(&mut self, end: End) {
        let Some(open) = self.open.take() else { return };
        let charge = open.meter.finish(end, open.estimate);
        let now = Instant::now();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let record = CallRecord {
            model: charge.model.or(open.record.model.clone()),
            usage: charge.usage,
            flag: charge.flag.clone(),
            ttfb_ms: ms(self.first_byte.unwrap_or(now) - self.arrived),
            duration_ms: ms(now - self.arrived),
            ..open.record
        };
        let input_side = record.usage.input + record.usage.cache_read + record.usage.cache_write;
        if charge.flag.is_none() && input_side > 0 {
            *self.proxy.last.lock().unwrap() =
                Some(LastCall { input_tokens: input_side, body_bytes: open.request_bytes });
        }
        self.proxy.gate.record(record);
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(open)) = (frame.data_ref(), this.open.as_mut()) {
                    this.first_byte.get_or_insert_with(Instant::now);
                    open.meter.feed(data);
                }
                if this.inner.is_end_stream() {
                    this.end(End::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => this.end(End::Cut),
            Poll::Ready(None) => this.end(End::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    /// The agent hung up, or the answer was dropped before its end.
    fn drop(&mut self) {
        let end = if self.inner.is_end_stream() { End::Complete } else { End::Cut };
        self.end(end);
    }
}

#[cfg(test)]
mod tests;
