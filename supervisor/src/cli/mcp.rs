//! `corral mcp`: the tool surface of DESIGN.md ("The tool surface") as an
//! MCP server on stdio, so an agent CLI (Claude Code, Codex, ...) can start,
//! watch, steer and stop corral agents through tool calls.
//!
//! Each tool is a thin layer over one or two daemon requests
//! (`crate::wire::protocol`) made with `crate::cli::client::Client`, which starts the
//! repository's daemon when none runs, exactly as the CLI does. The
//! repository is the one containing the folder `corral mcp` runs in (or
//! `-C DIR`).
//!
//! The server acts at the caller's address: `/root` for a person, or, when
//! it runs inside a corral agent (`CORRAL_ADDRESS` set, as it is for an MCP
//! server that Claude Code started inside `/root/lead`), that agent's
//! address. Addresses given to the tools are absolute or relative to it,
//! spawns land under it, and messages are sent from it.
//!
//! Guarantees:
//! - A bad call (unknown role, missing or empty task, unknown address, an
//!   argument of the wrong JSON type, an unknown argument) is answered with
//!   a tool error (`isError: true`) whose text says what was wrong; the
//!   server keeps serving. Only an unknown tool name is a JSON-RPC error.
//! - Answers are JSON text, one object per call.
//! - Blocking work (the daemon socket, the output log) runs on tokio's
//!   blocking pool, never on the runtime's thread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::client::Client;
use crate::model::address::{validate_name, Address};
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::EventBody;
use crate::model::lifecycle::AgentRecord;
use crate::model::notify;
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response, SpawnRequest, Spawned};

/// Lines of output `view_background_agent` shows unless asked (as `corral view`).
const DEFAULT_VIEW_LINES: usize = 20;
/// The most lines it shows.
const MAX_VIEW_LINES: usize = 1000;
/// A result text longer than this is cut in lists (whole in a view, up to
/// `MAX_RESULT_CHARS`).
const LIST_RESULT_CHARS: usize = 1000;
const MAX_RESULT_CHARS: usize = 20_000;
/// A task longer than this is cut in lists.
const LIST_TASK_CHARS: usize = 200;
/// How long `wait_background_agent` waits when not told.
const DEFAULT_WAIT_SECS: f64 = 300.0;
/// How often `run_background_agent` tries the next counter when another
/// spawn took its name first.
const NAME_TRIES: u32 = 8;

/// The tools, in the order `tools/list` gives them.
pub const TOOLS: &[&str] = &[
    "run_background_agent",
    "spawn_agent",
    "list_background_agents",
    "list_agents",
    "view_background_agent",
    "wait_background_agent",
    "stop_background_agent",
    "send_message",
    "assign_task",
    "raise_budget",
];

/// Serves MCP on stdin and stdout until the client closes stdin.
pub fn run(start: PathBuf) -> Result<i32> {
    let server = CorralMcp::new(start, caller());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::other(format!("mcp: cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let service = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| Error::other(format!("mcp: the client did not initialize the session: {e}")))?;
        service.waiting().await.map_err(|e| Error::other(format!("mcp: {e}")))?;
        Ok(0)
    })
}

/// The caller's own address: `/root` for a person, or the agent's.
fn caller() -> Address {
    std::env::var("CORRAL_ADDRESS").ok().and_then(|a| Address::parse(&a).ok()).unwrap_or_else(Address::root)
}

/// The MCP server: where the repository is looked for, and whose address
/// the tools act at.
#[derive(Clone)]
pub struct CorralMcp {
    inner: Arc<Inner>,
}

struct Inner {
    start: PathBuf,
    caller: Address,
    tools: Vec<Tool>,
}

impl CorralMcp {
    pub fn new(start: PathBuf, caller: Address) -> CorralMcp {
        CorralMcp { inner: Arc::new(Inner { start, caller, tools: tool_definitions() }) }
    }
}

impl ServerHandler for CorralMcp {
    fn get_info(&self) -> ServerConfig {
        let caller = &self.inner.caller;
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("corral", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "corral runs coding agents in the background, each in its own git worktree with its own budget. \
                 You are {caller}: agents you start land under it, and addresses may be given relative to it \
                 (`reviewer-1`) or absolute (`/root/api/tests`). Start one with run_background_agent (a role from \
                 corral.toml) or spawn_agent; it returns at once. Check on it with list_background_agents and \
                 view_background_agent (its output, and its result once it ended)."
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<ListToolsResult, McpError> {
        let mut tools = self.inner.tools.clone();
        // The roles of corral.toml, read now: the file may change while we serve.
        let inner = self.inner.clone();
        let roles = tokio::task::spawn_blocking(move || inner.roles()).await.unwrap_or_default();
        if let Some(run) = tools.iter_mut().find(|t| t.name == "run_background_agent") {
            let description = run.description.clone().unwrap_or_default();
            run.description = Some(format!("{description} {roles}").into());
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        if !TOOLS.contains(&name.as_str()) {
            return Err(McpError::invalid_params(
                format!("unknown tool {name:?}; corral's tools are {}", TOOLS.join(", ")),
                None,
            ));
        }
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let inner = self.inner.clone();
        let outcome = tokio::task::spawn_blocking(move || inner.call(&name, arguments))
            .await
            .unwrap_or_else(|e| Err(format!("the tool failed: {e}")));
        Ok(match outcome {
            Ok(value) => {
                let text = serde_json::to_string_pretty(&value).expect("serializes");
                CallToolResult::success(vec![ContentBlock::text(text)])
            }
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        }
        .into())
    }
}

// ---- the tools' arguments --------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunArgs {
    role: String,
    task: String,
    #[serde(default)]
    expected_output: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnArgs {
    name: String,
    task: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    harness: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_cost: Option<f64>,
    #[serde(default)]
    on_exceeded: Option<crate::model::budget::OnExceeded>,
    #[serde(default)]
    notify: Option<notify::Notify>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RaiseArgs {
    address: String,
    #[serde(default)]
    add_tokens: Option<u64>,
    #[serde(default)]
    add_cost: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewArgs {
    address: String,
    #[serde(default)]
    lines: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    address: String,
    #[serde(default)]
    timeout_seconds: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopArgs {
    address: String,
    #[serde(default)]
    grace_seconds: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendArgs {
    to: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignArgs {
    address: String,
    task: String,
    #[serde(default)]
    queue: bool,
}

/// The tools' names, descriptions and input schemas.
fn tool_definitions() -> Vec<Tool> {
    let tool = |name: &'static str, description: &'static str, schema: Value| {
        let Value::Object(schema) = schema else { unreachable!("schemas are objects") };
        Tool::new(name, description, Arc::new(schema))
    };
    let string = |description: &str| json!({"type": "string", "description": description});
    let address = string(
        "The agent's address, absolute (/root/api/tests) or relative to you (tests), or the task id its spawn \
         returned (t-7).",
    );
    vec![
        tool(
            "run_background_agent",
            "Start a background agent with a role from corral.toml and a task. Returns at once with its address \
             (your address, then the role and a counter, e.g. reviewer-1) and task id; check on it with \
             list_background_agents and view_background_agent.",
            json!({
                "type": "object",
                "properties": {
                    "role": string("A role from corral.toml ([agents.NAME]): harness, model, budget, probes."),
                    "task": string("What the agent should do."),
                    "expected_output": string("What it should hand back when done; added to the task."),
                },
                "required": ["role", "task"],
                "additionalProperties": false,
            }),
        ),
        tool(
            "spawn_agent",
            "Start an agent under your address with an explicit name, and optionally a role, harness (claude, \
             codex, gemini, opencode, aider, generic), command, model and budget. Returns at once with its \
             address and task id.",
            json!({
                "type": "object",
                "properties": {
                    "name": string("Its name: letters, digits, _ and -; it lives at <your address>/<name>."),
                    "task": string("What the agent should do (empty: the role's task)."),
                    "role": string("A role from corral.toml ([agents.NAME])."),
                    "harness": string("The agent CLI: claude, codex, gemini, opencode, aider or generic."),
                    "command": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "For generic, the command and its arguments; else extra arguments for the CLI.",
                    },
                    "model": string("The model, passed to the agent CLI."),
                    "notify": {"type": "string", "enum": ["completion", "progress", "none"],
                               "description": "What it tells you: completion (when it ends and when its merge settles; the default), progress (also digests while it runs), or none."},
                    "max_tokens": {"type": "integer", "minimum": 1,
                                   "description": "Stop it (and its subtree) after this many tokens."},
                    "max_cost": {"type": "number", "exclusiveMinimum": 0,
                                 "description": "Stop it (and its subtree) after this many US dollars."},
                    "on_exceeded": {"type": "string", "enum": ["stop", "pause"],
                                    "description": "What a spent max_tokens or max_cost does: stop (the default) or pause it until raise_budget raises it."},
                },
                "required": ["name", "task"],
                "additionalProperties": false,
            }),
        ),
        tool(
            "list_background_agents",
            "The agents below you: address, state, merge state, tokens, cost, runtime, exit, and result text \
             once they ended.",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
        tool(
            "list_agents",
            "Every agent in the repository's tree (not only yours), with the same fields as \
             list_background_agents.",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
        tool(
            "view_background_agent",
            "One agent: its record, the last lines of its output, and once it ended, its exit and final result \
             text.",
            json!({
                "type": "object",
                "properties": {
                    "address": address,
                    "lines": {"type": "integer", "minimum": 0, "maximum": MAX_VIEW_LINES,
                              "description": format!("How many lines of output (default {DEFAULT_VIEW_LINES}).")},
                },
                "required": ["address"],
                "additionalProperties": false,
            }),
        ),
        tool(
            "wait_background_agent",
            "Block until an agent below you ends (and its merge settles), or until the timeout: returns how it \
             ended, its result, what it was asked to hand back, its spend and its merge, as the notice \
             corral sends its parent; or its state so far with timed_out true.",
            json!({
                "type": "object",
                "properties": {
                    "address": address,
                    "timeout_seconds": {"type": "number", "minimum": 0,
                                        "description": format!("Give up after this long (default {DEFAULT_WAIT_SECS}).")},
                },
                "required": ["address"],
                "additionalProperties": false,
            }),
        ),
        tool(
            "stop_background_agent",
            "Stop an agent and every agent below it: SIGTERM, a grace period, SIGKILL. Its worktree and \
             commits are kept.",
            json!({
                "type": "object",
                "properties": {
                    "address": address,
                    "grace_seconds": {"type": "number", "minimum": 0,
                                      "description": "Seconds between SIGTERM and SIGKILL (default 10)."},
                },
                "required": ["address"],
                "additionalProperties": false,
            }),
        ),
        tool(
            "send_message",
            "Queue a message from you for a running agent; delivered in order, never dropped.",
            json!({
                "type": "object",
                "properties": {
                    "to": string("The receiver's address (absolute or relative to you) or task id."),
                    "text": string("The message."),
                },
                "required": ["to", "text"],
                "additionalProperties": false,
            }),
        ),
        tool(
            "assign_task",
            "Give an idle agent its next task (never /root); with queue, an agent that is busy takes it after \
             its current one.",
            json!({
                "type": "object",
                "properties": {
                    "address": address,
                    "task": string("What the agent should do next."),
                    "queue": {"type": "boolean", "description": "Queue it if the agent is busy (default false)."},
                },
                "required": ["address", "task"],
                "additionalProperties": false,
            }),
        ),
        tool(
            "raise_budget",
            "Raise the token or cost budget of an agent below you; one paused on that budget runs on where \
             it stopped once its held call fits. Answers its new limits and whether it is still paused.",
            json!({
                "type": "object",
                "properties": {
                    "address": address,
                    "add_tokens": {"type": "integer", "minimum": 1, "description": "Tokens to add to its token budget."},
                    "add_cost": {"type": "number", "exclusiveMinimum": 0,
                                 "description": "US dollars to add to its cost budget."},
                },
                "required": ["address"],
                "additionalProperties": false,
            }),
        ),
    ]
}

/// Reads a tool's arguments; a wrong one is a message for the caller.
fn parse<T: DeserializeOwned>(tool: &str, arguments: Value) -> std::result::Result<T, String> {
    serde_json::from_value(arguments).map_err(|e| format!("bad arguments for {tool}: {e}"))
}

/// The tool-error text of a corral error.
fn message(err: Error) -> String {
    err.message
}

impl Inner {
    fn call(&self, tool: &str, arguments: Value) -> std::result::Result<Value, String> {
        match tool {
            "run_background_agent" => self.run_background_agent(parse(tool, arguments)?),
            "spawn_agent" => self.spawn_agent(parse(tool, arguments)?),
            "list_background_agents" => {
                parse::<NoArgs>(tool, arguments)?;
                self.list(Some(&self.caller)).map_err(message)
            }
            "list_agents" => {
                parse::<NoArgs>(tool, arguments)?;
                self.list(None).map_err(message)
            }
            "view_background_agent" => self.view(parse(tool, arguments)?),
            "wait_background_agent" => self.wait(parse(tool, arguments)?),
            "stop_background_agent" => self.stop(parse(tool, arguments)?),
            "send_message" => self.send(parse(tool, arguments)?),
            "assign_task" => self.assign(parse(tool, arguments)?),
            "raise_budget" => self.raise_budget(parse(tool, arguments)?),
            other => Err(format!("unknown tool {other:?}")),
        }
    }

    /// The roles corral.toml defines, as a sentence for a tool description.
    fn roles(&self) -> String {
        let config = match self.state().map(|state| crate::config::Config::load(&state.repo_root)) {
            Ok(Ok(config)) => config,
            Ok(Err(err)) => return format!("(corral.toml cannot be read: {err})"),
            Err(err) => return format!("({})", err.message),
        };
        if config.agents.is_empty() {
            return "No roles are defined yet: add [agents.NAME] tables to corral.toml.".into();
        }
        let roles: Vec<String> = config
            .agents
            .iter()
            .map(|(name, role)| match role.description.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
                Some(description) => format!("{name} ({})", cut(description, 200)),
                None => name.clone(),
            })
            .collect();
        format!("Roles: {}.", roles.join("; "))
    }

    fn state(&self) -> Result<StateDir> {
        StateDir::discover(&self.start)
    }

    fn connect(&self) -> Result<Client> {
        Client::connect(&self.state()?)
    }

    fn resolve(&self, text: &str) -> std::result::Result<Address, String> {
        Address::resolve(text, &self.caller).map_err(message)
    }

    /// The agent a tool names: by address (absolute or relative to the
    /// caller), or by the task id a spawn returned (`t-7`).
    fn target(&self, client: &mut Client, text: &str) -> std::result::Result<Address, String> {
        let address = Address::resolve(text, &self.caller);
        let (agents, _) = client.list(true, false, None).map_err(message)?;
        if let Ok(address) = &address {
            if agents.iter().any(|a| a.address == *address) {
                return Ok(address.clone());
            }
        }
        if let Some(agent) = agents.iter().find(|a| a.task_id == text) {
            return Ok(agent.address.clone());
        }
        match address {
            Ok(address) => {
                Err(format!("no agent at {address} and no task with id {text:?} (list_agents shows every agent)"))
            }
            Err(err) => Err(err.message),
        }
    }

    fn run_background_agent(&self, args: RunArgs) -> std::result::Result<Value, String> {
        let role = args.role.trim();
        if role.is_empty() {
            return Err("role is empty: name a role from corral.toml ([agents.NAME])".into());
        }
        let mut task = non_empty_task(&args.task)?;
        if let Some(expected) = args.expected_output.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            task.push_str(&format!("\n\nExpected output: {expected}"));
        }
        let stem = name_stem(role);
        let mut client = self.connect().map_err(message)?;
        let (agents, _) = client.list(true, false, None).map_err(message)?;
        // The next counter after every child of ours named `<stem>-N`, gc'd
        // ones included (their branches stay, so their names stay taken).
        let mut next = agents
            .iter()
            .filter(|a| a.parent == self.caller)
            .filter_map(|a| a.address.name().strip_prefix(&format!("{stem}-"))?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let mut tries = 0;
        loop {
            let request = SpawnRequest {
                fork_session: false,
                name: format!("{stem}-{next}"),
                parent: Some(self.caller.to_string()),
                task: task.clone(),
                role: Some(role.to_string()),
                settings: Default::default(),
                command: Vec::new(),
                grace_secs: None,
                base: None,
                env: crate::cli::client::environment(),
            };
            match client.request(&Request::Spawn(Box::new(request))) {
                Ok(Response::Spawned(spawned)) => return Ok(spawned_value(&spawned)),
                Ok(_) => return Err(unexpected()),
                // Another spawn took the name between our list and ours.
                Err(err) if err.kind == ErrorKind::Duplicate && tries < NAME_TRIES => {
                    tries += 1;
                    next += 1;
                }
                Err(err) => return Err(err.message),
            }
        }
    }

    fn spawn_agent(&self, args: SpawnArgs) -> std::result::Result<Value, String> {
        validate_name(&args.name).map_err(message)?;
        if args.task.trim().is_empty() && args.role.is_none() {
            return Err("task is empty: say what the agent should do (or give a role whose task it takes)".into());
        }
        let limits = crate::model::budget::Budget {
            tokens: args.max_tokens,
            cost: args.max_cost,
            on_exceeded: args.on_exceeded,
            ..Default::default()
        };
        limits.validate()?;
        let harness =
            args.harness.map(|name| name.parse::<corral_harness::Harness>()).transpose().map_err(|e| e.to_string())?;
        let settings = crate::config::AgentConfig {
            harness,
            model: args.model,
            budget: (!limits.is_empty()).then_some(limits),
            notify: args.notify,
            ..Default::default()
        };
        let request = SpawnRequest {
            fork_session: false,
            name: args.name,
            parent: Some(self.caller.to_string()),
            task: args.task,
            role: args.role,
            settings,
            command: args.command.unwrap_or_default(),
            grace_secs: None,
            base: None,
            env: crate::cli::client::environment(),
        };
        match self.connect().and_then(|mut c| c.request(&Request::Spawn(Box::new(request)))).map_err(message)? {
            Response::Spawned(spawned) => Ok(spawned_value(&spawned)),
            _ => Err(unexpected()),
        }
    }

    /// The agents below `below` (strictly), or every agent.
    fn list(&self, below: Option<&Address>) -> Result<Value> {
        let mut client = self.connect()?;
        let (agents, _) = client.list(false, false, None)?;
        let agents: Vec<AgentRecord> =
            agents.into_iter().filter(|a| below.is_none_or(|b| a.address.is_within(b) && a.address != *b)).collect();
        let results = if agents.iter().any(|a| a.result.is_some()) {
            result_texts(&self.state()?, below.filter(|b| !b.is_root()))?
        } else {
            BTreeMap::new()
        };
        let list: Vec<Value> = agents
            .iter()
            .map(|agent| {
                let mut value = summary(agent);
                value["task"] = json!(cut(&agent.task, LIST_TASK_CHARS));
                let text = results.get(&agent.address).cloned().flatten();
                if let Some(result) = result_value(agent, text.as_ref(), LIST_RESULT_CHARS) {
                    value["result"] = result;
                }
                notice_fields(&mut value, agent, text.as_deref());
                value
            })
            .collect();
        Ok(json!({ "caller": self.caller.to_string(), "count": list.len(), "agents": list }))
    }

    fn view(&self, args: ViewArgs) -> std::result::Result<Value, String> {
        let lines = args.lines.unwrap_or(DEFAULT_VIEW_LINES).min(MAX_VIEW_LINES);
        let mut client = self.connect().map_err(message)?;
        let address = self.target(&mut client, &args.address)?;
        let Response::Info { agent, log, .. } =
            client.request(&Request::Info { address: address.to_string() }).map_err(message)?
        else {
            return Err(unexpected());
        };
        let mut value = summary(&agent);
        value["task"] = json!(agent.task);
        value["branch"] = json!(agent.branch);
        value["worktree"] = json!(agent.worktree);
        value["pid"] = json!(agent.pid);
        value["ended"] = json!(agent.state.is_terminal());
        if let Some(merge) = &agent.merge_state {
            value["merge"] = json!(merge);
        }
        let mut text = None;
        if agent.result.is_some() {
            let state = self.state().map_err(message)?;
            let mut texts = result_texts(&state, Some(&agent.address)).map_err(message)?;
            text = texts.remove(&agent.address).flatten();
            if let Some(result) = result_value(&agent, text.as_ref(), MAX_RESULT_CHARS) {
                value["result"] = result;
            }
        }
        let text = text.or_else(|| {
            agent
                .state
                .is_terminal()
                .then(|| notify::result_text(&agent, || tail_lines(&log, notify::RESULT_TAIL_LINES)))?
        });
        let output = tail_lines(&log, lines);
        notice_fields(&mut value, &agent, text.as_deref());
        value["output"] = json!(output);
        Ok(value)
    }

    fn wait(&self, args: WaitArgs) -> std::result::Result<Value, String> {
        let timeout = args.timeout_seconds.unwrap_or(DEFAULT_WAIT_SECS);
        crate::model::duration::from_secs(timeout).map_err(|e| format!("timeout_seconds: {e}"))?;
        let mut client = self.connect().map_err(message)?;
        let address = self.target(&mut client, &args.address)?;
        let request = Request::Wait { addresses: vec![address.to_string()], timeout_secs: Some(timeout) };
        let Response::Waited { agents, timed_out } = client.request(&request).map_err(message)? else {
            return Err(unexpected());
        };
        let agent = agents.into_iter().next().ok_or_else(unexpected)?;
        let mut value = summary(&agent);
        value["timed_out"] = json!(timed_out);
        value["ended"] = json!(agent.state.is_terminal());
        if agent.state.is_terminal() {
            let (_, log, _) = self.info(&address)?;
            let result = notify::result_text(&agent, || tail_lines(&log, notify::RESULT_TAIL_LINES));
            notice_fields(&mut value, &agent, result.as_deref());
            if let Some(result) = result {
                value["result"] = json!(result);
            }
        } else {
            notice_fields(&mut value, &agent, None);
        }
        Ok(value)
    }

    /// An agent's record, log and monitor socket.
    fn info(&self, address: &Address) -> std::result::Result<(AgentRecord, PathBuf, PathBuf), String> {
        let mut client = self.connect().map_err(message)?;
        match client.request(&Request::Info { address: address.to_string() }).map_err(message)? {
            Response::Info { agent, log, monitor_socket } => Ok((*agent, log, monitor_socket)),
            _ => Err(unexpected()),
        }
    }

    fn stop(&self, args: StopArgs) -> std::result::Result<Value, String> {
        // Unset: each agent's own grace (as `corral stop` without --grace).
        let grace_secs = args.grace_seconds;
        if let Some(grace) = grace_secs {
            crate::model::duration::from_secs(grace).map_err(|e| format!("grace_seconds: {e}"))?;
        }
        let mut client = self.connect().map_err(message)?;
        let address = self.target(&mut client, &args.address)?;
        let request = Request::Stop { address: address.to_string(), grace_secs };
        match client.request(&request).map_err(message)? {
            Response::Stopped { agents } => Ok(json!({ "stopped": agents.iter().map(summary).collect::<Vec<_>>() })),
            _ => Err(unexpected()),
        }
    }

    /// Raises the budget of an agent below the caller (never its own or
    /// an ancestor's: an agent cannot lift the limit it runs under).
    fn raise_budget(&self, args: RaiseArgs) -> std::result::Result<Value, String> {
        if args.add_tokens.is_none() && args.add_cost.is_none() {
            return Err("say what to add: add_tokens or add_cost".into());
        }
        if args.add_tokens == Some(0) || args.add_cost.is_some_and(|c| !c.is_finite() || c <= 0.0) {
            return Err("add_tokens and add_cost must be greater than 0".into());
        }
        let mut client = self.connect().map_err(message)?;
        let address = self.target(&mut client, &args.address)?;
        if !self.caller.is_root() && (address == self.caller || !address.is_within(&self.caller)) {
            return Err(format!("{} may raise only the budgets of agents below it, and {address} is not", self.caller));
        }
        let request = Request::RaiseBudget {
            address: address.to_string(),
            add_tokens: args.add_tokens,
            add_cost: args.add_cost,
            by: self.caller.to_string(),
        };
        match client.request(&request).map_err(message)? {
            Response::Agent { agent } => Ok(json!({
                "address": agent.address.to_string(),
                "state": agent.state.as_str(),
                "tokens_limit": agent.budget.tokens,
                "cost_limit": agent.budget.cost,
                "paused": agent.paused.is_some(),
            })),
            _ => Err(unexpected()),
        }
    }

    fn send(&self, args: SendArgs) -> std::result::Result<Value, String> {
        if args.text.is_empty() {
            return Err("text is empty: there is no message to send".into());
        }
        let mut client = self.connect().map_err(message)?;
        let to = self.target(&mut client, &args.to)?;
        let request = Request::Send { to: to.to_string(), from: self.caller.to_string(), text: args.text, key: None };
        match client.request(&request).map_err(message)? {
            Response::Sent { message_id } => {
                Ok(json!({ "message_id": message_id, "to": to.to_string(), "from": self.caller.to_string() }))
            }
            _ => Err(unexpected()),
        }
    }

    fn assign(&self, args: AssignArgs) -> std::result::Result<Value, String> {
        if self.resolve(&args.address).is_ok_and(|a| a.is_root()) {
            return Err("/root is the person or script at the top of the tree, not an agent: it takes no tasks".into());
        }
        let task = non_empty_task(&args.task)?;
        let mut client = self.connect().map_err(message)?;
        let address = self.target(&mut client, &args.address)?;
        let request = Request::Assign { address: address.to_string(), task, queue: args.queue };
        match client.request(&request).map_err(message)? {
            Response::Agent { agent } => Ok(summary(&agent)),
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> String {
    "the daemon gave an unexpected answer".into()
}

fn non_empty_task(task: &str) -> std::result::Result<String, String> {
    if task.trim().is_empty() {
        return Err("task is empty: say what the agent should do".into());
    }
    Ok(task.to_string())
}

/// A role as the start of an agent name: letters, digits, `_` and `-`.
fn name_stem(role: &str) -> String {
    let stem: String =
        role.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    let stem = stem.trim_start_matches('-');
    let stem: String = stem.chars().take(crate::model::address::MAX_NAME_LEN - 8).collect();
    if stem.is_empty() {
        "agent".into()
    } else {
        stem
    }
}

fn spawned_value(spawned: &Spawned) -> Value {
    json!({
        "address": spawned.address,
        "task_id": spawned.task_id,
        "branch": spawned.branch,
        "worktree": spawned.worktree,
        // pid 0: it waits for a slot (max_threads agents run already).
        "state": if spawned.pid == 0 { "pending" } else { "running" },
    })
}

/// The fields every listing shows of an agent.
fn summary(agent: &AgentRecord) -> Value {
    let u = agent.usage;
    json!({
        "address": agent.address.to_string(),
        "task_id": agent.task_id,
        "state": agent.state.as_str(),
        "ready": agent.ready,
        "merge_state": agent.merge_state.as_ref().map(|m| m.as_str()),
        "harness": agent.harness,
        "tokens": {
            "input": u.input, "output": u.output, "cache_read": u.cache_read, "cache_write": u.cache_write,
            "total": u.total(),
        },
        "cost_usd": agent.cost_usd,
        "runtime_secs": agent.runtime_secs(Utc::now()).map(|s| (s * 10.0).round() / 10.0),
        "exit_code": agent.exit_code,
        "signal": agent.signal,
        "reason": agent.reason,
        "restarts": agent.restarts,
    })
}

/// The fields of the notice its parent gets (see `model::notify`), so an
/// orchestrator that polls learns what one that listens hears: what it was
/// asked to hand back, and once it ended, the notice itself and its
/// merge's.
fn notice_fields(value: &mut Value, agent: &AgentRecord, result: Option<&str>) {
    value["expected_output"] = json!(notify::expected_output(&agent.task));
    if agent.state.is_terminal() {
        value["notice"] = json!(notify::completion(agent, result, agent.runtime_secs(Utc::now())));
    }
    if let Some(merge) = notify::merge(agent) {
        value["merge_notice"] = json!(merge);
    }
}

/// How the agent CLI said its last turn went, with its text when known.
fn result_value(agent: &AgentRecord, text: Option<&String>, max_chars: usize) -> Option<Value> {
    let result = agent.result.as_ref()?;
    let text = text.map(|t| cut(t, max_chars));
    Some(json!({ "success": result.success, "reason": result.reason, "text": text }))
}

/// The text of each agent's last `result` event, for the agents at or
/// below `prefix` (every agent when None).
fn result_texts(state: &StateDir, prefix: Option<&Address>) -> Result<BTreeMap<Address, Option<String>>> {
    let mut client = Client::connect(state)?;
    client.send(&Request::Events { since: 0, follow: false, agent: prefix.map(Address::to_string) })?;
    let mut texts = BTreeMap::new();
    loop {
        match client.receive()? {
            Some(Response::Event { event }) => {
                if let (Some(agent), EventBody::Result { text, .. }) = (&event.agent, &event.body) {
                    texts.insert(agent.clone(), text.clone());
                }
            }
            Some(Response::End) | None => return Ok(texts),
            Some(_) => return Err(Error::other(unexpected())),
        }
    }
}

fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}… ({} more characters)", &text[..at], text[at..].chars().count()),
        None => text.to_string(),
    }
}

use crate::sys::output::tail_lines;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_definition_in_order() {
        let names: Vec<String> = tool_definitions().iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, TOOLS);
    }

    #[test]
    fn role_names_become_valid_agent_names() {
        assert_eq!(name_stem("reviewer"), "reviewer");
        assert_eq!(name_stem("security.reviewer"), "security-reviewer");
        assert_eq!(name_stem("--x"), "x");
        assert_eq!(name_stem("..."), "agent");
        validate_name(&format!("{}-12345", name_stem(&"r".repeat(200)))).unwrap();
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let err = parse::<RunArgs>("run_background_agent", json!({"role": "r"})).err().unwrap();
        assert!(err.contains("missing field `task`"), "{err}");
        let err = parse::<ViewArgs>("view_background_agent", json!({"address": 5})).err().unwrap();
        assert!(err.contains("invalid type"), "{err}");
        let err = parse::<NoArgs>("list_agents", json!({"x": 1})).err().unwrap();
        assert!(err.contains("unknown field `x`"), "{err}");
    }

    #[test]
    fn cut_counts_characters() {
        assert_eq!(cut("héllo", 10), "héllo");
        assert_eq!(cut("héllo", 2), "hé… (3 more characters)");
    }
}
