//! The mock model server's script: parsing and checking the JSON file that
//! says what the server answers, one step per model request.
//!
//! Guarantees: a [`Script`] that parsed is complete and consistent (every
//! step answers with something, figures are non-negative integers, an error
//! step carries nothing else). A script that does not parse gets a
//! [`ScriptError`] naming the file, the step index (0-based, as in the JSON
//! array) and the field, e.g. `steps.json: step 2: field "usage.input":
//! expected a non-negative integer, found "ten"`. Unknown fields are errors,
//! so a misspelt key never goes unnoticed.
//!
//! The format itself is documented in the parent module (`mock_llm`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// A checked script: the steps the server answers with, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    steps: Vec<Step>,
    source: Option<PathBuf>,
}

/// One scripted answer to one model request (or to several, see [`Repeat`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Reasoning shown before the answer: an Anthropic `thinking` block, an
    /// OpenAI `reasoning` item with a summary.
    pub thinking: Option<String>,
    /// Assistant text.
    pub text: Option<String>,
    /// Tool calls, after the text, in this order.
    pub calls: Vec<Call>,
    /// The token figures reported for this answer.
    pub usage: Usage,
    /// How long to wait before answering (the error answer too).
    pub delay: Duration,
    /// Answer with an HTTP error instead of a message.
    pub error: Option<ErrorReply>,
    /// How many requests this step answers.
    pub repeat: Repeat,
    /// Anthropic `stop_reason` override (default: `tool_use` when the step
    /// has calls, else `end_turn`).
    pub stop_reason: Option<String>,
    /// Model name put in the answer (default: the model the request named).
    pub model: Option<String>,
}

/// A tool call made by the scripted model.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// A named tool with a JSON input, passed through as it is:
    /// Anthropic `tool_use` block, OpenAI `function_call` item (or
    /// `custom_tool_call` when the request declares the tool as custom and
    /// the input is a string).
    Tool {
        /// Call id; generated from the request number when absent.
        id: Option<String>,
        name: String,
        input: Value,
    },
    /// Run a shell command with whatever shell tool the client offers:
    /// Claude Code `Bash`, Codex `exec_command` / `shell_command` / `shell` /
    /// `local_shell`, chosen from the request's tool list.
    Shell { command: String, workdir: Option<String> },
}

/// Token figures of one answer, put into the API's usage fields as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            input: DEFAULT_INPUT_TOKENS,
            output: DEFAULT_OUTPUT_TOKENS,
            cache_read: 0,
            cache_write: 0,
            reasoning: 0,
        }
    }
}

/// `usage.input` when the script leaves it out.
pub const DEFAULT_INPUT_TOKENS: u64 = 10;
/// `usage.output` when the script leaves it out.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 5;

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    /// 400..=599.
    pub status: u16,
    pub message: String,
    /// The API's error type; derived from the status when absent
    /// (`rate_limit_error` / `rate_limit_exceeded` for 429, and so on).
    pub kind: Option<String>,
    /// Sent as a `retry-after` header (seconds).
    pub retry_after: Option<u64>,
}

/// How many requests one step answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    Times(u64),
    /// Every request from this one on: the script never runs out.
    Forever,
}

/// Why a script was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{}: cannot read the script: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: not valid JSON: {source}", Origin(.file))]
    Json { file: Option<PathBuf>, source: serde_json::Error },
    #[error("{}: {message}", Origin(.file))]
    Shape { file: Option<PathBuf>, message: String },
    #[error("{}: step {step}{}: {message}", Origin(.file), FieldPart(.field))]
    Step { file: Option<PathBuf>, step: usize, field: String, message: String },
}

/// Names where a script came from in error messages.
struct Origin<'a>(&'a Option<PathBuf>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("script"),
        }
    }
}

/// `: field "usage.input"`, or nothing for an error about the whole step.
struct FieldPart<'a>(&'a str);

impl fmt::Display for FieldPart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, ": field \"{}\"", self.0)
        }
    }
}

impl Script {
    /// Parses and checks a script given as JSON text.
    pub fn from_json(text: &str) -> Result<Script, ScriptError> {
        parse(text, None)
    }

    /// Reads, parses and checks a script file; errors name the file.
    pub fn load(path: &Path) -> Result<Script, ScriptError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ScriptError::Read { path: path.to_path_buf(), source })?;
        parse(&text, Some(path.to_path_buf()))
    }

    /// Builds a script from steps made in code.
    pub fn from_steps(steps: Vec<Step>) -> Script {
        Script { steps, source: None }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The file the script was loaded from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }
}

impl Step {
    /// A step answering with text, default usage, once.
    pub fn text(text: impl Into<String>) -> Step {
        Step {
            thinking: None,
            text: Some(text.into()),
            calls: Vec::new(),
            usage: Usage::default(),
            delay: Duration::ZERO,
            error: None,
            repeat: Repeat::Times(1),
            stop_reason: None,
            model: None,
        }
    }
}

const STEP_FIELDS: &[&str] =
    &["text", "thinking", "tool", "tools", "shell", "usage", "delay_ms", "error", "repeat", "stop_reason", "model"];

fn parse(text: &str, file: Option<PathBuf>) -> Result<Script, ScriptError> {
    let root: Value = serde_json::from_str(text).map_err(|source| ScriptError::Json { file: file.clone(), source })?;
    let shape = |message: String| ScriptError::Shape { file: file.clone(), message };
    let steps = match &root {
        Value::Array(steps) => steps,
        Value::Object(map) => {
            if let Some(key) = map.keys().find(|k| k.as_str() != "steps") {
                return Err(shape(format!("unknown top-level field \"{key}\" (expected only \"steps\")")));
            }
            match map.get("steps") {
                Some(Value::Array(steps)) => steps,
                Some(other) => return Err(shape(format!("\"steps\" must be an array, found {}", describe(other)))),
                None => return Err(shape("missing \"steps\" array".to_string())),
            }
        }
        other => {
            return Err(shape(format!(
                "a script is an array of steps or {{\"steps\": [...]}}, found {}",
                describe(other)
            )))
        }
    };
    if steps.is_empty() {
        return Err(shape("the script has no steps".to_string()));
    }
    let mut parsed = Vec::with_capacity(steps.len());
    for (index, step) in steps.iter().enumerate() {
        let fail = |field: &str, message: String| ScriptError::Step {
            file: file.clone(),
            step: index,
            field: field.to_string(),
            message,
        };
        parsed.push(parse_step(step, &fail)?);
    }
    // A step after a `repeat: "forever"` step could never be reached.
    if let Some(pos) = parsed.iter().position(|s| s.repeat == Repeat::Forever) {
        if pos + 1 < parsed.len() {
            return Err(ScriptError::Step {
                file,
                step: pos,
                field: "repeat".to_string(),
                message: format!(
                    "\"forever\" must be the last step; steps {}..{} could never run",
                    pos + 1,
                    parsed.len() - 1
                ),
            });
        }
    }
    Ok(Script { steps: parsed, source: file })
}

type Fail<'a> = dyn Fn(&str, String) -> ScriptError + 'a;

fn parse_step(value: &Value, fail: &Fail<'_>) -> Result<Step, ScriptError> {
    let Value::Object(map) = value else {
        return Err(fail("", format!("a step must be an object, found {}", describe(value))));
    };
    if let Some(key) = map.keys().find(|k| !STEP_FIELDS.contains(&k.as_str())) {
        return Err(fail(key, format!("unknown field (known: {})", STEP_FIELDS.join(", "))));
    }
    let mut step = Step {
        thinking: opt_string(map, "thinking", fail)?,
        text: opt_string(map, "text", fail)?,
        calls: Vec::new(),
        usage: Usage::default(),
        delay: Duration::ZERO,
        error: None,
        repeat: Repeat::Times(1),
        stop_reason: opt_string(map, "stop_reason", fail)?,
        model: opt_string(map, "model", fail)?,
    };
    if let Some(tool) = map.get("tool") {
        step.calls.push(parse_tool(tool, "tool", fail)?);
    }
    if let Some(tools) = map.get("tools") {
        let Value::Array(tools) = tools else {
            return Err(fail("tools", format!("expected an array of tool calls, found {}", describe(tools))));
        };
        for (i, tool) in tools.iter().enumerate() {
            step.calls.push(parse_tool(tool, &format!("tools[{i}]"), fail)?);
        }
    }
    if let Some(shell) = map.get("shell") {
        step.calls.push(parse_shell(shell, fail)?);
    }
    if let Some(usage) = map.get("usage") {
        step.usage = parse_usage(usage, fail)?;
    }
    if let Some(delay) = map.get("delay_ms") {
        step.delay = Duration::from_millis(uint(delay, "delay_ms", fail)?);
    }
    if let Some(repeat) = map.get("repeat") {
        step.repeat = match repeat {
            Value::String(s) if s == "forever" => Repeat::Forever,
            Value::Number(_) => match uint(repeat, "repeat", fail)? {
                0 => return Err(fail("repeat", "must be at least 1".to_string())),
                n => Repeat::Times(n),
            },
            other => {
                return Err(fail(
                    "repeat",
                    format!("expected a positive integer or \"forever\", found {}", describe(other)),
                ))
            }
        };
    }
    if let Some(error) = map.get("error") {
        step.error = Some(parse_error(error, fail)?);
        for field in ["text", "thinking", "tool", "tools", "shell", "usage", "stop_reason", "model"] {
            if map.contains_key(field) {
                return Err(fail(
                    field,
                    "an error step answers with the error only; move this to another step".to_string(),
                ));
            }
        }
    } else if step.text.is_none() && step.thinking.is_none() && step.calls.is_empty() {
        return Err(fail(
            "",
            "the step answers with nothing: give it \"text\", \"thinking\", \"tool\", \"tools\", \"shell\" or \"error\"".to_string(),
        ));
    }
    Ok(step)
}

fn parse_tool(value: &Value, field: &str, fail: &Fail<'_>) -> Result<Call, ScriptError> {
    let Value::Object(map) = value else {
        return Err(fail(field, format!("expected {{\"name\": ..., \"input\": {{...}}}}, found {}", describe(value))));
    };
    if let Some(key) = map.keys().find(|k| !["name", "input", "id"].contains(&k.as_str())) {
        return Err(fail(&format!("{field}.{key}"), "unknown field (known: name, input, id)".to_string()));
    }
    let name = match map.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(other) => {
            return Err(fail(
                &format!("{field}.name"),
                format!("expected a non-empty string, found {}", describe(other)),
            ))
        }
        None => return Err(fail(&format!("{field}.name"), "missing".to_string())),
    };
    let input = match map.get("input") {
        None => Value::Object(Map::new()),
        Some(input @ (Value::Object(_) | Value::String(_))) => input.clone(),
        Some(other) => {
            return Err(fail(
                &format!("{field}.input"),
                format!("expected an object (or a string for a custom tool), found {}", describe(other)),
            ))
        }
    };
    let id = opt_string(map, "id", &|f, m| fail(&format!("{field}.{f}"), m))?;
    Ok(Call::Tool { id, name, input })
}

fn parse_shell(value: &Value, fail: &Fail<'_>) -> Result<Call, ScriptError> {
    match value {
        Value::String(command) if !command.is_empty() => Ok(Call::Shell { command: command.clone(), workdir: None }),
        Value::Object(map) => {
            if let Some(key) = map.keys().find(|k| !["command", "workdir"].contains(&k.as_str())) {
                return Err(fail(&format!("shell.{key}"), "unknown field (known: command, workdir)".to_string()));
            }
            let command = match map.get("command") {
                Some(Value::String(c)) if !c.is_empty() => c.clone(),
                Some(other) => {
                    return Err(fail(
                        "shell.command",
                        format!("expected a non-empty string, found {}", describe(other)),
                    ))
                }
                None => return Err(fail("shell.command", "missing".to_string())),
            };
            let workdir = opt_string(map, "workdir", &|f, m| fail(&format!("shell.{f}"), m))?;
            Ok(Call::Shell { command, workdir })
        }
        other => Err(fail(
            "shell",
            format!("expected a command string or {{\"command\": ..., \"workdir\": ...}}, found {}", describe(other)),
        )),
    }
}

fn parse_usage(value: &Value, fail: &Fail<'_>) -> Result<Usage, ScriptError> {
    let Value::Object(map) = value else {
        return Err(fail("usage", format!("expected an object, found {}", describe(value))));
    };
    const FIELDS: &[&str] = &["input", "output", "cache_read", "cache_write", "reasoning"];
    if let Some(key) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(fail(&format!("usage.{key}"), format!("unknown field (known: {})", FIELDS.join(", "))));
    }
    let get = |key: &str, default: u64| -> Result<u64, ScriptError> {
        match map.get(key) {
            Some(v) => uint(v, &format!("usage.{key}"), fail),
            None => Ok(default),
        }
    };
    Ok(Usage {
        input: get("input", DEFAULT_INPUT_TOKENS)?,
        output: get("output", DEFAULT_OUTPUT_TOKENS)?,
        cache_read: get("cache_read", 0)?,
        cache_write: get("cache_write", 0)?,
        reasoning: get("reasoning", 0)?,
    })
}

fn parse_error(value: &Value, fail: &Fail<'_>) -> Result<ErrorReply, ScriptError> {
    let Value::Object(map) = value else {
        return Err(fail(
            "error",
            format!("expected {{\"status\": 429, \"message\": ...}}, found {}", describe(value)),
        ));
    };
    const FIELDS: &[&str] = &["status", "message", "type", "retry_after"];
    if let Some(key) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(fail(&format!("error.{key}"), format!("unknown field (known: {})", FIELDS.join(", "))));
    }
    let status = match map.get("status") {
        Some(v) => uint(v, "error.status", fail)?,
        None => return Err(fail("error.status", "missing".to_string())),
    };
    if !(400..=599).contains(&status) {
        return Err(fail("error.status", format!("expected an HTTP error status 400..=599, found {status}")));
    }
    let status = status as u16;
    let message = opt_string(map, "message", &|f, m| fail(&format!("error.{f}"), m))?
        .unwrap_or_else(|| format!("mock-llm: scripted error {status}"));
    let kind = opt_string(map, "type", &|f, m| fail(&format!("error.{f}"), m))?;
    let retry_after = match map.get("retry_after") {
        Some(v) => Some(uint(v, "error.retry_after", fail)?),
        None => None,
    };
    Ok(ErrorReply { status, message, kind, retry_after })
}

fn opt_string(map: &Map<String, Value>, key: &str, fail: &Fail<'_>) -> Result<Option<String>, ScriptError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(fail(key, format!("expected a string, found {}", describe(other)))),
    }
}

fn uint(value: &Value, field: &str, fail: &Fail<'_>) -> Result<u64, ScriptError> {
    value.as_u64().ok_or_else(|| fail(field, format!("expected a non-negative integer, found {}", describe(value))))
}

/// A short description of a JSON value for error messages.
fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(37).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_error(text: &str) -> (usize, String, String) {
        match Script::from_json(text) {
            Err(ScriptError::Step { step, field, message, .. }) => (step, field, message),
            other => panic!("expected a step error, got {other:?}"),
        }
    }

    #[test]
    fn the_module_doc_example_parses() {
        let script = Script::from_json(
            r#"{"steps": [
              {"tool": {"name": "Write", "input": {"file_path": "/abs/hello.txt", "content": "hi\n"}},
               "usage": {"input": 120, "output": 30, "cache_read": 1000, "cache_write": 50}},
              {"error": {"status": 429, "message": "slow down", "retry_after": 1}},
              {"text": "Wrote hello.txt.", "delay_ms": 200, "usage": {"input": 160, "output": 8}},
              {"shell": "ls -la", "repeat": "forever"}
            ]}"#,
        )
        .unwrap();
        let steps = script.steps();
        assert_eq!(steps.len(), 4);
        assert_eq!(
            steps[0].calls,
            vec![Call::Tool {
                id: None,
                name: "Write".into(),
                input: serde_json::json!({"file_path": "/abs/hello.txt", "content": "hi\n"}),
            }]
        );
        assert_eq!(steps[0].usage, Usage { input: 120, output: 30, cache_read: 1000, cache_write: 50, reasoning: 0 });
        let error = steps[1].error.as_ref().unwrap();
        assert_eq!((error.status, error.message.as_str(), error.retry_after), (429, "slow down", Some(1)));
        assert_eq!(steps[2].delay, Duration::from_millis(200));
        assert_eq!(steps[2].text.as_deref(), Some("Wrote hello.txt."));
        assert_eq!(steps[3].calls, vec![Call::Shell { command: "ls -la".into(), workdir: None }]);
        assert_eq!(steps[3].repeat, Repeat::Forever);
    }

    #[test]
    fn a_bare_array_is_a_script_and_usage_has_defaults() {
        let script = Script::from_json(r#"[{"text": "hi"}, {"text": "x", "usage": {"output": 1}}]"#).unwrap();
        assert_eq!(script.steps()[0].usage, Usage::default());
        assert_eq!(script.steps()[0].usage.input, DEFAULT_INPUT_TOKENS);
        assert_eq!(script.steps()[1].usage, Usage { input: DEFAULT_INPUT_TOKENS, output: 1, ..Usage::default() });
        assert_eq!(script.steps()[0].repeat, Repeat::Times(1));
    }

    #[test]
    fn an_unknown_step_field_names_the_step_and_the_field() {
        let (step, field, message) = step_error(r#"[{"text": "a"}, {"txt": "typo"}]"#);
        assert_eq!((step, field.as_str()), (1, "txt"));
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn a_bad_usage_figure_names_the_nested_field() {
        let (step, field, message) =
            step_error(r#"[{"text": "a"}, {"text": "b"}, {"text": "c", "usage": {"input": "ten"}}]"#);
        assert_eq!((step, field.as_str()), (2, "usage.input"));
        assert!(message.contains("non-negative integer"), "{message}");
        let (_, field, _) = step_error(r#"[{"text": "c", "usage": {"output": -1}}]"#);
        assert_eq!(field, "usage.output");
        let (_, field, _) = step_error(r#"[{"text": "c", "usage": {"cache_reads": 1}}]"#);
        assert_eq!(field, "usage.cache_reads");
    }

    #[test]
    fn bad_tool_shell_and_error_fields_are_named() {
        assert_eq!(step_error(r#"[{"tool": {"input": {}}}]"#).1, "tool.name");
        assert_eq!(step_error(r#"[{"tool": {"name": "W", "input": [1]}}]"#).1, "tool.input");
        assert_eq!(step_error(r#"[{"tools": [{"name": "A"}, {"name": ""}]}]"#).1, "tools[1].name");
        assert_eq!(step_error(r#"[{"shell": {"cwd": "/x"}}]"#).1, "shell.cwd");
        assert_eq!(step_error(r#"[{"shell": 3}]"#).1, "shell");
        assert_eq!(step_error(r#"[{"error": {"message": "x"}}]"#).1, "error.status");
        let (_, field, message) = step_error(r#"[{"error": {"status": 200}}]"#);
        assert_eq!(field, "error.status");
        assert!(message.contains("400..=599"), "{message}");
        assert_eq!(step_error(r#"[{"error": {"status": 500}, "text": "both"}]"#).1, "text");
        assert_eq!(step_error(r#"[{"text": "a", "delay_ms": 1.5}]"#).1, "delay_ms");
    }

    #[test]
    fn repeat_must_be_positive_and_forever_must_be_last() {
        assert_eq!(step_error(r#"[{"text": "a", "repeat": 0}]"#).1, "repeat");
        assert_eq!(step_error(r#"[{"text": "a", "repeat": "always"}]"#).1, "repeat");
        let (step, field, message) = step_error(r#"[{"text": "a", "repeat": "forever"}, {"text": "never"}]"#);
        assert_eq!((step, field.as_str()), (0, "repeat"));
        assert!(message.contains("last step"), "{message}");
        let script = Script::from_json(r#"[{"text": "a", "repeat": 3}]"#).unwrap();
        assert_eq!(script.steps()[0].repeat, Repeat::Times(3));
    }

    #[test]
    fn a_step_that_answers_nothing_is_refused() {
        let (step, field, message) = step_error(r#"[{"usage": {"input": 1}}]"#);
        assert_eq!((step, field.as_str()), (0, ""));
        assert!(message.contains("answers with nothing"), "{message}");
        let error = Script::from_json(r#"[{"usage": {"input": 1}}]"#).unwrap_err();
        assert!(error.to_string().starts_with("script: step 0: the step answers"), "{error}");
    }

    #[test]
    fn shape_errors_say_what_was_expected() {
        for (text, wanted) in [
            ("[]", "no steps"),
            ("{}", "missing \"steps\""),
            (r#"{"steps": 1}"#, "must be an array"),
            (r#"{"steps": [], "extra": 1}"#, "unknown top-level field \"extra\""),
            ("3", "array of steps"),
        ] {
            let error = Script::from_json(text).unwrap_err().to_string();
            assert!(error.contains(wanted), "{text}: {error}");
        }
        let error = Script::from_json("[{").unwrap_err();
        assert!(matches!(error, ScriptError::Json { .. }), "{error}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad-script.json");
        std::fs::write(&path, r#"[{"text": "ok"}, {"text": 7}]"#).unwrap();
        let error = Script::load(&path).unwrap_err().to_string();
        assert!(error.starts_with(&format!("{}: step 1: field \"text\"", path.display())), "{error}");
        let missing = dir.path().join("missing.json");
        let error = Script::load(&missing).unwrap_err().to_string();
        assert!(error.contains("missing.json"), "{error}");
        std::fs::write(&path, r#"[{"text": "ok"}]"#).unwrap();
        assert_eq!(Script::load(&path).unwrap().source(), Some(path.as_path()));
    }
}
