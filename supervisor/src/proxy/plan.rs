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
//! - a plain command with `--meter proxy`: all three base-URL variables.
//!
//! Owns: these choices, as a pure function of the harness, the environment
//! and the arguments. Never does: I/O.

use std::collections::BTreeMap;

use corral_harness::Harness;

use super::provider::Family;
use crate::wire::monitor::{MeterSpec, ProxyKey, ProxyKeys, PROXY_URL_MARK};

/// The variables that hold a provider's real key.
pub const KEY_VARIABLES: [&str; 5] =
    ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"];

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
    matches!(harness, Harness::Claude | Harness::Codex)
}

/// The plan for an agent of `harness` whose environment is `env` (changed
/// here: keys out, token in) and whose own arguments are `args`.
pub fn plan(
    harness: Harness,
    env: &mut BTreeMap<String, String>,
    args: &[String],
    token: &str,
) -> Result<Plan, String> {
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
        Harness::Generic => {
            anthropic(env, &mut upstreams, &mut keys);
            openai(env, &mut upstreams, &mut keys);
            gemini(env, &mut upstreams, &mut keys);
            url_env.insert("ANTHROPIC_BASE_URL".into(), String::new());
            url_env.insert("OPENAI_BASE_URL".into(), "/v1".into());
            url_env.insert("GOOGLE_GEMINI_BASE_URL".into(), String::new());
        }
        other => {
            return Err(format!("corral cannot point {other} at its metering proxy yet; spawn it with --meter stream"))
        }
    }
    // No copy of a real key stays behind under another name.
    let real: Vec<String> = keys.values().map(|k| k.key.clone()).collect();
    env.retain(|_, value| !real.contains(value));
    Ok(Plan { spec: MeterSpec { token: token.into(), upstreams, url_env }, keys: ProxyKeys(keys), extra_args })
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
        let plan = plan(Harness::Claude, &mut e, &[], "tok").unwrap();
        assert_eq!(plan.spec.upstreams[&Family::Anthropic], "http://127.0.0.1:9/gateway");
        assert_eq!(plan.keys.0[&Family::Anthropic], ProxyKey { key: "sk-real".into(), bearer: false });
        assert_eq!(e, env(&[("ANTHROPIC_API_KEY", "tok"), ("HOME", "/h")]));
        assert_eq!(plan.spec.url_env, BTreeMap::from([("ANTHROPIC_BASE_URL".to_string(), String::new())]));
    }

    #[test]
    fn an_auth_token_is_sent_as_a_bearer_and_the_default_upstream_is_anthropics() {
        let mut e = env(&[("ANTHROPIC_AUTH_TOKEN", "tok-real")]);
        let plan = plan(Harness::Claude, &mut e, &[], "tok").unwrap();
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
        let plan = plan(Harness::Codex, &mut e, &args, "tok").unwrap();
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
        let plan = plan(Harness::Generic, &mut e, &[], "tok").unwrap();
        assert_eq!(plan.spec.upstreams.len(), 3);
        assert_eq!(plan.spec.url_env["OPENAI_BASE_URL"], "/v1");
        assert_eq!((e["OPENAI_API_KEY"].as_str(), e["GEMINI_API_KEY"].as_str()), ("tok", "tok"));
        assert_eq!(plan.keys.0.len(), 2);
    }

    #[test]
    fn a_cli_corral_cannot_point_is_refused_with_the_way_out() {
        let err = plan(Harness::Aider, &mut BTreeMap::new(), &[], "tok").unwrap_err();
        assert!(err.contains("--meter stream"), "{err}");
    }
}
