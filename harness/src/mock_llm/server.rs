//! The mock model server's HTTP side: binding, routing, handing out script
//! steps, recording requests, and writing the answers.
//!
//! Guarantees: only loopback addresses are bound; a step is handed out and
//! the request recorded in one critical section, so `seq` order, step order
//! and record order agree; the record file line is written and flushed before
//! the answer goes out; the server stops when its [`MockServer`] is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::script::{Repeat, Script, Step};
use super::{anthropic, chat, gemini, openai, RequestContext};

/// Largest request body accepted (Claude Code sends a few hundred KB).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Headers whose values are never recorded.
const REDACTED_HEADERS: &[&str] = &["authorization", "x-api-key", "proxy-authorization"];

type Body = BoxBody<Bytes, Infallible>;

/// One request the server received, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Arrival number, from 0.
    pub seq: u64,
    pub method: String,
    /// Path with query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Lower-case names; credentials redacted.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON; `null` when empty, a string when not JSON.
    pub body: Value,
    /// The script step that answered, when the request consumed one.
    pub step: Option<usize>,
}

impl RecordedRequest {
    /// True when any string in the body contains `needle` (message text,
    /// tool results, system prompt...). Searches decoded strings, so quotes
    /// and newlines need no JSON escaping.
    pub fn body_contains(&self, needle: &str) -> bool {
        fn walk(value: &Value, needle: &str) -> bool {
            match value {
                Value::String(s) => s.contains(needle),
                Value::Array(items) => items.iter().any(|v| walk(v, needle)),
                Value::Object(map) => map.values().any(|v| walk(v, needle)),
                _ => false,
            }
        }
        walk(&self.body, needle)
    }

    /// True for a request that asks a model for an answer (Anthropic
    /// `/messages`, OpenAI `/responses` or `/chat/completions`, Gemini
    /// `:generateContent` or `:streamGenerateContent`), as opposed to
    /// `count_tokens` and the rest.
    pub fn is_model_request(&self) -> bool {
        route(&self.method, self.path.split('?').next().unwrap_or("")).is_model()
    }
}

/// Reads a record file (one JSON object a line); a torn last line (a write
/// caught half-way) is ignored, any other bad line is an error.
pub fn read_record(path: &Path) -> io::Result<Vec<RecordedRequest>> {
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut requests = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(request) => requests.push(request),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: line {}: {e}", path.display(), i + 1),
                ))
            }
        }
    }
    Ok(requests)
}

/// How the server runs besides its script.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Append every request to this file as a JSON line (created if missing).
    pub record: Option<PathBuf>,
    /// Print one line per request on stderr.
    pub log_requests: bool,
}

/// A running mock server. Dropping it stops the server.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    script: Script,
    state: Mutex<State>,
    record: Option<tokio::sync::Mutex<tokio::fs::File>>,
    log_requests: bool,
}

#[derive(Default)]
struct State {
    /// Index of the step the next model request gets.
    next_step: usize,
    /// Requests the current step has answered so far.
    used: u64,
    requests: Vec<RecordedRequest>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MockServer {
    /// Binds `addr` (loopback only; port 0 picks a free port) and serves
    /// `script` on the current tokio runtime.
    pub async fn start(script: Script, addr: SocketAddr) -> io::Result<MockServer> {
        MockServer::start_with(script, addr, ServerOptions::default()).await
    }

    /// [`MockServer::start`] with a record file and request logging.
    pub async fn start_with(script: Script, addr: SocketAddr, options: ServerOptions) -> io::Result<MockServer> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mock-llm binds only loopback addresses (127.0.0.0/8 or ::1); {addr} is not one"),
            ));
        }
        let record = match &options.record {
            Some(path) => {
                let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("mock-llm: cannot open record file {}: {e}", path.display()))
                })?;
                Some(tokio::sync::Mutex::new(file))
            }
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("mock-llm: cannot bind {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script,
            state: Mutex::new(State::default()),
            record,
            log_requests: options.log_requests,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(MockServer { addr, shared, task: Some(task) })
    }

    /// The bound address (with the real port when started with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: Claude Code's `ANTHROPIC_BASE_URL`; Codex's
    /// provider `base_url` is this plus `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    /// Index of the step the next model request will get (equal to the
    /// number of steps once the script is exhausted).
    pub fn next_step(&self) -> usize {
        self.shared.state().next_step
    }

    /// Stops the server and waits until its socket is closed.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs the server until SIGINT or SIGTERM, on a runtime of its own. Prints
/// `mock-llm listening on http://127.0.0.1:PORT` on stdout first (flushed),
/// then one line per request on stderr.
pub fn serve_blocking(script: Script, addr: SocketAddr, record: Option<PathBuf>) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let server = MockServer::start_with(script, addr, ServerOptions { record, log_requests: true }).await?;
        {
            let mut stdout = io::stdout().lock();
            writeln!(stdout, "mock-llm listening on {}", server.url())?;
            stdout.flush()?;
        }
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = terminate.recv() => {}
        }
        server.shutdown().await;
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here so that aborting this task closes every connection too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    eprintln!("mock-llm: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, request).await) }
    });
    // Errors here are clients going away mid-answer: nothing to do.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Anthropic,
    CountTokens,
    OpenAi,
    Chat,
    Gemini,
    MockRequests,
    MockHealth,
    Unknown,
}

fn route(method: &str, path: &str) -> Route {
    let path = path.trim_end_matches('/');
    match method {
        "POST" if path.ends_with("/messages/count_tokens") => Route::CountTokens,
        "POST" if path.ends_with("/messages") => Route::Anthropic,
        "POST" if path.ends_with("/responses") => Route::OpenAi,
        "POST" if path.ends_with("/chat/completions") => Route::Chat,
        "POST" if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") => Route::Gemini,
        "GET" if path == "/_mock/requests" => Route::MockRequests,
        "GET" if path == "/_mock/health" => Route::MockHealth,
        _ => Route::Unknown,
    }
}

impl Route {
    /// The routes whose requests consume a script step.
    fn is_model(self) -> bool {
        matches!(self, Route::Anthropic | Route::OpenAi | Route::Chat | Route::Gemini)
    }
}

/// What a model request gets from the script.
enum Assigned {
    Step(usize),
    Exhausted,
    None,
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let path_and_query = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| path.clone());
    let headers = recorded_headers(request.headers());
    let route = route(method.as_str(), &path);

    match route {
        Route::MockRequests => return json_response(StatusCode::OK, json!(shared.state().requests)),
        Route::MockHealth => {
            let state = shared.state();
            return json_response(
                StatusCode::OK,
                json!({
                    "ok": true,
                    "steps": shared.script.steps().len(),
                    "next_step": state.next_step,
                    "requests": state.requests.len(),
                }),
            );
        }
        _ => {}
    }

    let bytes = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": format!("mock-llm: cannot read the request body: {e}")}}),
            )
        }
    };
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };

    // Hand out the step and record the request in one critical section.
    let (seq, assigned, recorded) = {
        let mut state = shared.state();
        let assigned = if route.is_model() { take_step(&mut state, &shared.script) } else { Assigned::None };
        let recorded = RecordedRequest {
            seq: state.requests.len() as u64,
            method: method.to_string(),
            path: path_and_query.clone(),
            headers,
            body,
            step: match assigned {
                Assigned::Step(i) => Some(i),
                _ => None,
            },
        };
        state.requests.push(recorded.clone());
        (recorded.seq, assigned, recorded)
    };
    if let Some(file) = &shared.record {
        if let Err(e) = append_record(file, &recorded).await {
            eprintln!("mock-llm: cannot append to the record file: {e}");
        }
    }
    let steps = shared.script.steps().len();
    if shared.log_requests {
        let answer = match assigned {
            Assigned::Step(i) => format!("step {i} of {steps}"),
            Assigned::Exhausted => "script exhausted".to_string(),
            Assigned::None => "no step".to_string(),
        };
        eprintln!("mock-llm: #{seq} {method} {path_and_query} -> {answer}");
    }

    let body = &recorded.body;
    match (route, assigned) {
        (Route::CountTokens, _) => json_response(StatusCode::OK, anthropic::count_tokens(bytes.len())),
        (route, Assigned::Step(index)) if route.is_model() => {
            let step = &shared.script.steps()[index];
            let ctx = RequestContext {
                seq,
                step: Some(index),
                model: request_model(route, &path, body),
                tools: request_tools(body),
            };
            if !step.delay.is_zero() {
                tokio::time::sleep(step.delay).await;
            }
            answer(route, step, &ctx, streaming(route, &path_and_query, body))
        }
        (route, _) if route.is_model() => {
            let message = format!(
                "mock-llm: the script is exhausted: all {steps} steps were used; request #{seq} ({method} {path_and_query}) has no step to answer it"
            );
            eprintln!("{message}");
            let reply = super::ErrorReply { status: 400, message, kind: None, retry_after: None };
            error_response(route, &reply)
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {"type": "not_found_error", "message": format!(
                "mock-llm: no such endpoint: {method} {path} (serves POST /v1/messages, POST /v1/messages/count_tokens, POST /v1/responses, POST /v1/chat/completions, POST /v1beta/models/MODEL:generateContent, POST /v1beta/models/MODEL:streamGenerateContent, GET /_mock/requests, GET /_mock/health)"
            )}}),
        ),
    }
}

fn take_step(state: &mut State, script: &Script) -> Assigned {
    let Some(step) = script.steps().get(state.next_step) else {
        return Assigned::Exhausted;
    };
    let index = state.next_step;
    state.used += 1;
    if let Repeat::Times(n) = step.repeat {
        if state.used >= n {
            state.next_step += 1;
            state.used = 0;
        }
    }
    Assigned::Step(index)
}

/// The model a request names: in the body, or in a Gemini path
/// (`/v1beta/models/MODEL:streamGenerateContent`).
fn request_model(route: Route, path: &str, body: &Value) -> String {
    if route == Route::Gemini {
        let name = path.rsplit('/').next().unwrap_or_default();
        if let Some((model, _)) = name.split_once(':').filter(|(model, _)| !model.is_empty()) {
            return model.to_string();
        }
    }
    body["model"].as_str().unwrap_or("mock-model").to_string()
}

/// Whether the answer is streamed: `"stream": true` in the body, or for
/// Gemini the `:streamGenerateContent` method.
fn streaming(route: Route, path_and_query: &str, body: &Value) -> Streaming {
    match route {
        Route::Gemini => {
            let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
            if !path.trim_end_matches('/').ends_with(":streamGenerateContent") {
                Streaming::No
            } else if query.split('&').any(|pair| pair == "alt=sse") {
                Streaming::Sse { include_usage: true }
            } else {
                Streaming::JsonArray
            }
        }
        _ if body["stream"] == json!(true) => {
            Streaming::Sse { include_usage: body["stream_options"]["include_usage"] == json!(true) }
        }
        _ => Streaming::No,
    }
}

/// How an answer is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Streaming {
    /// One JSON object.
    No,
    /// Server-sent events; `include_usage` is Chat Completions' request
    /// for a usage chunk.
    Sse { include_usage: bool },
    /// Gemini's `streamGenerateContent` without `alt=sse`: the chunks as one
    /// JSON array.
    JsonArray,
}

/// A rendered answer: server-sent events (with or without event names),
/// or one JSON value.
enum Rendered {
    Events(Vec<(String, Value)>),
    Data(Vec<String>),
    Object(Value),
}

fn answer(route: Route, step: &Step, ctx: &RequestContext, streaming: Streaming) -> Response<Body> {
    if let Some(reply) = &step.error {
        return error_response(route, reply);
    }
    let rendered = match (route, streaming) {
        (Route::Anthropic, Streaming::Sse { .. }) => Ok(Rendered::Events(anthropic::stream(step, ctx))),
        (Route::Anthropic, _) => Ok(Rendered::Object(anthropic::message(step, ctx))),
        (Route::Chat, Streaming::Sse { include_usage }) => chat::stream(step, ctx, include_usage).map(Rendered::Data),
        (Route::Chat, _) => chat::completion(step, ctx).map(Rendered::Object),
        (Route::Gemini, Streaming::Sse { .. }) => {
            gemini::stream(step, ctx).map(|chunks| Rendered::Data(chunks.iter().map(Value::to_string).collect()))
        }
        (Route::Gemini, Streaming::JsonArray) => {
            gemini::stream(step, ctx).map(|chunks| Rendered::Object(json!(chunks)))
        }
        (Route::Gemini, Streaming::No) => gemini::response(step, ctx).map(Rendered::Object),
        (_, Streaming::Sse { .. }) => openai::stream(step, ctx).map(Rendered::Events),
        (_, _) => openai::response(step, ctx).map(Rendered::Object),
    };
    let request_id = format!("req_mock_{:04}", ctx.seq);
    let mut response = match rendered {
        Ok(Rendered::Events(events)) => sse_response(
            events.into_iter().map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {data}\n\n"))).collect(),
        ),
        // Gemini's SSE ends each event with CRLF CRLF, OpenAI's with LF LF;
        // clients read either.
        Ok(Rendered::Data(data)) => {
            sse_response(data.into_iter().map(|d| Bytes::from(format!("data: {d}\n\n"))).collect())
        }
        Ok(Rendered::Object(object)) => json_response(StatusCode::OK, object),
        Err(message) => {
            eprintln!("{message}");
            let reply = super::ErrorReply { status: 400, message, kind: None, retry_after: None };
            return error_response(route, &reply);
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        let name = if route == Route::Anthropic { "request-id" } else { "x-request-id" };
        response.headers_mut().insert(name, value);
    }
    response
}

fn error_response(route: Route, reply: &super::ErrorReply) -> Response<Body> {
    let body = match route {
        Route::OpenAi | Route::Chat => openai::error(reply),
        Route::Gemini => gemini::error(reply),
        _ => anthropic::error(reply),
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, body);
    if let Some(seconds) = reply.retry_after {
        response.headers_mut().insert("retry-after", HeaderValue::from(seconds));
    }
    response
}

fn json_response(status: StatusCode, value: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn sse_response(frames: VecDeque<Bytes>) -> Response<Body> {
    let mut response = Response::new(SseBody { frames }.boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// A body sent as one chunk per server-sent event.
struct SseBody {
    frames: VecDeque<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().frames.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}

fn recorded_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str().to_ascii_lowercase();
            let value = if REDACTED_HEADERS.contains(&name.as_str()) {
                "<redacted>".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name, value)
        })
        .collect()
}

/// The request's tools as `(type, name)`, nested namespaces flattened:
/// Anthropic and Responses tools (`name`), Chat Completions functions
/// (`function.name`), Gemini's `functionDeclarations` (type `function`).
fn request_tools(body: &Value) -> Vec<(String, String)> {
    fn collect(tools: &Value, out: &mut Vec<(String, String)>) {
        for tool in tools.as_array().into_iter().flatten() {
            let kind = tool["type"].as_str().unwrap_or_default().to_string();
            if let Some(nested) = tool.get("tools") {
                collect(nested, out);
            }
            for declaration in tool["functionDeclarations"].as_array().into_iter().flatten() {
                out.push(("function".to_string(), declaration["name"].as_str().unwrap_or_default().to_string()));
            }
            let name = tool["name"].as_str().or_else(|| tool["function"]["name"].as_str());
            out.push((kind, name.unwrap_or_default().to_string()));
        }
    }
    let mut out = Vec::new();
    collect(&body["tools"], &mut out);
    out
}

async fn append_record(file: &tokio::sync::Mutex<tokio::fs::File>, request: &RecordedRequest) -> io::Result<()> {
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut file = file.lock().await;
    file.write_all(&line).await?;
    file.flush().await
}
