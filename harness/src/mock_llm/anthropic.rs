//! Renders a script step as an Anthropic Messages API answer: the message
//! object (non-streaming) and the server-sent events that stream it.
//!
//! Guarantees: the streamed events and the non-streaming message describe the
//! same content and the same usage; the stream is built from the message, so
//! they cannot drift apart. The script's figures are put into the usage
//! fields unchanged: `message_start.message.usage` carries `input_tokens`,
//! `cache_creation_input_tokens` and `cache_read_input_tokens` exactly (and
//! `output_tokens` 1, or 0 when the step outputs 0, like the real API's
//! start-of-message snapshot); `message_delta.usage` carries all four
//! exactly, `output_tokens` being the final count.

use serde_json::{json, Map, Value};

use super::script::{Call, ErrorReply, Step};
use super::RequestContext;

/// The non-streaming answer: a complete `message` object.
pub(super) fn message(step: &Step, ctx: &RequestContext) -> Value {
    let mut content = Vec::new();
    if let Some(thinking) = &step.thinking {
        content.push(json!({
            "type": "thinking",
            "thinking": thinking,
            "signature": format!("mock-signature-{}", ctx.seq),
        }));
    }
    if let Some(text) = &step.text {
        content.push(json!({"type": "text", "text": text}));
    }
    for (k, call) in step.calls.iter().enumerate() {
        content.push(tool_use(call, ctx, k));
    }
    let stop_reason = step.stop_reason.clone().unwrap_or_else(|| {
        if step.calls.is_empty() {
            "end_turn".to_string()
        } else {
            "tool_use".to_string()
        }
    });
    json!({
        "id": format!("msg_mock_{:04}", ctx.seq),
        "type": "message",
        "role": "assistant",
        "model": step.model.clone().unwrap_or_else(|| ctx.model.clone()),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage(step, step.usage.output),
    })
}

fn tool_use(call: &Call, ctx: &RequestContext, k: usize) -> Value {
    let generated = format!("toolu_mock_{:04}_{k}", ctx.seq);
    match call {
        Call::Tool { id, name, input } => {
            // The Messages API wants an object; a bare string (meant for an
            // OpenAI custom tool) is wrapped so the stream stays valid JSON.
            let input = match input {
                Value::String(s) => json!({"input": s}),
                other => other.clone(),
            };
            json!({
                "type": "tool_use",
                "id": id.clone().unwrap_or(generated),
                "name": name,
                "input": input,
            })
        }
        Call::Shell { command, workdir } => {
            let command = match workdir {
                Some(dir) => format!("cd {} && {command}", shell_quote(dir)),
                None => command.clone(),
            };
            json!({
                "type": "tool_use",
                "id": generated,
                "name": "Bash",
                "input": {"command": command},
            })
        }
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn usage(step: &Step, output_tokens: u64) -> Value {
    let u = &step.usage;
    json!({
        "input_tokens": u.input,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

/// The streaming answer: `(event name, data)` pairs in order.
pub(super) fn stream(step: &Step, ctx: &RequestContext) -> Vec<(String, Value)> {
    let full = message(step, ctx);
    let mut events = Vec::new();
    let mut push = |name: &str, data: Value| events.push((name.to_string(), data));

    let mut start = full.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"] = usage(step, step.usage.output.min(1));
    push("message_start", json!({"type": "message_start", "message": start}));
    push("ping", json!({"type": "ping"}));

    let blocks = full["content"].as_array().cloned().unwrap_or_default();
    for (index, block) in blocks.iter().enumerate() {
        let (opening, deltas) = match block["type"].as_str() {
            Some("text") => {
                let text = block["text"].as_str().unwrap_or_default();
                let deltas =
                    chunks(text, 24).into_iter().map(|t| json!({"type": "text_delta", "text": t})).collect::<Vec<_>>();
                (json!({"type": "text", "text": ""}), deltas)
            }
            Some("thinking") => {
                let text = block["thinking"].as_str().unwrap_or_default();
                let mut deltas = chunks(text, 24)
                    .into_iter()
                    .map(|t| json!({"type": "thinking_delta", "thinking": t}))
                    .collect::<Vec<_>>();
                deltas.push(json!({"type": "signature_delta", "signature": block["signature"]}));
                (json!({"type": "thinking", "thinking": "", "signature": ""}), deltas)
            }
            _ => {
                let mut opening = Map::new();
                for key in ["type", "id", "name"] {
                    opening.insert(key.to_string(), block[key].clone());
                }
                opening.insert("input".to_string(), json!({}));
                let deltas = chunks(&block["input"].to_string(), 32)
                    .into_iter()
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                    .collect::<Vec<_>>();
                (Value::Object(opening), deltas)
            }
        };
        push("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": opening}));
        for delta in deltas {
            push("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}));
        }
        push("content_block_stop", json!({"type": "content_block_stop", "index": index}));
    }

    let u = &step.usage;
    push(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": full["stop_reason"], "stop_sequence": null},
            "usage": {
                "input_tokens": u.input,
                "cache_creation_input_tokens": u.cache_write,
                "cache_read_input_tokens": u.cache_read,
                "output_tokens": u.output,
            },
        }),
    );
    push("message_stop", json!({"type": "message_stop"}));
    events
}

/// The error body, `{"type":"error","error":{"type":...,"message":...}}`.
pub(super) fn error(reply: &ErrorReply) -> Value {
    let kind = reply.kind.clone().unwrap_or_else(|| {
        match reply.status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        }
        .to_string()
    });
    json!({"type": "error", "error": {"type": kind, "message": reply.message}})
}

/// `count_tokens` answer: a rough estimate from the request size (about four
/// bytes a token), never zero.
pub(super) fn count_tokens(body_len: usize) -> Value {
    json!({"input_tokens": (body_len / 4).max(1)})
}

/// Splits text into pieces of at most `size` characters (one empty piece for
/// empty text, so every block gets at least one delta).
pub(super) fn chunks(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(size).map(|piece| piece.iter().collect()).collect()
}
