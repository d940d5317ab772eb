//! Renders a script step as an OpenAI Chat Completions answer
//! (`POST /v1/chat/completions`): the `chat.completion` object
//! (non-streaming) and the `chat.completion.chunk` stream (server-sent
//! events with no event names, ended by `data: [DONE]`). opencode's
//! openai-compatible provider and Aider (through litellm) call this API.
//!
//! Guarantees: the stream is built from the completion object, so both
//! carry the same text, calls and usage. The script's figures go into
//! `usage` unchanged: `prompt_tokens` = input,
//! `prompt_tokens_details.cached_tokens` = cache_read, `completion_tokens` =
//! output, `completion_tokens_details.reasoning_tokens` = reasoning,
//! `total_tokens` = input + output (OpenAI's convention: the prompt count
//! already holds the cached tokens; the server adds nothing up for you).
//! The API has no cache-write figure, so `cache_write` is not sent. A
//! stream carries the usage in one last chunk with empty `choices` only
//! when the request asks for it (`stream_options.include_usage`), as the
//! real API does.
//!
//! Thinking goes out as `reasoning_content` (the field DeepSeek and most
//! openai-compatible servers use). A [`Call::Shell`] becomes a call of the
//! shell function the request offers, checked in this order: `bash`
//! (opencode: `{"command", "description"}`), `shell` / `shell_command` /
//! `run_shell_command` (`{"command"}`); a request offering none of them
//! gets a 400 that says so.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::anthropic::chunks;
use super::script::{Call, Step};
use super::RequestContext;

/// The non-streaming answer: a `chat.completion` object; `Err` is a message
/// for a 400 answer (the step asks for something the request does not offer).
pub(super) fn completion(step: &Step, ctx: &RequestContext) -> Result<Value, String> {
    let mut message = json!({"role": "assistant", "content": step.text});
    if let Some(thinking) = &step.thinking {
        message["reasoning_content"] = json!(thinking);
    }
    if !step.calls.is_empty() {
        let calls =
            step.calls.iter().enumerate().map(|(k, call)| tool_call(call, ctx, k)).collect::<Result<Vec<_>, _>>()?;
        message["tool_calls"] = json!(calls);
    }
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(json!({
        "id": format!("chatcmpl-mock-{:04}", ctx.seq),
        "object": "chat.completion",
        "created": created,
        "model": step.model.clone().unwrap_or_else(|| ctx.model.clone()),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(step)}],
        "usage": usage(step),
    }))
}

fn finish_reason(step: &Step) -> &'static str {
    if step.calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

fn usage(step: &Step) -> Value {
    let u = &step.usage;
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

fn tool_call(call: &Call, ctx: &RequestContext, k: usize) -> Result<Value, String> {
    let generated = format!("call_mock_{:04}_{k}", ctx.seq);
    let (id, name, arguments) = match call {
        Call::Tool { id, name, input } => {
            let arguments = match input {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (id.clone().unwrap_or(generated), name.clone(), arguments)
        }
        Call::Shell { command, workdir } => {
            let offers = |wanted: &str| ctx.tools.iter().any(|(_, name)| name == wanted);
            let command = match workdir {
                Some(dir) => format!("cd '{}' && {command}", dir.replace('\'', r"'\''")),
                None => command.clone(),
            };
            let (name, arguments) = if offers("bash") {
                ("bash", json!({"command": command, "description": "Runs the scripted command"}))
            } else if let Some(name) =
                ["shell", "shell_command", "run_shell_command"].into_iter().find(|name| offers(name))
            {
                (name, json!({"command": command}))
            } else {
                let offered: Vec<&str> = ctx.tools.iter().map(|(_, name)| name.as_str()).collect();
                return Err(format!(
                    "mock-llm: script step {} asks for a shell call, but the request offers no shell function (bash, shell, shell_command or run_shell_command); it offers: [{}]",
                    ctx.step.unwrap_or_default(),
                    offered.join(", ")
                ));
            };
            (generated, name.to_string(), arguments.to_string())
        }
    };
    Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
}

/// The streaming answer: the `data:` payloads in order (the last is
/// `[DONE]`); `include_usage` adds the usage chunk before it.
pub(super) fn stream(step: &Step, ctx: &RequestContext, include_usage: bool) -> Result<Vec<String>, String> {
    let full = completion(step, ctx)?;
    let head = json!({
        "id": full["id"],
        "object": "chat.completion.chunk",
        "created": full["created"],
        "model": full["model"],
    });
    let mut frames = Vec::new();
    let mut chunk = |delta: Value, finish: Value| {
        let mut data = head.clone();
        data["choices"] = json!([{"index": 0, "delta": delta, "finish_reason": finish}]);
        frames.push(data.to_string());
    };
    chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    let message = &full["choices"][0]["message"];
    if let Some(thinking) = message["reasoning_content"].as_str() {
        for piece in chunks(thinking, 24) {
            chunk(json!({"reasoning_content": piece}), Value::Null);
        }
    }
    if let Some(text) = message["content"].as_str() {
        for piece in chunks(text, 24) {
            chunk(json!({"content": piece}), Value::Null);
        }
    }
    for (index, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let opening = json!({"index": index, "id": call["id"], "type": "function",
                             "function": {"name": call["function"]["name"], "arguments": ""}});
        chunk(json!({"tool_calls": [opening]}), Value::Null);
        for piece in chunks(call["function"]["arguments"].as_str().unwrap_or_default(), 32) {
            chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), Value::Null);
        }
    }
    chunk(json!({}), json!(finish_reason(step)));
    if include_usage {
        let mut data = head.clone();
        data["choices"] = json!([]);
        data["usage"] = full["usage"].clone();
        frames.push(data.to_string());
    }
    frames.push("[DONE]".to_string());
    Ok(frames)
}
