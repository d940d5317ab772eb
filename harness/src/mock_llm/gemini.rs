//! Renders a script step as a Gemini API answer (`POST
//! /v1beta/models/MODEL:generateContent` and `:streamGenerateContent`):
//! one `GenerateContentResponse` (non-streaming), or the chunks that stream
//! it, sent as server-sent events (`data: {...}`, no event names) when the
//! request says `?alt=sse`, as one JSON array otherwise (what the API does).
//! Gemini CLI calls `streamGenerateContent?alt=sse`.
//!
//! Guarantees: the chunks are cut from the whole response, so both carry
//! the same parts and usage. Every answer ends with a `finishReason`
//! (`STOP`; Gemini CLI retries a stream without one) and at least one part.
//! The script's figures go into `usageMetadata` unchanged, on the last chunk
//! only (Gemini CLI keeps the last one it sees): `promptTokenCount` = input,
//! `cachedContentTokenCount` = cache_read (in Gemini's convention the prompt
//! count holds the cached tokens), `candidatesTokenCount` = output,
//! `thoughtsTokenCount` = reasoning, `totalTokenCount` = input + output +
//! reasoning (the API's total holds the thinking tokens). Gemini has no
//! cache-write figure, so `cache_write` is not sent.
//!
//! Thinking goes out as a part with `"thought": true`. A tool call is a
//! `functionCall` part (`{"name", "args"}`, plus `id` when the script gives
//! one); a [`Call::Shell`] is a call of `run_shell_command` (`{"command"}`,
//! Gemini CLI's shell tool), which the request must offer, or it gets a 400
//! that says so.

use serde_json::{json, Value};

use super::anthropic::chunks;
use super::script::{Call, ErrorReply, Step};
use super::RequestContext;

/// Gemini CLI's shell tool.
const SHELL_TOOL: &str = "run_shell_command";

/// The whole answer: one `GenerateContentResponse`; `Err` is a message for a
/// 400 answer (the step asks for something the request does not offer).
pub(super) fn response(step: &Step, ctx: &RequestContext) -> Result<Value, String> {
    let mut parts = Vec::new();
    if let Some(thinking) = &step.thinking {
        parts.push(json!({"text": thinking, "thought": true}));
    }
    if let Some(text) = &step.text {
        parts.push(json!({"text": text}));
    }
    for call in &step.calls {
        parts.push(function_call(call, ctx)?);
    }
    let u = &step.usage;
    Ok(json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": u.input,
            "cachedContentTokenCount": u.cache_read,
            "candidatesTokenCount": u.output,
            "thoughtsTokenCount": u.reasoning,
            "totalTokenCount": u.input + u.output + u.reasoning,
        },
        "modelVersion": step.model.clone().unwrap_or_else(|| ctx.model.clone()),
        "responseId": format!("mock-response-{:04}", ctx.seq),
    }))
}

fn function_call(call: &Call, ctx: &RequestContext) -> Result<Value, String> {
    match call {
        Call::Tool { id, name, input } => {
            // Gemini's args are an object; a bare string is wrapped.
            let args = match input {
                Value::String(s) => json!({"input": s}),
                other => other.clone(),
            };
            let mut call = json!({"name": name, "args": args});
            if let Some(id) = id {
                call["id"] = json!(id);
            }
            Ok(json!({"functionCall": call}))
        }
        Call::Shell { command, workdir } => {
            if !ctx.tools.iter().any(|(_, name)| name == SHELL_TOOL) {
                let offered: Vec<&str> = ctx.tools.iter().map(|(_, name)| name.as_str()).collect();
                return Err(format!(
                    "mock-llm: script step {} asks for a shell call, but the request offers no {SHELL_TOOL} function (Gemini CLI offers it with --yolo); it offers: [{}]",
                    ctx.step.unwrap_or_default(),
                    offered.join(", ")
                ));
            }
            let command = match workdir {
                Some(dir) => format!("cd '{}' && {command}", dir.replace('\'', r"'\''")),
                None => command.clone(),
            };
            Ok(json!({"functionCall": {"name": SHELL_TOOL, "args": {"command": command}}}))
        }
    }
}

/// The streamed answer: one chunk per piece of text and one per call, the
/// last with the `finishReason` and the `usageMetadata`.
pub(super) fn stream(step: &Step, ctx: &RequestContext) -> Result<Vec<Value>, String> {
    let full = response(step, ctx)?;
    let mut pieces = Vec::new();
    for part in full["candidates"][0]["content"]["parts"].as_array().into_iter().flatten() {
        match part["text"].as_str() {
            Some(text) => {
                for piece in chunks(text, 24) {
                    let mut cut = part.clone();
                    cut["text"] = json!(piece);
                    pieces.push(cut);
                }
            }
            None => pieces.push(part.clone()),
        }
    }
    let last = pieces.len().saturating_sub(1);
    Ok(pieces
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let mut candidate = json!({"content": {"role": "model", "parts": [part]}, "index": 0});
            let mut chunk = json!({"modelVersion": full["modelVersion"], "responseId": full["responseId"]});
            if i == last {
                candidate["finishReason"] = json!("STOP");
                chunk["usageMetadata"] = full["usageMetadata"].clone();
            }
            chunk["candidates"] = json!([candidate]);
            chunk
        })
        .collect())
}

/// The error body, `{"error":{"code","message","status"}}` (google.rpc
/// status names).
pub(super) fn error(reply: &ErrorReply) -> Value {
    let status = reply.kind.clone().unwrap_or_else(|| {
        match reply.status {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            405..=499 => "FAILED_PRECONDITION",
            _ => "INTERNAL",
        }
        .to_string()
    });
    json!({"error": {"code": reply.status, "message": reply.message, "status": status}})
}
