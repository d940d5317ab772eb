//! Resolving an agent's settings: laying one agent table on another
//! ([`AgentConfig::overlay`]) and building the settings of the agent at an
//! address from `[defaults]`, the policies whose prefix covers the address
//! (outer before inner) and a role ([`Config::resolve`]).
//!
//! Pure: no I/O, and nothing here knows where a table came from.

use std::collections::BTreeMap;

use corral_probes::ProbeSet;

use super::{AgentConfig, Budget, Config, ConfigError, MergeConfig, Price, RestartPartial};
use crate::model::address::Address;

impl Config {
    /// The settings of the agent at `address` (absolute, e.g.
    /// `/root/review/dep`), optionally in `role`: `[defaults]`, then the
    /// policies covering the address from outer to inner, then the role.
    pub fn resolve(&self, address: &str, role: Option<&str>) -> Result<AgentConfig, ConfigError> {
        let address = Address::parse(address)
            .map_err(|err| ConfigError::InvalidAddress { address: address.to_owned(), reason: err.message })?;
        let role = match role {
            Some(name) => Some(self.agents.get(name).ok_or_else(|| ConfigError::UnknownRole {
                role: name.to_owned(),
                known: self.agents.keys().cloned().collect(),
            })?),
            None => None,
        };
        let mut policies: Vec<(Address, &AgentConfig)> = self
            .policies
            .iter()
            // Prefixes were checked when the file was read.
            .filter_map(|(prefix, policy)| Address::parse(prefix).ok().map(|prefix| (prefix, policy)))
            .filter(|(prefix, _)| address.is_within(prefix))
            .collect();
        policies.sort_by_key(|(prefix, _)| prefix.depth());
        let mut resolved = self.defaults.clone();
        for (_, policy) in policies {
            resolved.overlay(policy);
        }
        if let Some(role) = role {
            resolved.overlay(role);
        }
        Ok(resolved)
    }

    /// The price of `model`: its own `[prices]` entry, else the entry with
    /// the longest name that `model` extends with a `-`, `@` or `:` (so
    /// `claude-sonnet-4-5` prices `claude-sonnet-4-5-20250929`).
    pub fn price(&self, model: &str) -> Option<&Price> {
        if let Some(price) = self.prices.get(model) {
            return Some(price);
        }
        self.prices
            .iter()
            .filter(|(name, _)| model.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with(['-', '@', ':'])))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, price)| price)
    }
}

impl AgentConfig {
    /// Lays `other` on top of `self`: each field `other` sets wins. `budget`,
    /// `restart` and `merge` merge field by field and `env` by variable;
    /// `args`, probes and everything else are replaced whole.
    pub fn overlay(&mut self, other: &AgentConfig) {
        set(&mut self.description, &other.description);
        set(&mut self.harness, &other.harness);
        set(&mut self.model, &other.model);
        set(&mut self.reasoning_effort, &other.reasoning_effort);
        set(&mut self.args, &other.args);
        if let Some(env) = &other.env {
            self.env.get_or_insert_with(BTreeMap::new).extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        set(&mut self.sandbox, &other.sandbox);
        set(&mut self.network, &other.network);
        set(&mut self.meter, &other.meter);
        set(&mut self.max_memory, &other.max_memory);
        set(&mut self.max_processes, &other.max_processes);
        set(&mut self.max_open_files, &other.max_open_files);
        set(&mut self.sandbox_deny_read, &other.sandbox_deny_read);
        set(&mut self.sandbox_fallback, &other.sandbox_fallback);
        set(&mut self.notify, &other.notify);
        if let Some(budget) = &other.budget {
            self.budget.get_or_insert_with(Budget::default).overlay(budget);
        }
        set(&mut self.startup, &other.startup);
        set(&mut self.readiness, &other.readiness);
        set(&mut self.liveness, &other.liveness);
        if let Some(restart) = &other.restart {
            self.restart.get_or_insert_with(RestartPartial::default).overlay(restart);
        }
        if let Some(merge) = &other.merge {
            self.merge.get_or_insert_with(MergeConfig::default).overlay(merge);
        }
        set(&mut self.task, &other.task);
    }

    /// The three probes as the set `corral_probes` runs.
    pub fn probes(&self) -> ProbeSet {
        ProbeSet { startup: self.startup.clone(), readiness: self.readiness.clone(), liveness: self.liveness.clone() }
    }
}

impl MergeConfig {
    /// Lays `other` on top of `self`, field by field.
    pub fn overlay(&mut self, other: &MergeConfig) {
        set(&mut self.policy, &other.policy);
        set(&mut self.target, &other.target);
        set(&mut self.strategy, &other.strategy);
        set(&mut self.gate, &other.gate);
    }
}

/// Sets `field` to `other` when `other` is set.
pub(super) fn set<T: Clone>(field: &mut Option<T>, other: &Option<T>) {
    if let Some(value) = other {
        *field = Some(value.clone());
    }
}
