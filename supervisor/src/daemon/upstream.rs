//! corral.toml's `[proxy]` applied to a proxy-metered agent at spawn: the
//! upstream base URL and the key of each provider the spawning environment
//! left unset, put in the agent's environment before its metering plan
//! takes the keys out of it (`proxy::plan`), so a key from a file goes the
//! way of a key from the environment: to the monitor's proxy, never to the
//! agent, the journal or a log.
//!
//! Owns: reading key files, and the check that refuses one anybody but its
//! owner can read. Never does: decide upstreams of its own, or apply
//! anything to an agent whose calls do not go through the proxy.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::ProxySection;

/// Fills `env` from `proxy` where it sets no base URL or key of a
/// provider; a key file that cannot be used is an error naming it.
pub(super) fn fill_env(proxy: &ProxySection, env: &mut BTreeMap<String, String>) -> Result<(), String> {
    let set = |env: &BTreeMap<String, String>, name: &str| env.get(name).is_some_and(|v| !v.is_empty());
    for (name, provider, url_variable, key_variables) in proxy.providers() {
        let Some(provider) = provider else { continue };
        if let Some(upstream) = provider.upstream.as_ref().filter(|_| !set(env, url_variable)) {
            env.insert(url_variable.to_owned(), upstream.clone());
        }
        if let Some(file) = provider.key_file.as_ref().filter(|_| !key_variables.iter().any(|k| set(env, k))) {
            let key = read_key_file(file).map_err(|why| format!("corral.toml [proxy.{name}] key_file: {why}"))?;
            env.insert(key_variables[0].to_owned(), key);
        }
    }
    Ok(())
}

/// The key in `file`: the user's own file, readable by nobody else (mode
/// 0600 or narrower), holding one key (surrounding whitespace dropped).
pub(super) fn read_key_file(file: &Path) -> Result<String, String> {
    let shown = file.display();
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{shown} belongs to uid {}, not to you (uid {me}); corral takes a key only from your own file",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} can be read or written by others (mode {mode:04o}); a key file must be mode 0600 \
             (chmod 600 {shown})"
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let key = text.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("{shown} must hold one key and nothing else"));
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::ProxyProvider;

    fn key_file(dir: &Path, mode: u32, text: &str) -> std::path::PathBuf {
        let path = dir.join(format!("key-{mode:o}"));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_and_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_key_file(&key_file(dir.path(), 0o600, "sk-one\n")).unwrap(), "sk-one");
        assert_eq!(read_key_file(&key_file(dir.path(), 0o400, "sk-two")).unwrap(), "sk-two");
        for mode in [0o644, 0o640, 0o604, 0o620] {
            let err = read_key_file(&key_file(dir.path(), mode, "sk")).unwrap_err();
            assert!(err.contains(&format!("mode {mode:04o}")) && err.contains("chmod 600"), "{err}");
        }
        let err = read_key_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("missing") && err.contains("cannot read"), "{err}");
        let err = read_key_file(&key_file(dir.path(), 0o600, " \n")).unwrap_err();
        assert!(err.contains("one key"), "{err}");
    }

    #[test]
    fn the_spawning_environment_wins_and_the_config_fills_only_what_it_left_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = key_file(dir.path(), 0o600, "sk-from-file");
        let provider = ProxyProvider { upstream: Some("https://gw.example/a".into()), key_file: Some(file) };
        let proxy = ProxySection { anthropic: Some(provider.clone()), openai: Some(provider), gemini: None };
        let mut env = BTreeMap::from([
            ("OPENAI_BASE_URL".to_owned(), "http://127.0.0.1:9".to_owned()),
            ("OPENAI_API_KEY".to_owned(), "sk-from-env".to_owned()),
        ]);
        fill_env(&proxy, &mut env).unwrap();
        assert_eq!(env["ANTHROPIC_BASE_URL"], "https://gw.example/a");
        assert_eq!(env["ANTHROPIC_API_KEY"], "sk-from-file");
        assert_eq!(
            (env["OPENAI_BASE_URL"].as_str(), env["OPENAI_API_KEY"].as_str()),
            ("http://127.0.0.1:9", "sk-from-env")
        );
        assert!(!env.contains_key("GEMINI_API_KEY"));
        // An auth token in the environment is Anthropic's key too: no file key beside it.
        let mut env = BTreeMap::from([("ANTHROPIC_AUTH_TOKEN".to_owned(), "tok".to_owned())]);
        fill_env(&proxy, &mut env).unwrap();
        assert!(!env.contains_key("ANTHROPIC_API_KEY"), "{env:?}");
        // A bad key file fails the spawn, naming the table.
        let open = key_file(dir.path(), 0o644, "sk");
        let bad = ProxySection {
            gemini: Some(ProxyProvider { upstream: None, key_file: Some(open) }),
            ..ProxySection::default()
        };
        let err = fill_env(&bad, &mut BTreeMap::new()).unwrap_err();
        assert!(err.starts_with("corral.toml [proxy.gemini] key_file: "), "{err}");
    }
}
