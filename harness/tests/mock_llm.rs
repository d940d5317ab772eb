//! Tests of the scripted model server (`corral_harness::mock_llm`) over real
//! HTTP on loopback: the four APIs (Anthropic Messages, OpenAI Responses,
//! OpenAI Chat Completions, Gemini) streaming and not, errors, delays, repeats,
//! the exhausted script, request recording, and shutdown.
//!
//! The client is a few lines of raw HTTP/1.1 over a `TcpStream`, so what is
//! checked is the bytes on the wire, not a client library's reading of them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corral_harness::mock_llm::{read_record, MockServer, Script, ServerOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

/// An HTTP answer as read off the wire.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The server-sent events as `(event, data)`; checks each event's name
    /// matches its data's `type`.
    fn events(&self) -> Vec<(String, Value)> {
        assert_eq!(self.header("content-type"), Some("text/event-stream"));
        self.body
            .split("\n\n")
            .filter(|block| !block.trim().is_empty())
            .map(|block| {
                let mut name = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(rest) = line.strip_prefix("event: ") {
                        name = Some(rest.to_string());
                    } else if let Some(rest) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str::<Value>(rest).unwrap());
                    }
                }
                let (name, data) = (name.unwrap(), data.unwrap());
                assert_eq!(data["type"], json!(name), "event name and data type differ");
                (name, data)
            })
            .collect()
    }
}

impl Reply {
    /// The `data:` payloads of server-sent events without event names
    /// (Chat Completions, Gemini), as JSON; `[DONE]` kept as a string.
    fn data(&self) -> Vec<Value> {
        assert_eq!(self.header("content-type"), Some("text/event-stream"));
        self.body
            .split("\n\n")
            .filter(|block| !block.trim().is_empty())
            .map(|block| {
                assert!(!block.contains("event: "), "no event names in this API: {block}");
                let data = block.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data line: {block}"));
                serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string()))
            })
            .collect()
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\nx-api-key: secret-key\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the server answered within 30 s")
        .unwrap();
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a complete header");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    Reply { status, headers, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

async fn start(script: &str) -> MockServer {
    MockServer::start(Script::from_json(script).unwrap(), LOOPBACK.into()).await.unwrap()
}

fn anthropic_request(stream: bool) -> Value {
    json!({
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello there"}],
    })
}

fn openai_request(stream: bool, tools: Value) -> Value {
    json!({
        "model": "gpt-test",
        "stream": stream,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
        "tools": tools,
    })
}

fn chat_request(stream: bool, include_usage: bool, tools: Value) -> Value {
    let mut body = json!({
        "model": "mock-coder",
        "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        "tools": tools,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn gemini_request(tools: Value) -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "tools": [{"functionDeclarations": tools}],
        "generationConfig": {"temperature": 1},
    })
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

const USAGE: &str = r#"{"input": 120, "output": 30, "cache_read": 1000, "cache_write": 50, "reasoning": 7}"#;

#[tokio::test]
async fn anthropic_streaming_carries_text_tool_use_and_exact_usage() {
    let server = start(&format!(
        r#"[{{"thinking": "let me think", "text": "Writing the file now.", "tool": {{"name": "Write", "input": {{"file_path": "/tmp/x.txt", "content": "a \"quoted\" line\n"}}}}, "usage": {USAGE}}}]"#
    ))
    .await;
    let reply = request(server.addr(), "POST", "/v1/messages?beta=true", Some(&anthropic_request(true))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    let events = reply.events();
    let names = names(&events);
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    assert_eq!(names.iter().filter(|n| **n == "content_block_start").count(), 3);

    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-test");
    assert_eq!(start["usage"]["input_tokens"], 120);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 1000);
    assert_eq!(start["usage"]["cache_creation_input_tokens"], 50);
    assert_eq!(start["usage"]["output_tokens"], 1, "a start-of-message snapshot");

    let delta = &events[names.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 120, "cache_creation_input_tokens": 50, "cache_read_input_tokens": 1000, "output_tokens": 30})
    );

    // Reassemble the blocks from their deltas.
    let mut thinking = String::new();
    let mut text = String::new();
    let mut tool_json = String::new();
    let mut tool_start = Value::Null;
    for (name, data) in &events {
        match (name.as_str(), data["delta"]["type"].as_str()) {
            ("content_block_delta", Some("thinking_delta")) => {
                thinking.push_str(data["delta"]["thinking"].as_str().unwrap())
            }
            ("content_block_delta", Some("text_delta")) => text.push_str(data["delta"]["text"].as_str().unwrap()),
            ("content_block_delta", Some("input_json_delta")) => {
                tool_json.push_str(data["delta"]["partial_json"].as_str().unwrap())
            }
            ("content_block_start", _) if data["content_block"]["type"] == "tool_use" => {
                assert_eq!(data["index"], 2);
                tool_start = data["content_block"].clone();
            }
            _ => {}
        }
    }
    assert_eq!(thinking, "let me think");
    assert_eq!(text, "Writing the file now.");
    assert_eq!(tool_start["name"], "Write");
    assert!(tool_start["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(
        serde_json::from_str::<Value>(&tool_json).unwrap(),
        json!({"file_path": "/tmp/x.txt", "content": "a \"quoted\" line\n"})
    );
}

#[tokio::test]
async fn anthropic_non_streaming_is_one_message_object() {
    let server = start(&format!(r#"[{{"text": "Just text.", "usage": {USAGE}, "model": "claude-scripted"}}]"#)).await;
    let reply = request(server.addr(), "POST", "/v1/messages", Some(&anthropic_request(false))).await;
    assert_eq!(reply.status, 200);
    let message = reply.json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-scripted");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["content"], json!([{"type": "text", "text": "Just text."}]));
    assert_eq!(message["usage"]["input_tokens"], 120);
    assert_eq!(message["usage"]["output_tokens"], 30);
    assert_eq!(message["usage"]["cache_read_input_tokens"], 1000);
    assert_eq!(message["usage"]["cache_creation_input_tokens"], 50);
}

#[tokio::test]
async fn count_tokens_answers_without_consuming_a_step() {
    let server = start(r#"[{"text": "first step"}]"#).await;
    let reply =
        request(server.addr(), "POST", "/v1/messages/count_tokens?beta=true", Some(&anthropic_request(false))).await;
    assert_eq!(reply.status, 200);
    assert!(reply.json()["input_tokens"].as_u64().unwrap() > 0);
    let reply = request(server.addr(), "POST", "/v1/messages", Some(&anthropic_request(false))).await;
    assert_eq!(reply.json()["content"][0]["text"], "first step");
    let steps: Vec<Option<usize>> = server.requests().iter().map(|r| r.step).collect();
    assert_eq!(steps, [None, Some(0)]);
}

#[tokio::test]
async fn openai_streaming_carries_items_and_exact_usage() {
    let server = start(&format!(
        r#"[{{"thinking": "plan", "text": "Calling a tool.", "tool": {{"name": "lookup", "input": {{"q": "x"}}, "id": "call_fixed"}}, "usage": {USAGE}}}]"#
    ))
    .await;
    let tools = json!([{"type": "function", "name": "lookup", "parameters": {}}]);
    let reply = request(server.addr(), "POST", "/v1/responses", Some(&openai_request(true, tools))).await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    let names = names(&events);
    assert_eq!(&names[..2], ["response.created", "response.in_progress"]);
    assert_eq!(names.last(), Some(&"response.completed"));
    let sequence: Vec<u64> = events.iter().map(|(_, d)| d["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());

    let done: Vec<&Value> =
        events.iter().filter(|(n, _)| n == "response.output_item.done").map(|(_, d)| &d["item"]).collect();
    assert_eq!(done.len(), 3);
    assert_eq!(done[0]["type"], "reasoning");
    assert_eq!(done[0]["summary"][0]["text"], "plan");
    assert_eq!(done[1]["type"], "message");
    assert_eq!(done[1]["content"][0]["text"], "Calling a tool.");
    assert_eq!(done[2]["type"], "function_call");
    assert_eq!(done[2]["name"], "lookup");
    assert_eq!(done[2]["call_id"], "call_fixed");
    assert_eq!(serde_json::from_str::<Value>(done[2]["arguments"].as_str().unwrap()).unwrap(), json!({"q": "x"}));
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Calling a tool.");

    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["model"], "gpt-test");
    assert_eq!(
        completed["usage"],
        json!({
            "input_tokens": 120,
            "input_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 50},
            "output_tokens": 30,
            "output_tokens_details": {"reasoning_tokens": 7},
            "total_tokens": 150,
        })
    );
}

#[tokio::test]
async fn openai_non_streaming_is_one_response_object() {
    let server = start(r#"[{"text": "plain", "usage": {"input": 3, "output": 4}}]"#).await;
    let reply = request(server.addr(), "POST", "/v1/responses", Some(&openai_request(false, json!([])))).await;
    assert_eq!(reply.status, 200);
    let response = reply.json();
    assert_eq!(response["object"], "response");
    assert_eq!(response["output"][0]["content"][0]["text"], "plain");
    assert_eq!(response["usage"]["input_tokens"], 3);
    assert_eq!(response["usage"]["output_tokens"], 4);
    assert_eq!(response["usage"]["input_tokens_details"], json!({"cached_tokens": 0}));
}

#[tokio::test]
async fn a_shell_step_uses_the_shell_tool_the_request_offers() {
    let server = start(r#"[{"shell": {"command": "echo hi > f.txt", "workdir": "/w"}, "repeat": "forever"}]"#).await;
    let call = |tools: Value| {
        let addr = server.addr();
        async move { request(addr, "POST", "/v1/responses", Some(&openai_request(false, tools))).await }
    };
    let function = |name: &str| json!([{"type": "function", "name": "view_image"}, {"type": "function", "name": name}]);

    let item = call(function("exec_command")).await.json()["output"][0].clone();
    assert_eq!(item["name"], "exec_command");
    let arguments: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"cmd": "echo hi > f.txt", "workdir": "/w"}));

    let item = call(function("shell_command")).await.json()["output"][0].clone();
    assert_eq!(item["name"], "shell_command");
    let arguments: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"command": "echo hi > f.txt", "workdir": "/w"}));

    let item = call(function("shell")).await.json()["output"][0].clone();
    let arguments: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["command"], json!(["bash", "-lc", "echo hi > f.txt"]));

    let item = call(json!([{"type": "local_shell"}])).await.json()["output"][0].clone();
    assert_eq!(item["type"], "local_shell_call");
    assert_eq!(item["action"]["command"], json!(["bash", "-lc", "echo hi > f.txt"]));

    let refused = call(function("apply_patch")).await;
    assert_eq!(refused.status, 400);
    let message = refused.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("no shell tool"), "{message}");
    assert!(message.contains("function apply_patch"), "{message}");

    let reply = request(server.addr(), "POST", "/v1/messages", Some(&anthropic_request(false))).await.json();
    assert_eq!(reply["content"][0]["name"], "Bash");
    assert_eq!(reply["content"][0]["input"], json!({"command": "cd '/w' && echo hi > f.txt"}));
    assert_eq!(reply["stop_reason"], "tool_use");
}

#[tokio::test]
async fn a_custom_tool_with_string_input_becomes_a_custom_tool_call() {
    let server = start(r#"[{"tool": {"name": "apply_patch", "input": "*** Begin Patch"}}]"#).await;
    let tools = json!([{"type": "custom", "name": "apply_patch"}]);
    let reply = request(server.addr(), "POST", "/v1/responses", Some(&openai_request(false, tools))).await.json();
    assert_eq!(reply["output"][0]["type"], "custom_tool_call");
    assert_eq!(reply["output"][0]["input"], "*** Begin Patch");
}

#[tokio::test]
async fn error_steps_answer_with_the_status_and_the_api_error_shape() {
    let server = start(
        r#"[
            {"error": {"status": 429, "message": "slow down", "retry_after": 2}},
            {"error": {"status": 500, "message": "boom"}},
            {"error": {"status": 429, "message": "slow down too"}},
            {"error": {"status": 503, "message": "busy", "type": "overloaded_error"}}
        ]"#,
    )
    .await;
    let addr = server.addr();
    let reply = request(addr, "POST", "/v1/messages", Some(&anthropic_request(true))).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(reply.json(), json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}));
    let reply = request(addr, "POST", "/v1/messages", Some(&anthropic_request(true))).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["type"], "api_error");
    assert_eq!(reply.json()["error"]["message"], "boom");

    let reply = request(addr, "POST", "/v1/responses", Some(&openai_request(true, json!([])))).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), None);
    assert_eq!(reply.json()["error"]["type"], "rate_limit_exceeded");
    assert_eq!(reply.json()["error"]["message"], "slow down too");
    let reply = request(addr, "POST", "/v1/responses", Some(&openai_request(true, json!([])))).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn a_delay_holds_the_answer_back_but_not_the_record() {
    let server = start(r#"[{"text": "late", "delay_ms": 1500}, {"text": "prompt"}]"#).await;
    let addr = server.addr();
    let started = Instant::now();
    let answer =
        tokio::spawn(async move { request(addr, "POST", "/v1/messages", Some(&anthropic_request(false))).await });
    // The request is recorded when it arrives, before the delayed answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.requests().is_empty() {
        assert!(Instant::now() < deadline, "no request recorded in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if started.elapsed() < Duration::from_millis(1400) {
        assert!(!answer.is_finished(), "answered before the delay ran out");
    }
    let reply = answer.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());
    assert_eq!(reply.json()["content"][0]["text"], "late");
}

#[tokio::test]
async fn repeat_answers_several_requests_and_forever_never_runs_out() {
    let server = start(r#"[{"text": "twice", "repeat": 2}, {"text": "always", "repeat": "forever"}]"#).await;
    let mut texts = Vec::new();
    for _ in 0..6 {
        let reply = request(server.addr(), "POST", "/v1/messages", Some(&anthropic_request(false))).await;
        assert_eq!(reply.status, 200);
        texts.push(reply.json()["content"][0]["text"].as_str().unwrap().to_string());
    }
    assert_eq!(texts, ["twice", "twice", "always", "always", "always", "always"]);
    let steps: Vec<Option<usize>> = server.requests().iter().map(|r| r.step).collect();
    assert_eq!(steps, [Some(0), Some(0), Some(1), Some(1), Some(1), Some(1)]);
    assert_eq!(server.next_step(), 1);
}

#[tokio::test]
async fn an_exhausted_script_answers_400_saying_so() {
    let server = start(r#"[{"text": "only"}]"#).await;
    let addr = server.addr();
    assert_eq!(request(addr, "POST", "/v1/messages", Some(&anthropic_request(false))).await.status, 200);
    let reply = request(addr, "POST", "/v1/messages", Some(&anthropic_request(true))).await;
    assert_eq!(reply.status, 400);
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("script is exhausted"), "{message}");
    assert!(message.contains("all 1 steps"), "{message}");
    let reply = request(addr, "POST", "/v1/responses", Some(&openai_request(true, json!([])))).await;
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("script is exhausted"));
    let steps: Vec<Option<usize>> = server.requests().iter().map(|r| r.step).collect();
    assert_eq!(steps, [Some(0), None, None]);
    assert_eq!(server.next_step(), 1);
}

#[tokio::test]
async fn every_request_is_recorded_in_memory_over_http_and_in_the_record_file() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("requests.jsonl");
    let server = MockServer::start_with(
        Script::from_json(r#"[{"text": "a"}, {"text": "b"}]"#).unwrap(),
        LOOPBACK.into(),
        ServerOptions { record: Some(record.clone()), log_requests: false },
    )
    .await
    .unwrap();
    let addr = server.addr();
    let mut second = anthropic_request(true);
    second["messages"] = json!([{"role": "user", "content": [{"type": "text", "text": "say \"quoted\"\nplease"}]}]);
    request(addr, "POST", "/v1/messages?beta=true", Some(&anthropic_request(false))).await;
    request(addr, "POST", "/v1/messages", Some(&second)).await;
    let missing = request(addr, "GET", "/v1/models", None).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no such endpoint"));

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1/messages?beta=true");
    assert_eq!(requests[0].body, anthropic_request(false));
    assert_eq!(requests[0].headers["x-api-key"], "<redacted>");
    assert_eq!(requests[0].headers["content-type"], "application/json");
    assert!(requests[1].body_contains("say \"quoted\"\nplease"));
    assert!(!requests[0].body_contains("quoted"));
    assert!(requests[1].is_model_request());
    assert_eq!((requests[2].method.as_str(), requests[2].path.as_str()), ("GET", "/v1/models"));
    assert_eq!(requests[2].body, Value::Null);
    assert!(!requests[2].is_model_request());
    let seqs: Vec<u64> = requests.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);

    // Reading the record back does not add to it.
    let over_http = request(addr, "GET", "/_mock/requests", None).await;
    assert_eq!(over_http.json(), serde_json::to_value(&requests).unwrap());
    assert_eq!(read_record(&record).unwrap(), requests);
    let health = request(addr, "GET", "/_mock/health", None).await.json();
    assert_eq!(health, json!({"ok": true, "steps": 2, "next_step": 2, "requests": 3}));
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn a_torn_last_record_line_is_ignored_but_a_bad_middle_line_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.jsonl");
    let line = r#"{"seq":0,"method":"POST","path":"/v1/messages","headers":{},"body":null,"step":0}"#;
    std::fs::write(&path, format!("{line}\n{{\"seq\":1,\"meth")).unwrap();
    assert_eq!(read_record(&path).unwrap().len(), 1);
    std::fs::write(&path, format!("{{\"seq\":1,\"meth\n{line}\n")).unwrap();
    let error = read_record(&path).unwrap_err().to_string();
    assert!(error.contains("line 1"), "{error}");
}

#[tokio::test]
async fn only_loopback_addresses_are_bound() {
    let script = Script::from_json(r#"[{"text": "a"}]"#).unwrap();
    let error = MockServer::start(script.clone(), ([0, 0, 0, 0], 0).into()).await.err().expect("0.0.0.0 is refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("loopback"), "{error}");
    let v6 = MockServer::start(script, "[::1]:0".parse().unwrap()).await;
    // Machines without IPv6 cannot bind ::1; where they can, the URL is bracketed.
    if let Ok(server) = v6 {
        assert!(server.url().starts_with("http://[::1]:"), "{}", server.url());
    }
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let server = start(r#"[{"text": "a"}]"#).await;
    let addr = server.addr();
    assert_eq!(server.url(), format!("http://127.0.0.1:{}", addr.port()));
    assert!(TcpStream::connect(addr).await.is_ok());
    server.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err(), "refused after shutdown");

    let server = start(r#"[{"text": "a"}]"#).await;
    let addr = server.addr();
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting 10 s after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn chat_streaming_carries_text_tool_call_deltas_and_the_usage_chunk_when_asked() {
    let server = start(&format!(
        r#"[{{"thinking": "plan", "text": "Writing the file now.", "tool": {{"name": "write", "input": {{"filePath": "a.txt", "content": "x"}}}}, "usage": {USAGE}, "repeat": 2}}]"#
    ))
    .await;
    let tools = json!([{"type": "function", "function": {"name": "write", "parameters": {}}}]);
    let reply =
        request(server.addr(), "POST", "/v1/chat/completions", Some(&chat_request(true, true, tools.clone()))).await;
    assert_eq!(reply.status, 200);
    let chunks = reply.data();
    assert_eq!(chunks.last(), Some(&json!("[DONE]")));
    let chunks = &chunks[..chunks.len() - 1];
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "mock-coder"));
    let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| &c["delta"]).collect();
    assert_eq!(deltas[0]["role"], "assistant");
    let joined = |key: &str| deltas.iter().filter_map(|d| d[key].as_str()).collect::<String>();
    assert_eq!(joined("reasoning_content"), "plan");
    assert_eq!(joined("content"), "Writing the file now.");
    let calls: Vec<&Value> = deltas.iter().filter_map(|d| d["tool_calls"].get(0)).collect();
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "write");
    assert!(calls[0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    let arguments: String = calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({"filePath": "a.txt", "content": "x"}));
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
    // The usage chunk: last before [DONE], no choices, the script's figures.
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 1000},
            "completion_tokens_details": {"reasoning_tokens": 7},
        })
    );
    assert_eq!(chunks.iter().filter(|c| c.get("usage").is_some()).count(), 1);

    // Without stream_options.include_usage there is no usage chunk.
    let reply = request(server.addr(), "POST", "/v1/chat/completions", Some(&chat_request(true, false, tools))).await;
    let chunks = reply.data();
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{chunks:?}");
    assert_eq!(chunks.last(), Some(&json!("[DONE]")));
}

#[tokio::test]
async fn chat_non_streaming_is_one_completion_and_shell_becomes_bash() {
    let server =
        start(r#"[{"text": "plain", "usage": {"input": 3, "output": 4}}, {"shell": "ls"}, {"shell": "ls"}]"#).await;
    let addr = server.addr();
    let reply = request(addr, "POST", "/v1/chat/completions", Some(&chat_request(false, false, json!([])))).await;
    assert_eq!(reply.status, 200);
    let completion = reply.json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["choices"][0]["message"], json!({"role": "assistant", "content": "plain"}));
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["prompt_tokens"], 3);
    assert_eq!(completion["usage"]["completion_tokens"], 4);

    let bash =
        json!([{"type": "function", "function": {"name": "read"}}, {"type": "function", "function": {"name": "bash"}}]);
    let reply = request(addr, "POST", "/v1/chat/completions", Some(&chat_request(false, false, bash))).await;
    let call = &reply.json()["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "bash");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["command"], "ls");
    assert!(arguments["description"].as_str().is_some_and(|d| !d.is_empty()), "opencode's bash wants one");

    // No shell function offered: a 400 that says so.
    let none = json!([{"type": "function", "function": {"name": "read"}}]);
    let reply = request(addr, "POST", "/v1/chat/completions", Some(&chat_request(false, false, none))).await;
    assert_eq!(reply.status, 400);
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("no shell function") && message.contains("read"), "{message}");
}

#[tokio::test]
async fn gemini_sse_streams_parts_and_ends_with_finish_reason_and_exact_usage() {
    let server = start(&format!(
        r#"[{{"thinking": "plan", "text": "I'll create the file.", "tool": {{"name": "write_file", "input": {{"file_path": "hello.txt", "content": "hi\n"}}}}, "usage": {USAGE}}}]"#
    ))
    .await;
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let tools = json!([{"name": "write_file"}, {"name": "run_shell_command"}]);
    let reply = request(server.addr(), "POST", path, Some(&gemini_request(tools))).await;
    assert_eq!(reply.status, 200);
    let chunks = reply.data();
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert!(chunks.iter().all(|c| c["modelVersion"] == "gemini-2.5-flash"), "the model comes from the path");
    let parts: Vec<&Value> = chunks.iter().map(|c| &c["candidates"][0]["content"]["parts"][0]).collect();
    let text = |thought: bool| {
        parts
            .iter()
            .filter(|p| p["thought"].as_bool().unwrap_or(false) == thought)
            .filter_map(|p| p["text"].as_str())
            .collect::<String>()
    };
    assert_eq!(text(true), "plan");
    assert_eq!(text(false), "I'll create the file.");
    let call = parts.iter().find_map(|p| p.get("functionCall")).expect("a functionCall part");
    assert_eq!(call, &json!({"name": "write_file", "args": {"file_path": "hello.txt", "content": "hi\n"}}));
    // Only the last chunk finishes and carries usage.
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("usageMetadata").is_none() && c["candidates"][0].get("finishReason").is_none()));
    assert_eq!(
        last["usageMetadata"],
        json!({
            "promptTokenCount": 120,
            "cachedContentTokenCount": 1000,
            "candidatesTokenCount": 30,
            "thoughtsTokenCount": 7,
            "totalTokenCount": 157,
        })
    );
    assert!(server.requests()[0].is_model_request());
}

#[tokio::test]
async fn gemini_generate_content_and_stream_without_sse_and_errors() {
    let server = start(
        r#"[{"text": "whole", "usage": {"input": 3, "output": 4}},
            {"text": "as an array"},
            {"shell": "echo hi", "repeat": 2},
            {"error": {"status": 429, "message": "Resource has been exhausted", "retry_after": 2}}]"#,
    )
    .await;
    let addr = server.addr();
    let reply =
        request(addr, "POST", "/v1beta/models/gemini-x:generateContent", Some(&gemini_request(json!([])))).await;
    assert_eq!(reply.status, 200);
    let response = reply.json();
    assert_eq!(response["candidates"][0]["content"]["parts"], json!([{"text": "whole"}]));
    assert_eq!(response["candidates"][0]["finishReason"], "STOP");
    assert_eq!(response["usageMetadata"]["promptTokenCount"], 3);
    assert_eq!(response["usageMetadata"]["totalTokenCount"], 7);
    assert_eq!(response["modelVersion"], "gemini-x");

    let reply =
        request(addr, "POST", "/v1beta/models/gemini-x:streamGenerateContent", Some(&gemini_request(json!([])))).await;
    let array = reply.json();
    let text: String = array
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "as an array");

    let shell = json!([{"name": "run_shell_command"}]);
    let path = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse";
    let chunks = request(addr, "POST", path, Some(&gemini_request(shell))).await.data();
    let call = chunks.iter().find_map(|c| c["candidates"][0]["content"]["parts"][0].get("functionCall").cloned());
    assert_eq!(call, Some(json!({"name": "run_shell_command", "args": {"command": "echo hi"}})));
    let reply = request(addr, "POST", path, Some(&gemini_request(json!([{"name": "read_file"}])))).await;
    assert_eq!(reply.status, 400, "no shell tool offered");
    assert_eq!(reply.json()["error"]["status"], "INVALID_ARGUMENT");

    let reply = request(addr, "POST", path, Some(&gemini_request(json!([])))).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(
        reply.json(),
        json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}})
    );
    let steps: Vec<Option<usize>> = server.requests().iter().map(|r| r.step).collect();
    assert_eq!(steps, [Some(0), Some(1), Some(2), Some(2), Some(3)]);
}
