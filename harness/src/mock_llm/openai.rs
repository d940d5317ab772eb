//! Renders a script step as an OpenAI Responses API answer: the `response`
//! object (non-streaming) and the server-sent events that stream it.
//!
//! Guarantees: the stream is built from the response object, so both carry
//! the same output items and usage. The script's figures go into
//! `response.usage` unchanged: `input_tokens` = input,
//! `input_tokens_details.cached_tokens` = cache_read,
//! `input_tokens_details.cache_write_tokens` = cache_write (only when not 0;
//! Codex 0.169 reads it), `output_tokens` = output,
//! `output_tokens_details.reasoning_tokens` = reasoning, `total_tokens` =
//! input + output. (In OpenAI's convention `input_tokens` already includes
//! the cached tokens; the server does not add them up for you.)
//!
//! A [`Call::Shell`] becomes the shell call the request's tool list offers,
//! checked in this order: a function `exec_command` (`{"cmd": ...}`, Codex
//! 0.169's unified exec), `shell_command` (`{"command": "..."}`), `shell`
//! (`{"command": ["bash", "-lc", ...]}`), or a `local_shell` tool (a
//! `local_shell_call` item). A request offering none of them gets a 400 that
//! says so.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::anthropic::chunks;
use super::script::{Call, ErrorReply, Step};
use super::RequestContext;

/// The non-streaming answer: a completed `response` object; `Err` is a
/// message for a 400 answer (the step asks for something the request does not
/// offer).
pub(super) fn response(step: &Step, ctx: &RequestContext) -> Result<Value, String> {
    let mut output = Vec::new();
    if let Some(thinking) = &step.thinking {
        output.push(json!({
            "type": "reasoning",
            "id": format!("rs_mock_{:04}", ctx.seq),
            "summary": [{"type": "summary_text", "text": thinking}],
        }));
    }
    if let Some(text) = &step.text {
        output.push(json!({
            "type": "message",
            "id": format!("msg_mock_{:04}", ctx.seq),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }));
    }
    for (k, call) in step.calls.iter().enumerate() {
        output.push(call_item(call, ctx, k)?);
    }
    let u = &step.usage;
    let mut input_details = json!({"cached_tokens": u.cache_read});
    if u.cache_write > 0 {
        input_details["cache_write_tokens"] = json!(u.cache_write);
    }
    let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(json!({
        "id": format!("resp_mock_{:04}", ctx.seq),
        "object": "response",
        "created_at": created_at,
        "status": "completed",
        "error": null,
        "incomplete_details": null,
        "model": step.model.clone().unwrap_or_else(|| ctx.model.clone()),
        "output": output,
        "parallel_tool_calls": true,
        "usage": {
            "input_tokens": u.input,
            "input_tokens_details": input_details,
            "output_tokens": u.output,
            "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": u.input + u.output,
        },
    }))
}

fn call_item(call: &Call, ctx: &RequestContext, k: usize) -> Result<Value, String> {
    let call_id = |id: &Option<String>| id.clone().unwrap_or_else(|| format!("call_mock_{:04}_{k}", ctx.seq));
    let item_id = format!("fc_mock_{:04}_{k}", ctx.seq);
    match call {
        Call::Tool { id, name, input } => {
            let custom = ctx.tools.iter().any(|(kind, tool)| kind == "custom" && tool == name);
            Ok(match (custom, input) {
                (true, Value::String(text)) => json!({
                    "type": "custom_tool_call",
                    "id": item_id,
                    "status": "completed",
                    "call_id": call_id(id),
                    "name": name,
                    "input": text,
                }),
                _ => json!({
                    "type": "function_call",
                    "id": item_id,
                    "status": "completed",
                    "call_id": call_id(id),
                    "name": name,
                    "arguments": input.to_string(),
                }),
            })
        }
        Call::Shell { command, workdir } => {
            let has_function = |wanted: &str| ctx.tools.iter().any(|(kind, name)| kind == "function" && name == wanted);
            let function = |name: &str, mut arguments: Value| {
                if let Some(dir) = workdir {
                    arguments["workdir"] = json!(dir);
                }
                json!({
                    "type": "function_call",
                    "id": item_id,
                    "status": "completed",
                    "call_id": call_id(&None),
                    "name": name,
                    "arguments": arguments.to_string(),
                })
            };
            if has_function("exec_command") {
                Ok(function("exec_command", json!({"cmd": command})))
            } else if has_function("shell_command") {
                Ok(function("shell_command", json!({"command": command})))
            } else if has_function("shell") {
                Ok(function("shell", json!({"command": ["bash", "-lc", command]})))
            } else if ctx.tools.iter().any(|(kind, _)| kind == "local_shell") {
                Ok(json!({
                    "type": "local_shell_call",
                    "id": item_id,
                    "call_id": call_id(&None),
                    "status": "completed",
                    "action": {
                        "type": "exec",
                        "command": ["bash", "-lc", command],
                        "working_directory": workdir,
                    },
                }))
            } else {
                let offered: Vec<String> = ctx.tools.iter().map(|(kind, name)| format!("{kind} {name}")).collect();
                Err(format!(
                    "mock-llm: script step {} asks for a shell call, but the request offers no shell tool (exec_command, shell_command, shell or local_shell); it offers: [{}]",
                    ctx.step.unwrap_or_default(),
                    offered.join(", ")
                ))
            }
        }
    }
}

/// The streaming answer: `(event name, data)` pairs in order, each data
/// carrying `type` and `sequence_number`.
pub(super) fn stream(step: &Step, ctx: &RequestContext) -> Result<Vec<(String, Value)>, String> {
    let full = response(step, ctx)?;
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(events.len());
        events.push((kind.to_string(), data));
    };

    let mut pending = full.clone();
    pending["status"] = json!("in_progress");
    pending["output"] = json!([]);
    pending["usage"] = Value::Null;
    push("response.created", json!({"response": pending}));
    push("response.in_progress", json!({"response": pending}));

    let items = full["output"].as_array().cloned().unwrap_or_default();
    for (output_index, item) in items.iter().enumerate() {
        let item_id = item["id"].clone();
        let mut added = item.clone();
        match item["type"].as_str() {
            Some("message") => {
                added["status"] = json!("in_progress");
                added["content"] = json!([]);
                push("response.output_item.added", json!({"output_index": output_index, "item": added}));
                let text = item["content"][0]["text"].as_str().unwrap_or_default();
                let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
                push(
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "part": part("")}),
                );
                for piece in chunks(text, 24) {
                    push(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "delta": piece}),
                    );
                }
                push(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "text": text}),
                );
                push(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "part": part(text)}),
                );
            }
            Some("reasoning") => {
                added["summary"] = json!([]);
                push("response.output_item.added", json!({"output_index": output_index, "item": added}));
                let text = item["summary"][0]["text"].as_str().unwrap_or_default();
                let part = |text: &str| json!({"type": "summary_text", "text": text});
                push(
                    "response.reasoning_summary_part.added",
                    json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "part": part("")}),
                );
                for piece in chunks(text, 24) {
                    push(
                        "response.reasoning_summary_text.delta",
                        json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "delta": piece}),
                    );
                }
                push(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "text": text}),
                );
                push(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "part": part(text)}),
                );
            }
            Some("function_call") => {
                added["status"] = json!("in_progress");
                added["arguments"] = json!("");
                push("response.output_item.added", json!({"output_index": output_index, "item": added}));
                let arguments = item["arguments"].as_str().unwrap_or_default();
                for piece in chunks(arguments, 32) {
                    push(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": output_index, "delta": piece}),
                    );
                }
                push(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": output_index, "arguments": arguments}),
                );
            }
            _ => {
                // custom_tool_call, local_shell_call: announced, then done.
                added["status"] = json!("in_progress");
                push("response.output_item.added", json!({"output_index": output_index, "item": added}));
            }
        }
        push("response.output_item.done", json!({"output_index": output_index, "item": item}));
    }
    push("response.completed", json!({"response": full}));
    Ok(events)
}

/// The error body, `{"error":{"message","type","param","code"}}`.
pub(super) fn error(reply: &ErrorReply) -> Value {
    let kind = reply.kind.clone().unwrap_or_else(|| {
        match reply.status {
            429 => "rate_limit_exceeded",
            401 => "invalid_api_key",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
        .to_string()
    });
    json!({"error": {"message": reply.message, "type": kind, "param": null, "code": kind}})
}
