//! A scripted model server on loopback (`corral mock-llm`): it stands in for
//! a model provider so an agent pipeline can be rehearsed without spending
//! tokens, and so corral's tests can drive the real agent CLIs offline.
//!
//! It serves, streaming and not, the APIs the agent CLIs call:
//!
//! | API | path | streams when | who calls it |
//! |---|---|---|---|
//! | Anthropic Messages | `POST /v1/messages` (with or without `?beta=true`); `POST /v1/messages/count_tokens` | `"stream": true` (server-sent events) | Claude Code |
//! | OpenAI Responses | `POST /v1/responses` | `"stream": true` | Codex |
//! | OpenAI Chat Completions | `POST /v1/chat/completions` | `"stream": true`; the usage chunk when `stream_options.include_usage` is true | opencode (openai-compatible provider), Aider |
//! | Gemini | `POST /v1beta/models/MODEL:generateContent`, `...:streamGenerateContent` | `streamGenerateContent`: server-sent events with `?alt=sse`, else one JSON array of chunks | Gemini CLI |
//!
//! Paths are matched by their ending, so a base URL with an extra prefix
//! works too. Pointing each CLI at it: `ANTHROPIC_BASE_URL=URL` (Claude
//! Code); a Codex provider with `base_url = "URL/v1"`; `GOOGLE_GEMINI_BASE_URL=URL`
//! with `GEMINI_API_KEY` (Gemini CLI); `OPENAI_API_BASE=URL/v1` with
//! `--model openai/NAME` (Aider); an opencode provider with `"npm":
//! "@ai-sdk/openai-compatible"` and `"options": {"baseURL": "URL/v1"}`.
//!
//! Guarantees:
//! - Each model request (`/messages`, `/responses`, `/chat/completions`,
//!   `:generateContent`, `:streamGenerateContent`) consumes the next script
//!   step, in arrival order; `count_tokens` and other requests consume none.
//! - The script's token figures reach the client unchanged (see
//!   `anthropic.rs`, `openai.rs`, `chat.rs` and `gemini.rs` for the exact
//!   fields; the Chat Completions and Gemini APIs have no cache-write
//!   figure, so `cache_write` reaches only the Anthropic and Responses
//!   clients).
//! - Every request is recorded (method, path with query, headers with
//!   `authorization` / `x-api-key` redacted, body JSON, the step that
//!   answered it) *before* it is answered: [`MockServer::requests`],
//!   `GET /_mock/requests` (a JSON array), and an optional record file with
//!   one JSON object a line, appended and flushed as requests arrive.
//! - When the script runs out, every further model request is answered with
//!   HTTP 400 and an error saying the script is exhausted, and a line goes to
//!   stderr. 400 rather than 5xx because clients do not retry it with
//!   back-off: the run ends at once with the message (Claude Code 2.1.328
//!   does resend a 400 up to six times with fewer beta features, all within
//!   a second, then reports `API Error: 400 ...`).
//! - Only loopback addresses are bound; any other address is refused.
//! - Dropping the [`MockServer`] (or [`MockServer::shutdown`]) stops it and
//!   closes its connections.
//!
//! # Script format
//!
//! JSON: an array of steps, or `{"steps": [...]}`. A step is an object:
//!
//! | field | meaning |
//! |---|---|
//! | `text` | assistant text |
//! | `thinking` | reasoning before the answer (Anthropic `thinking` block, OpenAI `reasoning` item) |
//! | `tool` | one tool call `{"name": "Write", "input": {...}, "id": "optional"}` |
//! | `tools` | several tool calls in one answer, same shape |
//! | `shell` | run a command with the client's own shell tool: `"echo hi"` or `{"command": "...", "workdir": "..."}`; Claude Code gets a `Bash` call, Codex its `exec_command` (or `shell_command` / `shell` / `local_shell`, whichever the request offers), Gemini CLI `run_shell_command`, opencode `bash` |
//! | `usage` | `{"input", "output", "cache_read", "cache_write", "reasoning"}`; omitted figures are input 10, output 5, the rest 0 |
//! | `delay_ms` | wait this long before answering |
//! | `error` | answer with an HTTP error instead: `{"status": 429, "message": "...", "type": "optional", "retry_after": seconds}`; status 400..=599; nothing else but `delay_ms`/`repeat` may go with it |
//! | `repeat` | how many requests this step answers: a positive integer, or `"forever"` (the last step only) |
//! | `stop_reason` | Anthropic stop reason (default `tool_use` when the step calls a tool, else `end_turn`); the other APIs' finish reasons follow the calls (`tool_calls` / `stop`, Gemini `STOP`) |
//! | `model` | model name in the answer (default: the request's) |
//!
//! Content comes out in the order thinking, text, calls. Usage figures go
//! into the API's fields as they are, with no conversion between the APIs'
//! conventions (in OpenAI's and Gemini's, the input count includes the
//! cached tokens; in Anthropic's it does not). A client with no tools of its
//! own (Aider) edits through its text: the step's `text` carries the edit
//! block in the client's edit format.
//! A client that retries a failed request consumes a step per try (Claude
//! Code 2.1.328 retries 429 and 5xx with back-off; Codex 0.169 retries 5xx
//! but fails the turn on a 429).
//!
//! ```json
//! {"steps": [
//!   {"tool": {"name": "Write", "input": {"file_path": "/abs/hello.txt", "content": "hi\n"}},
//!    "usage": {"input": 120, "output": 30, "cache_read": 1000, "cache_write": 50}},
//!   {"error": {"status": 429, "message": "slow down", "retry_after": 1}},
//!   {"text": "Wrote hello.txt.", "delay_ms": 200, "usage": {"input": 160, "output": 8}},
//!   {"shell": "ls -la", "repeat": "forever"}
//! ]}
//! ```
//!
//! Endpoints besides the model APIs: `GET /_mock/requests` (the record) and
//! `GET /_mock/health` (`{"ok": true, "steps": N, "next_step": i,
//! "requests": n}`).

mod anthropic;
mod chat;
mod gemini;
mod openai;
mod script;
mod server;

pub use script::{
    Call, ErrorReply, Repeat, Script, ScriptError, Step, Usage, DEFAULT_INPUT_TOKENS, DEFAULT_OUTPUT_TOKENS,
};
pub use server::{read_record, serve_blocking, MockServer, RecordedRequest, ServerOptions};

/// What the renderers need to know about the request being answered.
pub(crate) struct RequestContext {
    /// The request's number, from 0, in arrival order (ids are made from it).
    pub seq: u64,
    /// The script step answering it.
    pub step: Option<usize>,
    /// The model the request named (echoed in the answer).
    pub model: String,
    /// The request's tools as `(type, name)`; type is `""` when absent.
    pub tools: Vec<(String, String)>,
}
