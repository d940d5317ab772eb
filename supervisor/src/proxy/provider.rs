//! The model APIs the proxy speaks, told apart by the request's path, and
//! what differs between them: where the upstream is by default, how a
//! client presents its key, which body field caps the output, and the
//! refusal each one's CLIs treat as final.
//!
//! Owns: the mapping from a path to a [`Provider`] and every
//! provider-shaped body corral answers with. Never does: I/O.

use serde_json::{json, Value};

/// One model API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Anthropic Messages (`POST /v1/messages`), Claude Code.
    Anthropic,
    /// OpenAI Responses (`POST /v1/responses`), Codex.
    OpenAiResponses,
    /// OpenAI Chat Completions (`POST /v1/chat/completions`), Aider,
    /// opencode and most local model servers.
    ChatCompletions,
    /// Google Gemini (`POST /v1beta/models/M:generateContent` and
    /// `:streamGenerateContent`), Gemini CLI.
    Gemini,
}

/// Which upstream (and which key) a provider's calls go to: the two
/// OpenAI APIs share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Anthropic,
    OpenAi,
    Gemini,
}

/// What a request is, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A model call: metered, admitted against the budgets.
    Call(Provider),
    /// A request that costs nothing (Anthropic `count_tokens`, a model
    /// list): forwarded with the real key, not metered.
    Free(Family),
}

impl Provider {
    pub fn family(self) -> Family {
        match self {
            Provider::Anthropic => Family::Anthropic,
            Provider::OpenAiResponses | Provider::ChatCompletions => Family::OpenAi,
            Provider::Gemini => Family::Gemini,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAiResponses => "openai_responses",
            Provider::ChatCompletions => "chat_completions",
            Provider::Gemini => "gemini",
        }
    }

    /// The request body's output cap field(s), in the order they are read.
    pub fn output_cap_fields(self) -> &'static [&'static str] {
        match self {
            Provider::Anthropic => &["max_tokens"],
            Provider::OpenAiResponses => &["max_output_tokens"],
            Provider::ChatCompletions => &["max_completion_tokens", "max_tokens"],
            Provider::Gemini => &["generationConfig.maxOutputTokens"],
        }
    }

    /// The answer to a call corral refuses (a budget is spent, or the
    /// daemon cannot be asked): a status and body that make the provider's
    /// CLIs end the turn at once instead of retrying (checked against
    /// Claude Code 2.1.328, Codex 0.169.0, Gemini CLI 0.61.0, opencode
    /// 1.18.33 and Aider 0.86.2, see docs/real-agents.md and docs/agents/).
    /// Anthropic: 402 `billing_error` (one call, exit 1). Responses: 429
    /// `insufficient_quota` without Retry-After (Codex: one call, "Quota
    /// exceeded"). Chat Completions: 400 `invalid_request_error` (opencode
    /// and Aider retry any 429, and opencode reads `insufficient_quota` as
    /// one; a 400 is never retried). Gemini: 400 `FAILED_PRECONDITION`
    /// (Gemini CLI retries 429 ten times; never a 400).
    pub fn refusal(self, message: &str) -> (u16, Value) {
        match self {
            Provider::Anthropic => {
                (402, json!({"type": "error", "error": {"type": "billing_error", "message": message}}))
            }
            Provider::OpenAiResponses => (
                429,
                json!({"error": {"message": message, "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}),
            ),
            Provider::ChatCompletions => (
                400,
                json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "budget_spent"}}),
            ),
            Provider::Gemini => {
                (400, json!({"error": {"code": 400, "message": message, "status": "FAILED_PRECONDITION"}}))
            }
        }
    }
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Anthropic => "anthropic",
            Family::OpenAi => "openai",
            Family::Gemini => "gemini",
        }
    }

    /// The provider's own endpoint, used when neither the spawning
    /// environment nor corral.toml names one. OpenAI's includes `/v1`
    /// (the `OPENAI_BASE_URL` convention); the others do not.
    pub fn default_upstream(self) -> &'static str {
        match self {
            Family::Anthropic => "https://api.anthropic.com",
            Family::OpenAi => "https://api.openai.com/v1",
            Family::Gemini => "https://generativelanguage.googleapis.com",
        }
    }

    /// The answer to a request without this agent's token: 401 in the
    /// provider's shape.
    pub fn unauthorized(self, message: &str) -> (u16, Value) {
        match self {
            Family::Anthropic => {
                (401, json!({"type": "error", "error": {"type": "authentication_error", "message": message}}))
            }
            Family::OpenAi => (
                401,
                json!({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}}),
            ),
            Family::Gemini => (401, json!({"error": {"code": 401, "message": message, "status": "UNAUTHENTICATED"}})),
        }
    }

    /// Any other error corral answers itself (a bad body, an upstream
    /// that cannot be reached), in the provider's shape.
    pub fn error(self, status: u16, message: &str) -> (u16, Value) {
        match self {
            Family::Anthropic => {
                let kind = if status < 500 { "invalid_request_error" } else { "api_error" };
                (status, json!({"type": "error", "error": {"type": kind, "message": message}}))
            }
            Family::OpenAi => (status, json!({"error": {"message": message, "type": "invalid_request_error"}})),
            Family::Gemini => {
                (status, json!({"error": {"code": status, "message": message, "status": "INVALID_ARGUMENT"}}))
            }
        }
    }
}

/// What the request at `method` `path` (no query) is, or `None` for a path
/// the proxy does not forward: it forwards nothing it cannot meter.
pub fn route(method: &str, path: &str) -> Option<Route> {
    let path = path.trim_end_matches('/');
    if method == "POST" {
        if path.ends_with("/messages/count_tokens") {
            return Some(Route::Free(Family::Anthropic));
        }
        if path.ends_with("/messages") {
            return Some(Route::Call(Provider::Anthropic));
        }
        if path.ends_with("/responses") {
            return Some(Route::Call(Provider::OpenAiResponses));
        }
        if path.ends_with("/chat/completions") {
            return Some(Route::Call(Provider::ChatCompletions));
        }
        if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
            return Some(Route::Call(Provider::Gemini));
        }
        if path.ends_with(":countTokens") {
            return Some(Route::Free(Family::Gemini));
        }
        return None;
    }
    if method == "GET" {
        // Model lists: Anthropic's and OpenAI's `/v1/models`, Gemini's
        // `/v1beta/models`.
        let last = path.rsplit('/').next().unwrap_or("");
        let parent = path.rsplit('/').nth(1).unwrap_or("");
        // A model's page, never a model's method (`M:generateContent`).
        if last == "models" || (parent == "models" && !last.contains(':')) {
            return Some(Route::Free(if path.contains("/v1beta/") { Family::Gemini } else { Family::OpenAi }));
        }
    }
    None
}

/// Gemini names the model in the path (`models/M:generateContent`).
pub fn model_in_path(path: &str) -> Option<String> {
    let tail = path.rsplit("/models/").next()?;
    let model = tail.split(':').next()?;
    (!model.is_empty() && model.len() < path.len()).then(|| model.to_owned())
}

/// Whether the call streams: the body says `"stream": true`, or (Gemini)
/// the path is `:streamGenerateContent`.
pub fn wants_stream(provider: Provider, path: &str, body: &Value) -> bool {
    match provider {
        Provider::Gemini => path.ends_with(":streamGenerateContent"),
        _ => body.get("stream").and_then(Value::as_bool) == Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_their_api() {
        assert_eq!(route("POST", "/v1/messages"), Some(Route::Call(Provider::Anthropic)));
        assert_eq!(route("POST", "/gateway/v1/messages/"), Some(Route::Call(Provider::Anthropic)));
        assert_eq!(route("POST", "/v1/messages/count_tokens"), Some(Route::Free(Family::Anthropic)));
        assert_eq!(route("POST", "/v1/responses"), Some(Route::Call(Provider::OpenAiResponses)));
        assert_eq!(route("POST", "/v1/chat/completions"), Some(Route::Call(Provider::ChatCompletions)));
        assert_eq!(
            route("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
            Some(Route::Call(Provider::Gemini))
        );
        assert_eq!(route("GET", "/v1/models"), Some(Route::Free(Family::OpenAi)));
        assert_eq!(route("GET", "/v1beta/models/gemini-2.5-pro"), Some(Route::Free(Family::Gemini)));
        // Nothing else goes upstream: the proxy forwards only what it meters
        // or knows to be free.
        assert_eq!(route("POST", "/v1/files"), None);
        assert_eq!(route("POST", "/v1/embeddings"), None);
        assert_eq!(route("DELETE", "/v1/messages"), None);
        // A model's method is no model page, whatever the method says.
        assert_eq!(route("GET", "/v1beta/models/gemini-2.5-pro:generateContent"), None);
    }

    #[test]
    fn gemini_names_the_model_in_its_path() {
        assert_eq!(
            model_in_path("/v1beta/models/gemini-2.5-flash:generateContent").as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(model_in_path("/v1/messages"), None);
    }

    #[test]
    fn refusals_have_the_shapes_that_end_a_turn() {
        let (status, body) = Provider::Anthropic.refusal("spent");
        assert_eq!((status, body["error"]["type"].as_str()), (402, Some("billing_error")));
        let (status, body) = Provider::OpenAiResponses.refusal("spent");
        assert_eq!((status, body["error"]["code"].as_str()), (429, Some("insufficient_quota")));
        let (status, body) = Provider::ChatCompletions.refusal("spent");
        assert_eq!((status, body["error"]["type"].as_str()), (400, Some("invalid_request_error")));
        let (status, body) = Provider::Gemini.refusal("spent");
        assert_eq!((status, body["error"]["status"].as_str()), (400, Some("FAILED_PRECONDITION")));
    }
}
