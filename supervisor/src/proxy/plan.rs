//! How an agent is put behind its proxy, decided before it starts: which
//! upstreams its calls go to, which real keys the proxy holds, what the
//! agent gets in their place, and how its CLI is pointed at the proxy.
//!
//! The upstream of each provider is the base URL the spawning environment
//! set (`ANTHROPIC_BASE_URL`, `OPENAI_BASE_URL`, `GOOGLE_GEMINI_BASE_URL`,
//! or, for Codex, the `base_url` of the provider its `-c` arguments pick),
//! else the provider's own endpoint. The keys (`ANTHROPIC_API_KEY`,
//! `ANTHROPIC_AUTH_TOKEN`, `OPENAI_API_KEY`, `GEMINI_API_KEY`,
//! `GOOGLE_API_KEY`, Codex's provider `env_key`) leave the agent's
//! environment, and so does any other variable holding the same value;
//! the agent gets its own random token under the names its CLI reads.
//!
//! - claude: `ANTHROPIC_BASE_URL` points at the proxy.
//! - codex: a provider of corral's own, `-c model_provider=corral -c
//!   model_providers.corral={base_url=PROXY/v1, env_key=CORRAL_PROXY_TOKEN,
//!   wire_api="responses"}`, after the agent's own arguments (the last
//!   `-c` of a key wins), so nothing is written into the person's files.
//! - gemini: `GOOGLE_GEMINI_BASE_URL` points at the proxy, `GEMINI_API_KEY`
//!   is the token (its settings must pick API-key auth, as for any base
//!   URL, which the daemon checks at spawn: docs/agents/gemini-cli.md §2).
//! - aider, for a `--model openai/NAME` (or `AIDER_MODEL`): `OPENAI_API_BASE`
//!   and `OPENAI_BASE_URL` point at the proxy's `/v1`, `OPENAI_API_KEY` is
//!   the token; the upstream is the spawning environment's
//!   `OPENAI_API_BASE`, else `OPENAI_BASE_URL` (litellm's order), else
//!   OpenAI's. Any other model is refused: corral cannot tell where Aider
//!   would send it.
//! - opencode: the provider its `--model PROVIDER/MODEL` names, found in
//!   its configuration as the caller read it ([`OpencodeSources`]: the
//!   person's global files, `OPENCODE_CONFIG`, `OPENCODE_CONFIG_CONTENT`,
//!   later ones winning), gets `options.baseURL` = the proxy's `/v1` and
//!   `options.apiKey` = the token through `OPENCODE_CONFIG_CONTENT`, which
//!   opencode merges over every file (its project files too). The upstream
//!   is that provider's `baseURL`, else (the built-in `openai` and
//!   `anthropic`) the provider's own endpoint; the key its `apiKey` (a
//!   literal, or `{env:NAME}` taken from the environment), else the
//!   built-in's variable.
//! - a plain command with `--meter proxy`: all three base-URL variables.
//!
//! Owns: these choices, as a pure function of the harness, the environment,
//! the model and the arguments. Never does: I/O.

use std::collections::BTreeMap;

use corral_harness::Harness;
use serde_json::{json, Value};

use super::provider::Family;
use crate::wire::monitor::{MeterSpec, ProxyKey, ProxyKeys, PROXY_URL_MARK};

/// The variables that hold a provider's real key.
pub const KEY_VARIABLES: [&str; 5] =
    ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"];

/// Variables that make a CLI reach its models some other way than the base
/// URL corral points it at (a cloud's own API), so its calls would pass no
/// meter: a proxied agent whose environment sets one is refused.
const ELSEWHERE: [(Harness, &str, &str); 5] = [
    (Harness::Claude, "CLAUDE_CODE_USE_BEDROCK", "Amazon Bedrock"),
    (Harness::Claude, "CLAUDE_CODE_USE_VERTEX", "Google Vertex AI"),
    (Harness::Claude, "CLAUDE_CODE_USE_FOUNDRY", "Microsoft Foundry"),
    (Harness::Gemini, "GOOGLE_GENAI_USE_VERTEXAI", "Google Vertex AI"),
    (Harness::Gemini, "GOOGLE_GENAI_USE_GCA", "Google's Code Assist login"),
];

/// Credentials a CLI calls with in place of an API key (Claude Code's
/// long-lived login token): taken out of a proxied agent's environment, as
/// a key is, so the agent cannot call past its proxy with them.
const LOGIN_VARIABLES: [&str; 1] = ["CLAUDE_CODE_OAUTH_TOKEN"];

/// The variable Codex's provider of corral's own reads its key from.
pub const CODEX_TOKEN_VARIABLE: &str = "CORRAL_PROXY_TOKEN";

/// What putting an agent behind its proxy takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub spec: MeterSpec,
    pub keys: ProxyKeys,
    /// Arguments to add after the agent's own (Codex's provider).
    pub extra_args: Vec<String>,
}

/// Whether corral can point `harness`'s CLI at its proxy, so the proxy is
/// its meter unless `--meter stream` is asked for.
pub fn proxy_by_default(harness: Harness) -> bool {
    !matches!(harness, Harness::Generic)
}

/// opencode's configuration, as the caller read it, lowest precedence
/// first: the person's global files, then `OPENCODE_CONFIG`'s file (the
/// spawning environment's `OPENCODE_CONFIG_CONTENT` is read from the
/// environment here).
pub type OpencodeSources = Vec<Value>;

/// The plan for an agent of `harness` whose environment is `env` (changed
/// here: keys out, token in) and whose own arguments are `args`.
pub fn plan(
    harness: Harness,
    env: &mut BTreeMap<String, String>,
    args: &[String],
    model: Option<&str>,
    opencode: &[Value],
    token: &str,
) -> Result<Plan, String> {
    let set = |value: &String| !matches!(value.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no" | "off");
    if let Some((_, name, what)) =
        ELSEWHERE.iter().find(|(h, name, _)| *h == harness && env.get(*name).is_some_and(set))
    {
        return Err(format!(
            "{name} is set, so the CLI would call {what} directly, past corral's metering proxy; unset it, \
             or spawn with --meter stream"
        ));
    }
    for name in LOGIN_VARIABLES {
        env.remove(name);
    }
    let mut upstreams = BTreeMap::new();
    let mut keys = BTreeMap::new();
    let mut url_env = BTreeMap::new();
    let mut extra_args = Vec::new();
    let take = |env: &mut BTreeMap<String, String>, name: &str| env.remove(name).filter(|v| !v.is_empty());
    let anthropic = |env: &mut BTreeMap<String, String>,
                     upstreams: &mut BTreeMap<Family, String>,
                     keys: &mut BTreeMap<Family, ProxyKey>| {
        let base = take(env, "ANTHROPIC_BASE_URL").unwrap_or_else(|| Family::Anthropic.default_upstream().into());
        upstreams.insert(Family::Anthropic, base);
        let api_key = take(env, "ANTHROPIC_API_KEY");
        let auth_token = take(env, "ANTHROPIC_AUTH_TOKEN");
        if auth_token.is_some() {
            env.insert("ANTHROPIC_AUTH_TOKEN".into(), token.into());
        }
        // The CLI needs a key to call at all (else it asks for a login).
        if api_key.is_some() || auth_token.is_none() {
            env.insert("ANTHROPIC_API_KEY".into(), token.into());
        }
        match (api_key, auth_token) {
            (Some(key), _) => keys.insert(Family::Anthropic, ProxyKey { key, bearer: false }),
            (None, Some(key)) => keys.insert(Family::Anthropic, ProxyKey { key, bearer: true }),
            (None, None) => None,
        };
    };
    let openai = |env: &mut BTreeMap<String, String>,
                  upstreams: &mut BTreeMap<Family, String>,
                  keys: &mut BTreeMap<Family, ProxyKey>| {
        let base = take(env, "OPENAI_BASE_URL").unwrap_or_else(|| Family::OpenAi.default_upstream().into());
        upstreams.insert(Family::OpenAi, base);
        if let Some(key) = take(env, "OPENAI_API_KEY") {
            keys.insert(Family::OpenAi, ProxyKey { key, bearer: true });
        }
        env.insert("OPENAI_API_KEY".into(), token.into());
    };
    let gemini = |env: &mut BTreeMap<String, String>,
                  upstreams: &mut BTreeMap<Family, String>,
                  keys: &mut BTreeMap<Family, ProxyKey>| {
        let base = take(env, "GOOGLE_GEMINI_BASE_URL").unwrap_or_else(|| Family::Gemini.default_upstream().into());
        upstreams.insert(Family::Gemini, base);
        let key = take(env, "GEMINI_API_KEY").or_else(|| take(env, "GOOGLE_API_KEY"));
        if let Some(key) = key {
            keys.insert(Family::Gemini, ProxyKey { key, bearer: false });
        }
        env.insert("GEMINI_API_KEY".into(), token.into());
    };
    match harness {
        Harness::Claude => {
            anthropic(env, &mut upstreams, &mut keys);
            url_env.insert("ANTHROPIC_BASE_URL".into(), String::new());
        }
        Harness::Codex => {
            let provider = codex_provider(args)?;
            let (base, env_key) = match provider {
                Some(p) => (p.base_url, p.env_key),
                None => (None, None),
            };
            let base = base
                .or_else(|| take(env, "OPENAI_BASE_URL"))
                .unwrap_or_else(|| Family::OpenAi.default_upstream().into());
            upstreams.insert(Family::OpenAi, base);
            let key = env_key.as_deref().and_then(|name| take(env, name)).or_else(|| take(env, "OPENAI_API_KEY"));
            if let Some(key) = key {
                keys.insert(Family::OpenAi, ProxyKey { key, bearer: true });
            }
            env.insert(CODEX_TOKEN_VARIABLE.into(), token.into());
            extra_args.extend([
                "-c".to_string(),
                "model_provider=corral".to_string(),
                "-c".to_string(),
                format!(
                    r#"model_providers.corral={{name="corral",base_url="{PROXY_URL_MARK}/v1",wire_api="responses",env_key="{CODEX_TOKEN_VARIABLE}"}}"#
                ),
            ]);
        }
        Harness::Gemini => {
            gemini(env, &mut upstreams, &mut keys);
            url_env.insert("GOOGLE_GEMINI_BASE_URL".into(), String::new());
        }
        Harness::Aider => {
            let model = model.map(str::to_owned).or_else(|| env.get("AIDER_MODEL").cloned()).unwrap_or_default();
            if !model.starts_with("openai/") {
                return Err(format!(
                    "corral points Aider at its metering proxy for an OpenAI-compatible model only \
                     (--model openai/NAME), not {:?}; spawn it with --meter stream",
                    model
                ));
            }
            let api_base = take(env, "OPENAI_API_BASE");
            let base_url = take(env, "OPENAI_BASE_URL");
            let base = api_base.or(base_url).unwrap_or_else(|| Family::OpenAi.default_upstream().into());
            upstreams.insert(Family::OpenAi, base);
            if let Some(key) = take(env, "OPENAI_API_KEY") {
                keys.insert(Family::OpenAi, ProxyKey { key, bearer: true });
            }
            env.insert("OPENAI_API_KEY".into(), token.into());
            url_env.insert("OPENAI_API_BASE".into(), "/v1".into());
            url_env.insert("OPENAI_BASE_URL".into(), "/v1".into());
        }
        Harness::Opencode => {
            let (family, base, key) = opencode_provider(env, model, opencode)?;
            upstreams.insert(family, base);
            if let Some(key) = key {
                keys.insert(family, ProxyKey { key, bearer: family != Family::Anthropic });
            }
            let name = model.and_then(|m| m.split_once('/')).map(|(p, _)| p).unwrap_or_default();
            let mut content = match take(env, "OPENCODE_CONFIG_CONTENT") {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| format!("cannot read OPENCODE_CONFIG_CONTENT as JSON: {e}"))?,
                None => json!({}),
            };
            let ours = json!({"options": {"baseURL": format!("{PROXY_URL_MARK}/v1"), "apiKey": token}});
            merge(&mut content, &json!({"provider": {name: ours}}));
            env.insert("OPENCODE_CONFIG_CONTENT".into(), content.to_string());
        }
        Harness::Generic => {
            anthropic(env, &mut upstreams, &mut keys);
            openai(env, &mut upstreams, &mut keys);
            gemini(env, &mut upstreams, &mut keys);
            url_env.insert("ANTHROPIC_BASE_URL".into(), String::new());
            url_env.insert("OPENAI_BASE_URL".into(), "/v1".into());
            url_env.insert("GOOGLE_GEMINI_BASE_URL".into(), String::new());
        }
    }
    // No copy of a real key stays behind under another name.
    let real: Vec<String> = keys.values().map(|k| k.key.clone()).collect();
    env.retain(|_, value| !real.contains(value));
    let keyed = keys.iter().map(|(family, key)| (*family, key.bearer)).collect();
    Ok(Plan { spec: MeterSpec { token: token.into(), upstreams, url_env, keyed }, keys: ProxyKeys(keys), extra_args })
}

/// The opencode provider `model` (`PROVIDER/MODEL`) names: its API's
/// family, its upstream and its real key, from `sources` and the
/// spawning environment's `OPENCODE_CONFIG_CONTENT`, later ones winning
/// field by field. The key's variables leave `env`.
fn opencode_provider(
    env: &mut BTreeMap<String, String>,
    model: Option<&str>,
    sources: &[Value],
) -> Result<(Family, String, Option<String>), String> {
    let stream = "spawn it with --meter stream";
    let Some((name, _)) = model.and_then(|m| m.split_once('/')) else {
        return Err(format!(
            "corral points opencode at its metering proxy through the provider its --model PROVIDER/MODEL names; \
             give one, or {stream}"
        ));
    };
    let inline = match env.get("OPENCODE_CONFIG_CONTENT") {
        Some(text) => Some(
            serde_json::from_str::<Value>(text)
                .map_err(|e| format!("cannot read OPENCODE_CONFIG_CONTENT as JSON: {e}"))?,
        ),
        None => None,
    };
    let (mut npm, mut base, mut key) = (None, None, None);
    for source in sources.iter().chain(inline.iter()) {
        let Some(provider) = source.get("provider").and_then(|p| p.get(name)) else { continue };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        npm = text(provider.get("npm")).or(npm);
        let options = provider.get("options");
        base = text(options.and_then(|o| o.get("baseURL"))).or(base);
        key = text(options.and_then(|o| o.get("apiKey"))).or(key);
    }
    let family = match (npm.as_deref(), name) {
        (Some("@ai-sdk/openai-compatible" | "@ai-sdk/openai"), _) | (None, "openai") => Family::OpenAi,
        (Some("@ai-sdk/anthropic"), _) | (None, "anthropic") => Family::Anthropic,
        (Some(npm), _) => {
            return Err(format!("corral cannot meter opencode's provider {name:?} (its npm {npm:?}); {stream}"))
        }
        (None, _) => {
            return Err(format!(
                "corral finds no provider {name:?} in opencode's configuration (its global files, \
                 OPENCODE_CONFIG, OPENCODE_CONFIG_CONTENT); {stream}"
            ))
        }
    };
    let base = match base {
        Some(base) => base,
        None if npm.is_none() => family.default_upstream().to_owned(),
        None => return Err(format!("opencode's provider {name:?} has no options.baseURL; {stream}")),
    };
    if base.contains("{env:") || base.contains("{file:") {
        return Err(format!("corral cannot follow the baseURL {base:?} of opencode's provider {name:?}; {stream}"));
    }
    let variable = match family {
        Family::Anthropic => "ANTHROPIC_API_KEY",
        _ => "OPENAI_API_KEY",
    };
    let from_env = env.remove(variable).filter(|v| !v.is_empty());
    let key = match key {
        Some(key) => match key.strip_prefix("{env:").and_then(|k| k.strip_suffix('}')) {
            Some(name) if name == variable => from_env,
            Some(name) => env.remove(name).filter(|v| !v.is_empty()),
            None if key.contains("{file:") => {
                return Err(format!("corral cannot follow the apiKey of opencode's provider {name:?}; {stream}"))
            }
            None => Some(key),
        },
        None => from_env,
    };
    Ok((family, base, key))
}

/// Merges `over` into `base`, objects key by key (opencode's own merge).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// The provider Codex's `-c` arguments pick, if they pick one.
struct CodexProvider {
    base_url: Option<String>,
    env_key: Option<String>,
}

fn codex_provider(args: &[String]) -> Result<Option<CodexProvider>, String> {
    let overrides: Vec<&str> =
        args.windows(2).filter(|w| w[0] == "-c" || w[0] == "--config").map(|w| w[1].as_str()).collect();
    let Some(name) = overrides.iter().rev().find_map(|o| o.strip_prefix("model_provider=")) else {
        return Ok(None);
    };
    let name = name.trim().trim_matches('"').to_string();
    let prefix = format!("model_providers.{name}=");
    let Some(table) = overrides.iter().rev().find_map(|o| o.strip_prefix(prefix.as_str())) else {
        return Ok(Some(CodexProvider { base_url: None, env_key: None }));
    };
    let value: toml::Value = toml::from_str(&format!("p = {table}"))
        .map_err(|e| format!("cannot read the Codex provider `-c {prefix}{table}`: {e}"))?;
    let field = |key: &str| value.get("p").and_then(|p| p.get(key)).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Some(CodexProvider { base_url: field("base_url"), env_key: field("env_key") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn claude_keeps_its_upstream_and_loses_its_key() {
        let mut e = env(&[
            ("ANTHROPIC_API_KEY", "sk-real"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/gateway"),
            ("COPY", "sk-real"),
            ("HOME", "/h"),
        ]);
        let plan = plan(Harness::Claude, &mut e, &[], None, &[], "tok").unwrap();
        assert_eq!(plan.spec.upstreams[&Family::Anthropic], "http://127.0.0.1:9/gateway");
        assert_eq!(plan.keys.0[&Family::Anthropic], ProxyKey { key: "sk-real".into(), bearer: false });
        assert_eq!(e, env(&[("ANTHROPIC_API_KEY", "tok"), ("HOME", "/h")]));
        assert_eq!(plan.spec.url_env, BTreeMap::from([("ANTHROPIC_BASE_URL".to_string(), String::new())]));
    }

    #[test]
    fn an_auth_token_is_sent_as_a_bearer_and_the_default_upstream_is_anthropics() {
        let mut e = env(&[("ANTHROPIC_AUTH_TOKEN", "tok-real")]);
        let plan = plan(Harness::Claude, &mut e, &[], None, &[], "tok").unwrap();
        assert!(plan.keys.0[&Family::Anthropic].bearer);
        assert_eq!(plan.spec.upstreams[&Family::Anthropic], "https://api.anthropic.com");
        assert_eq!(e, env(&[("ANTHROPIC_AUTH_TOKEN", "tok")]));
    }

    #[test]
    fn codex_gets_a_provider_of_corrals_after_its_own() {
        let args: Vec<String> = [
            "-c",
            "model_provider=mock",
            "-c",
            r#"model_providers.mock={name="mock",base_url="http://127.0.0.1:7/v1",wire_api="responses",env_key="MOCK_KEY"}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut e = env(&[("MOCK_KEY", "mock-real"), ("OPENAI_API_KEY", "other")]);
        let plan = plan(Harness::Codex, &mut e, &args, None, &[], "tok").unwrap();
        assert_eq!(plan.spec.upstreams[&Family::OpenAi], "http://127.0.0.1:7/v1");
        assert_eq!(plan.keys.0[&Family::OpenAi].key, "mock-real");
        assert!(!e.contains_key("MOCK_KEY"));
        assert_eq!(e[CODEX_TOKEN_VARIABLE], "tok");
        assert_eq!(plan.extra_args[1], "model_provider=corral");
        assert!(plan.extra_args[3].contains(PROXY_URL_MARK));
    }

    #[test]
    fn a_plain_command_is_pointed_at_every_api() {
        let mut e = env(&[("OPENAI_API_KEY", "sk-o"), ("GEMINI_API_KEY", "g")]);
        let plan = plan(Harness::Generic, &mut e, &[], None, &[], "tok").unwrap();
        assert_eq!(plan.spec.upstreams.len(), 3);
        assert_eq!(plan.spec.url_env["OPENAI_BASE_URL"], "/v1");
        assert_eq!((e["OPENAI_API_KEY"].as_str(), e["GEMINI_API_KEY"].as_str()), ("tok", "tok"));
        assert_eq!(plan.keys.0.len(), 2);
    }

    #[test]
    fn gemini_keeps_its_upstream_and_gets_the_token_as_its_key() {
        let mut e = env(&[("GEMINI_API_KEY", "g-real"), ("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")]);
        let plan = plan(Harness::Gemini, &mut e, &[], None, &[], "tok").unwrap();
        assert_eq!(plan.spec.upstreams[&Family::Gemini], "http://127.0.0.1:9");
        assert_eq!(plan.keys.0[&Family::Gemini], ProxyKey { key: "g-real".into(), bearer: false });
        assert_eq!(e, env(&[("GEMINI_API_KEY", "tok")]));
        assert_eq!(plan.spec.url_env, BTreeMap::from([("GOOGLE_GEMINI_BASE_URL".to_string(), String::new())]));
    }

    #[test]
    fn aider_takes_litellms_base_and_refuses_a_model_it_cannot_point() {
        let mut e = env(&[("OPENAI_API_BASE", "http://127.0.0.1:7/v1"), ("OPENAI_API_KEY", "sk-o")]);
        let plan = plan(Harness::Aider, &mut e, &[], Some("openai/gpt-mock"), &[], "tok").unwrap();
        assert_eq!(plan.spec.upstreams[&Family::OpenAi], "http://127.0.0.1:7/v1");
        assert_eq!(plan.keys.0[&Family::OpenAi], ProxyKey { key: "sk-o".into(), bearer: true });
        assert_eq!(e, env(&[("OPENAI_API_KEY", "tok")]));
        assert_eq!(plan.spec.url_env["OPENAI_API_BASE"], "/v1");
        assert_eq!(plan.spec.url_env["OPENAI_BASE_URL"], "/v1");
        let err = plan_err(Harness::Aider, Some("sonnet"), &[]);
        assert!(err.contains("--meter stream") && err.contains("openai/"), "{err}");
    }

    #[test]
    fn a_cli_told_to_call_its_cloud_directly_is_refused_and_login_tokens_are_taken_out() {
        for (harness, name) in [
            (Harness::Claude, "CLAUDE_CODE_USE_BEDROCK"),
            (Harness::Claude, "CLAUDE_CODE_USE_VERTEX"),
            (Harness::Gemini, "GOOGLE_GENAI_USE_VERTEXAI"),
        ] {
            let mut e = env(&[(name, "1"), ("ANTHROPIC_API_KEY", "sk-a")]);
            let err = plan(harness, &mut e, &[], None, &[], "tok").unwrap_err();
            assert!(err.contains(name) && err.contains("--meter stream"), "{err}");
            // Set to nothing or false, it routes nowhere else.
            for off in ["", "0", "false"] {
                let mut e = env(&[(name, off)]);
                assert!(plan(harness, &mut e, &[], None, &[], "tok").is_ok(), "{name}={off:?}");
            }
        }
        let mut e = env(&[("CLAUDE_CODE_OAUTH_TOKEN", "oauth-secret"), ("ANTHROPIC_API_KEY", "sk-a")]);
        plan(Harness::Claude, &mut e, &[], None, &[], "tok").unwrap();
        assert!(!e.contains_key("CLAUDE_CODE_OAUTH_TOKEN"), "{e:?}");
    }

    fn plan_err(harness: Harness, model: Option<&str>, sources: &[Value]) -> String {
        plan(harness, &mut BTreeMap::new(), &[], model, sources, "tok").unwrap_err()
    }

    #[test]
    fn opencode_gets_its_provider_pointed_at_the_proxy_over_its_files() {
        let global = json!({"provider": {"mock": {"npm": "@ai-sdk/openai-compatible",
            "options": {"baseURL": "http://127.0.0.1:1/v1", "apiKey": "{env:MOCK_KEY}"}}}});
        let file = json!({"provider": {"mock": {"options": {"baseURL": "http://127.0.0.1:7/v1"}}}});
        let mut e = env(&[("MOCK_KEY", "m-real"), ("OPENCODE_CONFIG_CONTENT", r#"{"share": "disabled"}"#)]);
        let plan = plan(Harness::Opencode, &mut e, &[], Some("mock/coder"), &[global, file], "tok").unwrap();
        assert_eq!(plan.spec.upstreams[&Family::OpenAi], "http://127.0.0.1:7/v1");
        assert_eq!(plan.keys.0[&Family::OpenAi], ProxyKey { key: "m-real".into(), bearer: true });
        assert!(!e.contains_key("MOCK_KEY"));
        let content: Value = serde_json::from_str(&e["OPENCODE_CONFIG_CONTENT"]).unwrap();
        assert_eq!(
            content,
            json!({"share": "disabled", "provider": {"mock": {"options":
                {"baseURL": format!("{PROXY_URL_MARK}/v1"), "apiKey": "tok"}}}})
        );
    }

    #[test]
    fn opencode_built_ins_default_their_upstream_and_key() {
        let mut e = env(&[("ANTHROPIC_API_KEY", "a-real")]);
        let plan = plan(Harness::Opencode, &mut e, &[], Some("anthropic/claude-sonnet-4-5"), &[], "tok").unwrap();
        assert_eq!(plan.spec.upstreams[&Family::Anthropic], "https://api.anthropic.com");
        assert_eq!(plan.keys.0[&Family::Anthropic], ProxyKey { key: "a-real".into(), bearer: false });
        assert!(!e.contains_key("ANTHROPIC_API_KEY"));
    }

    #[test]
    fn an_opencode_provider_corral_cannot_follow_is_refused_with_the_way_out() {
        for err in [
            plan_err(Harness::Opencode, None, &[]),
            plan_err(Harness::Opencode, Some("nowhere/m"), &[]),
            plan_err(Harness::Opencode, Some("g/m"), &[json!({"provider": {"g": {"npm": "@ai-sdk/google"}}})]),
        ] {
            assert!(err.contains("--meter stream"), "{err}");
        }
    }
}
