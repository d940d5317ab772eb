//! Counting one model call from the bytes of its response, as they pass.
//!
//! Each HTTP response is one call, whatever message ids, repeated or
//! reordered events, or missing usage it carries. A [`WireMeter`] is fed
//! the response body chunk by chunk (server-sent events split anywhere,
//! or one JSON body) and, at the end, says what to charge:
//! - every usage figure the response carries is taken field by field at
//!   its largest (Anthropic's `message_delta` usage is cumulative; a
//!   repeated or reordered event can only raise a figure, never lower it);
//! - a call is *settled* once its provider's final usage has arrived with
//!   both its input and its output side: Anthropic `message_start` (input)
//!   and `message_delta` (output), Responses `response.completed` /
//!   `incomplete` / `failed`, Chat Completions' usage chunk (the proxy
//!   asks for it with `stream_options.include_usage`), Gemini's
//!   `usageMetadata` on the chunk that carries a `finishReason`;
//! - a successful call that is not settled and read whole (no usage, a
//!   stream cut mid-way, even after its usage came, an event or a body
//!   that is not what its API sends) is charged, field by field, the
//!   larger of what it showed and its request's estimate (estimated input,
//!   and the output cap the call was sent with), and flagged.
//!
//! A response with an error status carries no usage and is charged
//! nothing beyond what it shows: providers bill no refused call.
//!
//! Owns: the wire formats' usage fields. Never does: I/O, budgets.

use corral_harness::TokenUsage;
use serde_json::Value;

use super::provider::Provider;

/// The longest server-sent event line kept (a `data:` line of a whole
/// response); a longer one is skipped and the call flagged.
const MAX_EVENT_BYTES: usize = 16 << 20;

/// The largest non-streamed body read for its usage; past it the call is
/// charged its estimate.
const MAX_JSON_BODY_BYTES: usize = 64 << 20;

/// What a call is charged, once its response has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub usage: TokenUsage,
    /// Why the estimate was charged, when it was: no usage, a cut stream.
    pub flag: Option<String>,
    /// The model the response named, if it named one.
    pub model: Option<String>,
    /// The id of the response (Responses API), which a later call may
    /// continue with `previous_response_id`.
    pub response_id: Option<String>,
}

/// What an unsettled call is charged at least: its input floor
/// ([`super::request::input_floor`]) and its output cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    pub input: u64,
    /// The output cap the call was sent with.
    pub output: u64,
}

impl Estimate {
    /// The estimate as a charge: its input floor and its output cap.
    pub fn usage(self) -> TokenUsage {
        TokenUsage { input: self.input, output: self.output, cache_read: 0, cache_write: 0 }
    }
}

/// How a response's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Read to its end.
    Complete,
    /// Cut: the upstream or the client went away mid-way.
    Cut,
}

/// The meter of one call.
#[derive(Debug)]
pub struct WireMeter {
    provider: Provider,
    streamed: bool,
    ok_status: bool,
    /// Field-wise largest usage seen.
    seen: TokenUsage,
    input_known: bool,
    output_known: bool,
    settled: bool,
    model: Option<String>,
    response_id: Option<String>,
    /// Bytes of the line being read (streamed) or of the body (JSON).
    pending: Vec<u8>,
    /// `data:` lines of the event being read.
    data: String,
    overflow: bool,
    unreadable: bool,
}

impl WireMeter {
    /// A meter for a response of `provider` with HTTP `status`, streamed as
    /// server-sent events or a single JSON body.
    pub fn new(provider: Provider, status: u16, streamed: bool) -> WireMeter {
        WireMeter {
            provider,
            streamed,
            ok_status: (200..300).contains(&status),
            seen: TokenUsage::default(),
            input_known: false,
            output_known: false,
            settled: false,
            model: None,
            response_id: None,
            pending: Vec::new(),
            data: String::new(),
            overflow: false,
            unreadable: false,
        }
    }

    /// Reads the next chunk of the body, split anywhere.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.streamed {
            if self.pending.len() + chunk.len() > MAX_JSON_BODY_BYTES {
                self.overflow = true;
                self.pending = Vec::new();
            } else if !self.overflow {
                self.pending.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(at);
            rest = &tail[1..];
            if self.overflow {
                // The end of the overlong line: read on from the next.
                self.overflow = false;
                self.pending.clear();
                continue;
            }
            self.pending.extend_from_slice(line);
            let line = std::mem::take(&mut self.pending);
            self.on_line(&line);
        }
        if !self.overflow {
            if self.pending.len() + rest.len() > MAX_EVENT_BYTES {
                self.overflow = true;
                self.unreadable = true;
                self.pending.clear();
            } else {
                self.pending.extend_from_slice(rest);
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(&String::from_utf8_lossy(value));
        }
        // `event:`, `id:`, `retry:` and comments: the JSON says the type.
    }

    fn dispatch(&mut self) {
        let data = std::mem::take(&mut self.data);
        let data = data.trim();
        if data.is_empty() || data == "[DONE]" {
            return;
        }
        // Only events that carry usage (every API's field has the word),
        // or name the model before it is known, are parsed: text deltas
        // pass unread. An event that spells its keys with escapes is parsed
        // too, so no usage hides behind `\u0075sage`.
        if !data.contains("usage") && !data.contains("\\u") && self.model.is_some() {
            return;
        }
        match serde_json::from_str::<Value>(data) {
            Ok(event) => self.on_event(&event),
            Err(_) => self.unreadable = true,
        }
    }

    fn take(&mut self, usage: TokenUsage, input: bool, output: bool) {
        self.seen = self.seen.max(usage);
        self.input_known |= input;
        self.output_known |= output;
    }

    fn note_model(&mut self, v: Option<&Value>) {
        if let Some(model) = v.and_then(Value::as_str).filter(|m| !m.is_empty()) {
            self.model = Some(model.to_owned());
        }
    }

    /// One JSON object of the response: a streamed event, or (JSON bodies)
    /// the whole response.
    fn on_event(&mut self, event: &Value) {
        match self.provider {
            Provider::Anthropic => self.on_anthropic(event),
            Provider::OpenAiResponses => self.on_responses(event),
            Provider::ChatCompletions => self.on_chat(event),
            Provider::Gemini => self.on_gemini(event),
        }
    }

    fn on_anthropic(&mut self, event: &Value) {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "message_start" => {
                let message = event.get("message");
                self.note_model(message.and_then(|m| m.get("model")));
                if let Some(usage) = message.and_then(|m| m.get("usage")).filter(|u| u.is_object()) {
                    let (tokens, input, output) = anthropic_usage(usage);
                    // message_start's output_tokens is a start snapshot: the
                    // output side is known only from message_delta.
                    self.take(tokens, input, output && !self.streamed);
                }
            }
            "message_delta" => {
                if let Some(usage) = event.get("usage").filter(|u| u.is_object()) {
                    let (tokens, input, output) = anthropic_usage(usage);
                    self.take(tokens, input, output);
                }
            }
            // A non-streamed answer is one message object.
            "message" => {
                self.note_model(event.get("model"));
                if let Some(usage) = event.get("usage").filter(|u| u.is_object()) {
                    let (tokens, input, output) = anthropic_usage(usage);
                    self.take(tokens, input, output);
                }
            }
            _ => {}
        }
        self.settled = self.input_known && self.output_known;
    }

    fn on_responses(&mut self, event: &Value) {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let response = match kind {
            "response.completed" | "response.incomplete" | "response.failed" => event.get("response"),
            "response.created" | "response.in_progress" => {
                self.note_model(event.get("response").and_then(|r| r.get("model")));
                self.note_response_id(event.get("response"));
                None
            }
            // A non-streamed answer is the response object itself.
            "" if event.get("object").and_then(Value::as_str) == Some("response") => Some(event),
            _ => None,
        };
        let Some(response) = response else { return };
        self.note_model(response.get("model"));
        self.note_response_id(Some(response));
        if let Some(usage) = response.get("usage").filter(|u| u.is_object()) {
            let input = count(usage.get("input_tokens"));
            let cached = count(usage.get("input_tokens_details").and_then(|d| d.get("cached_tokens")));
            // `input_tokens` includes the cached ones; `output_tokens` the
            // reasoning ones.
            let tokens = TokenUsage {
                input: input.saturating_sub(cached),
                output: count(usage.get("output_tokens")),
                cache_read: cached,
                cache_write: 0,
            };
            self.take(tokens, has(usage, "input_tokens"), has(usage, "output_tokens"));
            self.settled = self.input_known && self.output_known;
        }
    }

    /// The first id a response names: a later event that names another
    /// does not move the conversation this call's charge is kept under.
    fn note_response_id(&mut self, response: Option<&Value>) {
        if self.response_id.is_none() {
            let id = response.and_then(|r| r.get("id")).and_then(Value::as_str).filter(|id| !id.is_empty());
            self.response_id = id.map(str::to_owned);
        }
    }

    fn on_chat(&mut self, event: &Value) {
        self.note_model(event.get("model"));
        if let Some(usage) = event.get("usage").filter(|u| u.is_object()) {
            let input = count(usage.get("prompt_tokens"));
            let cached = count(usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")));
            let tokens = TokenUsage {
                input: input.saturating_sub(cached),
                output: count(usage.get("completion_tokens")),
                cache_read: cached,
                cache_write: 0,
            };
            self.take(tokens, has(usage, "prompt_tokens"), has(usage, "completion_tokens"));
            self.settled = self.input_known && self.output_known;
        }
    }

    fn on_gemini(&mut self, event: &Value) {
        // A non-streamed `streamGenerateContent` answers with a JSON array
        // of the chunks.
        if let Some(chunks) = event.as_array() {
            for chunk in chunks {
                self.on_gemini(chunk);
            }
            return;
        }
        self.note_model(event.get("modelVersion"));
        let finished = event
            .get("candidates")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c.get("finishReason").is_some_and(|r| !r.is_null())));
        if let Some(usage) = event.get("usageMetadata").filter(|u| u.is_object()) {
            // The prompt includes the cached tokens; tools' own prompts
            // (code execution, grounding) are counted apart.
            let prompt =
                count(usage.get("promptTokenCount")).saturating_add(count(usage.get("toolUsePromptTokenCount")));
            let cached = count(usage.get("cachedContentTokenCount"));
            let mut tokens = TokenUsage {
                input: prompt.saturating_sub(cached),
                output: count(usage.get("candidatesTokenCount")).saturating_add(count(usage.get("thoughtsTokenCount"))),
                cache_read: cached,
                cache_write: 0,
            };
            // Whatever the total counts beyond the parts named above is
            // charged as output, the dearer side.
            let beyond = count(usage.get("totalTokenCount")).saturating_sub(tokens.total());
            tokens.output = tokens.output.saturating_add(beyond);
            // Each chunk's figures are the call's so far; the finishing
            // chunk's are final.
            self.take(tokens, has(usage, "promptTokenCount"), finished);
            if finished {
                self.settled = self.input_known && self.output_known;
            }
        }
    }

    /// What the call is charged, now that its body ended as `end`.
    pub fn finish(mut self, end: End, estimate: Estimate) -> Charge {
        if self.streamed {
            // A last event without its blank line still counts.
            if !self.overflow && !self.pending.is_empty() {
                let line = std::mem::take(&mut self.pending);
                self.on_line(&line);
            }
            self.dispatch();
        } else if !self.overflow && !self.pending.is_empty() {
            match serde_json::from_slice::<Value>(&self.pending) {
                Ok(body) => {
                    if self.provider == Provider::Anthropic && body.get("type").is_none() {
                        self.on_anthropic(&with_type(body, "message"));
                    } else {
                        self.on_event(&body);
                    }
                }
                Err(_) => self.unreadable = true,
            }
        }
        let (model, response_id) = (self.model.take(), self.response_id.take());
        if !self.ok_status {
            return Charge { usage: self.seen, flag: None, model, response_id };
        }
        if self.settled && end == End::Complete && !self.overflow && !self.unreadable {
            return Charge { usage: self.seen, flag: None, model, response_id };
        }
        let why = if end == End::Cut {
            "the response was cut before its end"
        } else if self.overflow {
            "the response was too large to read for its usage"
        } else if self.unreadable {
            "the response could not be read for its usage"
        } else {
            "the response carried no final usage"
        };
        // Anything short of a whole, readable answer is charged no less
        // than its estimate, even when usage came: what came before a cut
        // or an unreadable event need not be the call's last figure (some
        // servers report usage on every chunk).
        Charge { usage: charge_floor(self.seen, estimate.usage()), flag: Some(why.to_owned()), model, response_id }
    }
}

/// The larger of what was seen and the estimate, counting the input side
/// as a whole (the estimate does not know the cache split): input tokens
/// are raised until the input side reaches the estimate.
fn charge_floor(seen: TokenUsage, floor: TokenUsage) -> TokenUsage {
    let input_side = seen.input.saturating_add(seen.cache_read).saturating_add(seen.cache_write);
    TokenUsage {
        input: seen.input.saturating_add(floor.input.saturating_sub(input_side)),
        output: seen.output.max(floor.output),
        cache_read: seen.cache_read,
        cache_write: seen.cache_write,
    }
}

fn with_type(mut body: Value, kind: &str) -> Value {
    if let Some(map) = body.as_object_mut() {
        map.insert("type".into(), Value::String(kind.into()));
    }
    body
}

fn anthropic_usage(usage: &Value) -> (TokenUsage, bool, bool) {
    let tokens = TokenUsage {
        input: count(usage.get("input_tokens")),
        output: count(usage.get("output_tokens")),
        cache_read: count(usage.get("cache_read_input_tokens")),
        cache_write: count(usage.get("cache_creation_input_tokens")),
    };
    (tokens, has(usage, "input_tokens"), has(usage, "output_tokens"))
}

fn has(usage: &Value, field: &str) -> bool {
    usage.get(field).is_some_and(|v| v.as_u64().is_some() || v.as_f64().is_some_and(|f| f >= 0.0))
}

/// A token count in any JSON number shape; fractions round up, negatives
/// and non-numbers are 0.
fn count(v: Option<&Value>) -> u64 {
    match v {
        Some(v) => v.as_u64().or_else(|| v.as_f64().filter(|f| *f > 0.0).map(|f| f.ceil() as u64)).unwrap_or(0),
        None => 0,
    }
}

#[cfg(test)]
mod tests;
