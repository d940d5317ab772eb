//! The proxy's HTTP side: a server on loopback that takes an agent's model
//! calls and a client that sends them upstream.
//!
//! For each request: route it by path (nothing the proxy cannot meter or
//! knows to be free goes upstream), check the agent's token (any other is
//! refused with 401), read the body (up to [`MAX_REQUEST_BYTES`]), ask the
//! [`Gate`] for an admission with the call's estimate, lower its output
//! cap to what the admission allows, swap the token for the real key, and
//! send it. The response goes back to the agent frame by frame as it
//! arrives (at most [`FRAMES_AHEAD`] read ahead of the agent), through a
//! [`WireMeter`]; when its body ends or is cut, the call's [`CallRecord`]
//! goes to the gate. A call belongs to the proxy once its body is read:
//! an agent that hangs up cancels nothing, and the answer is read to its
//! end for what it charged. Calls still open when the proxy's owner ends
//! are recorded by [`OpenCalls::close`]. HTTP/1.1 with keep-alive on both sides; HTTPS upstreams through
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
    /// Its place among the records its monitor kept, from 0 (set by the
    /// monitor, so the calls file says it even when a line is lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
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
    contexts: Mutex<Contexts>,
    /// Calls sent upstream and not yet recorded; `None` once closed.
    open: Mutex<Option<HashMap<u64, Slot>>>,
}

/// What each response this proxy metered leaves for a call that continues
/// it (`previous_response_id`): the input it read and the output it wrote,
/// all of which that call reads again. The latest [`KEPT_CONTEXTS`] only:
/// a call that continues one older is refused, as one that continues a
/// response this proxy never saw.
#[derive(Default)]
struct Contexts {
    tokens: HashMap<String, u64>,
    order: std::collections::VecDeque<String>,
}

const KEPT_CONTEXTS: usize = 4096;

impl Contexts {
    fn get(&self, id: &str) -> Option<u64> {
        self.tokens.get(id).copied()
    }

    fn keep(&mut self, id: String, tokens: u64) {
        if self.tokens.insert(id.clone(), tokens).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > KEPT_CONTEXTS {
            if let Some(old) = self.order.pop_front() {
                self.tokens.remove(&old);
            }
        }
    }
}

/// A running proxy; dropping it stops the listener (calls under way finish).
pub struct Proxy {
    pub addr: SocketAddr,
    /// Its calls under way.
    pub open: OpenCalls,
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
        contexts: Mutex::default(),
        open: Mutex::new(Some(HashMap::new())),
    });
    let open = OpenCalls(inner.clone());
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
    Ok(Proxy { addr, open, task })
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
    // A request goes upstream as the method it was routed (and metered)
    // by: a free GET must never turn into a call.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
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
            // A model list reads no body: none goes with it.
            let body = if parts.method == hyper::Method::GET { Bytes::new() } else { body };
            return match send(&inner, family, upstream, &parts.method, &path, &query, &parts.headers, body).await {
                Ok(response) => response.map(|b| b.boxed_unsync()),
                Err(unsent) => json_response(502, &family.error(502, &unsent.message).1),
            };
        }
        Route::Call(provider) => provider,
    };
    // From here the call is the proxy's, not the connection's: an agent
    // that hangs up cancels nothing, so a call that went upstream is
    // metered from its answer all the same.
    let call = Call {
        provider,
        family,
        upstream: upstream.clone(),
        method: parts.method,
        headers: parts.headers,
        path,
        query,
        body,
        arrived,
        started_at,
    };
    let (reply, replied) = tokio::sync::oneshot::channel();
    tokio::spawn(model_call(inner, call, reply));
    replied.await.unwrap_or_else(|_| {
        let message = "corral: the proxy lost this call's answer";
        json_response(502, &family.error(502, message).1)
    })
}

/// A model call, as the agent sent it.
struct Call {
    provider: Provider,
    family: Family,
    upstream: Upstream,
    method: hyper::Method,
    headers: HeaderMap,
    path: String,
    query: String,
    body: Bytes,
    arrived: Instant,
    started_at: DateTime<Utc>,
}

/// Estimates, admits, bounds, sends and meters one call, answering the
/// agent on `reply`; every call numbered here ends in one record.
async fn model_call(inner: Arc<Inner>, call: Call, reply: Reply) {
    let (provider, family) = (call.provider, call.family);
    let error_reply = |status: u16, message: String| json_response(status, &family.error(status, &message).1);
    let ended = || error_reply(503, "corral: the agent has ended, so its call was not sent".into());
    let mut json: Value = match serde_json::from_slice(&call.body) {
        Ok(json) => json,
        Err(err) => {
            let message = format!("corral: the request body is not JSON ({err}); corral sends only calls it can meter");
            let _ = reply.send(error_reply(400, message));
            return;
        }
    };
    if let Some(message) = request::unbounded(provider, &json) {
        let _ = reply.send(error_reply(400, message));
        return;
    }
    // A Responses call that continues an earlier response reads all of
    // that conversation again, which its body does not show.
    let stored = match request::stored_input(provider, &json) {
        Ok(None) => None,
        Ok(Some(id)) => match inner.contexts.lock().unwrap().get(&id) {
            Some(tokens) => Some(tokens),
            None => {
                let message = format!(
                    "corral: the request continues response `{id}` (`previous_response_id`), which did not pass \
                     this agent's proxy, so corral cannot tell what the call reads; it was not sent (send the \
                     input in the request instead)"
                );
                let _ = reply.send(error_reply(400, message));
                return;
            }
        },
        Err(message) => {
            let _ = reply.send(error_reply(400, message));
            return;
        }
    };
    let number = inner.next_call.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let last = *inner.last.lock().unwrap();
    let context = stored.unwrap_or(0);
    let estimate_input = context.saturating_add(request::estimate_input(call.body.len() as u64, last));
    let asked_output = request::output_cap(provider, &json);
    let model = request::model(&json).or_else(|| provider::model_in_path(&call.path));
    let input_floor = context.saturating_add(request::input_floor(call.body.len() as u64, last));
    let ask = Ask { call: number, provider, model: model.clone(), estimate_input, input_floor, asked_output };
    let record = CallRecord {
        call: number,
        provider,
        model,
        status: 0,
        usage: TokenUsage::default(),
        flag: None,
        refused: None,
        estimate_input,
        output_cap: asked_output,
        started_at: call.started_at,
        index: None,
        ttfb_ms: 0.0,
        duration_ms: 0.0,
    };
    let refused = |status: u16, message: String| {
        let elapsed = call.arrived.elapsed().as_secs_f64() * 1000.0;
        inner.gate.record(CallRecord {
            status,
            refused: Some(message),
            output_cap: None,
            ttfb_ms: elapsed,
            duration_ms: elapsed,
            ..record.clone()
        });
    };
    let decision = inner.gate.admit(ask).await;
    // Closed meanwhile (its owner is ending): it was not sent, and no
    // record of it is wanted now.
    if inner.closed() {
        let _ = reply.send(ended());
        return;
    }
    let max_output = match decision {
        Decision::Allow { max_output } => max_output,
        // A gate answers a held call only once it is decided; one that
        // hands a hold over is refused (a guard fails closed).
        Decision::Refuse { message } | Decision::Hold { message } => {
            let (status, body) = provider.refusal(&message);
            refused(status, message);
            let _ = reply.send(json_response(status, &body));
            return;
        }
    };
    if reply.is_closed() {
        refused(499, "corral: the agent hung up before its call was sent; nothing went upstream".into());
        return;
    }
    let output_cap = max_output.map(|cap| request::lower_output_cap(provider, &mut json, cap)).or(asked_output);
    // Uncapped, each answer may run to the largest output there is.
    let uncapped = UNCAPPED_OUTPUT.saturating_mul(request::choices(provider, &json));
    request::ask_for_stream_usage(provider, &mut json);
    let body = Bytes::from(serde_json::to_vec(&json).expect("a JSON value serializes"));
    let open = Open {
        meter: None,
        estimate: Estimate { input: input_floor, output: output_cap.unwrap_or(uncapped) },
        record: CallRecord { output_cap, ..record.clone() },
        request_bytes: body.len() as u64,
        continues: stored.is_some(),
        arrived: call.arrived,
        first_byte: None,
    };
    // Opened, unless closed; and closed meanwhile, it is already recorded
    // and not to be sent.
    let Some(slot) = inner.open(open).filter(|slot| slot.lock().unwrap().is_some()) else {
        let _ = reply.send(ended());
        return;
    };
    let sent = send(&inner, family, &call.upstream, &call.method, &call.path, &call.query, &call.headers, body).await;
    let response = match sent {
        Ok(response) => response,
        Err(unsent) => {
            inner.fail_call(&slot, &unsent);
            let _ = reply.send(error_reply(502, unsent.message));
            return;
        }
    };
    let status = response.status().as_u16();
    let streamed = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if let Some(open) = slot.lock().unwrap().as_mut() {
        open.meter = Some(WireMeter::new(provider, status, streamed));
        open.record.status = status;
    }
    let (parts, mut incoming) = response.into_parts();
    let (frames, forwarded) = tokio::sync::mpsc::channel(FRAMES_AHEAD);
    let hint = incoming.size_hint();
    let answer = Response::from_parts(parts, Forwarded { frames: forwarded, hint }.boxed_unsync());
    // Read to its end whether or not the agent still listens: what the
    // upstream charged is in the answer's last bytes.
    let mut listening = reply.send(answer).is_ok();
    loop {
        // Nobody listening, an upstream that goes quiet is not waited for
        // past UNHEARD_QUIET: the call is cut, charged no less than its
        // estimate, and what it held of its budgets is let go.
        let next = match listening {
            true => incoming.frame().await,
            false => match tokio::time::timeout(UNHEARD_QUIET, incoming.frame()).await {
                Ok(next) => next,
                Err(_) => {
                    let why = format!(
                        "the agent hung up and the upstream sent nothing for {} s: charged its estimate",
                        UNHEARD_QUIET.as_secs()
                    );
                    inner.close_call(&slot, End::Cut, Some(&why));
                    return;
                }
            },
        };
        match next {
            Some(Ok(frame)) => {
                if let (Some(data), Some(open)) = (frame.data_ref(), slot.lock().unwrap().as_mut()) {
                    open.first_byte.get_or_insert_with(Instant::now);
                    if let Some(meter) = open.meter.as_mut() {
                        meter.feed(data);
                    }
                }
                listening = listening && frames.send(Ok(frame)).await.is_ok();
            }
            Some(Err(err)) => {
                inner.close_call(&slot, End::Cut, None);
                if listening {
                    let _ = frames.send(Err(err)).await;
                }
                return;
            }
            None => break,
        }
    }
    inner.close_call(&slot, End::Complete, None);
}

/// A request that got no answer from upstream.
struct Unsent {
    /// For the agent.
    message: String,
    /// Whether it may have reached the upstream all the same.
    maybe_sent: bool,
}

impl From<String> for Unsent {
    /// An error before anything was sent.
    fn from(message: String) -> Unsent {
        Unsent { message, maybe_sent: false }
    }
}

/// Sends a request upstream with the real key in place of the agent's
/// token.
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
) -> Result<Response<Incoming>, Unsent> {
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
                HeaderValue::from_str(key)
                    .map_err(|_| Unsent::from("corral: the real key is not a valid header".to_string()))?,
            );
        }
        Some(Credential::Bearer(token)) => {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Unsent::from("corral: the real key is not a valid header".to_string()))?;
            out.insert(hyper::header::AUTHORIZATION, value);
        }
        None => {}
    }
    let request = request.body(Full::new(body)).map_err(|e| format!("corral: bad upstream address {uri}: {e}"))?;
    inner.client.request(request).await.map_err(|e| Unsent {
        message: format!("corral: the upstream {} cannot be reached: {e}", upstream.base),
        // Connected, the request may have been read and answered (and
        // charged) before the connection failed.
        maybe_sent: !e.is_connect(),
    })
}

/// How a call's answer reaches the agent.
type Reply = tokio::sync::oneshot::Sender<Response<ProxyBody>>;

/// Frames of an answer read ahead of a slow agent.
const FRAMES_AHEAD: usize = 16;

/// How long an answer nobody listens to any more may go quiet.
const UNHEARD_QUIET: std::time::Duration = std::time::Duration::from_secs(60);

/// A call sent upstream and not yet recorded.
struct Open {
    /// Set once the answer's head arrived.
    meter: Option<WireMeter>,
    estimate: Estimate,
    record: CallRecord,
    request_bytes: u64,
    /// Whether it continues an earlier response (its body is not its
    /// whole input, so it is no basis for the next call's estimate).
    continues: bool,
    arrived: Instant,
    first_byte: Option<Instant>,
}

/// One open call, taken once: by its own end or by [`OpenCalls::close`].
type Slot = Arc<Mutex<Option<Open>>>;

impl Inner {
    /// Registers a call about to go upstream; `None` once the proxy is
    /// closed (nothing more is sent).
    fn open(&self, open: Open) -> Option<Slot> {
        let mut calls = self.open.lock().unwrap();
        let calls = calls.as_mut()?;
        let call = open.record.call;
        let slot = Arc::new(Mutex::new(Some(open)));
        calls.insert(call, slot.clone());
        Some(slot)
    }

    /// Takes an open call for its record, once (its own end and a close
    /// may race), and forgets it.
    fn take(&self, slot: &Slot) -> Option<Open> {
        let open = slot.lock().unwrap().take()?;
        if let Some(calls) = self.open.lock().unwrap().as_mut() {
            calls.remove(&open.record.call);
        }
        Some(open)
    }

    /// Whether the proxy is closed: nothing more is sent or recorded.
    fn closed(&self) -> bool {
        self.open.lock().unwrap().is_none()
    }

    /// Records an open call the upstream never answered: charged nothing
    /// when it cannot have been sent, else no less than its estimate.
    fn fail_call(&self, slot: &Slot, unsent: &Unsent) {
        let Some(open) = self.take(slot) else { return };
        let elapsed = open.arrived.elapsed().as_secs_f64() * 1000.0;
        let (usage, flag) = match unsent.maybe_sent {
            false => (TokenUsage::default(), unsent.message.clone()),
            true => (
                open.estimate.usage(),
                format!("{}; it may have reached the upstream, so it is charged its estimate", unsent.message),
            ),
        };
        self.gate.record(CallRecord {
            status: 502,
            usage,
            flag: Some(flag),
            ttfb_ms: elapsed,
            duration_ms: elapsed,
            ..open.record
        });
    }

    /// Records an open call that ended as `end` (`why` says so when it
    /// was ended for it), unless it was recorded already.
    fn close_call(&self, slot: &Slot, end: End, why: Option<&str>) {
        let Some(open) = self.take(slot) else { return };
        let now = Instant::now();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let (usage, flag, model, response_id) = match open.meter {
            Some(meter) => {
                let charge = meter.finish(end, open.estimate);
                (charge.usage, charge.flag, charge.model, charge.response_id)
            }
            // Sent, and no answer yet: the upstream may charge it all.
            None => (open.estimate.usage(), Some("the call ended before its answer came".to_owned()), None, None),
        };
        let flag = match (why, flag) {
            (Some(why), Some(_)) => Some(why.to_owned()),
            (_, flag) => flag,
        };
        let record = CallRecord {
            model: model.or(open.record.model.clone()),
            usage,
            flag,
            ttfb_ms: ms(open.first_byte.unwrap_or(now) - open.arrived),
            duration_ms: ms(now - open.arrived),
            ..open.record
        };
        let input_side = record.usage.input + record.usage.cache_read + record.usage.cache_write;
        if record.flag.is_none() && input_side > 0 && !open.continues {
            *self.last.lock().unwrap() = Some(LastCall { input_tokens: input_side, body_bytes: open.request_bytes });
        }
        if let Some(id) = response_id {
            // What it was charged, a cut answer's floor included: never less
            // than the conversation a call continuing it reads.
            self.contexts.lock().unwrap().keep(id, input_side.saturating_add(record.usage.output));
        }
        self.gate.record(record);
    }
}

/// The calls a proxy has under way, for its owner's last word.
#[derive(Clone)]
pub struct OpenCalls(Arc<Inner>);

impl OpenCalls {
    /// Closes the proxy: no call is sent after this, and each one still
    /// open is recorded now, as cut (charged no less than its estimate),
    /// with `why`. Returns how many were.
    pub fn close(&self, why: &str) -> usize {
        let open = self.0.open.lock().unwrap().take().unwrap_or_default();
        for slot in open.values() {
            self.0.close_call(slot, End::Cut, Some(why));
        }
        open.len()
    }
}

/// An answer on its way to the agent, frame by frame as the upstream
/// sends it.
struct Forwarded {
    frames: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, hyper::Error>>,
    hint: SizeHint,
}

impl Body for Forwarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.frames.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests;
