//! The custom serde deserializers of `corral.toml`: durations, positive
//! numbers, memory sizes, budgets, names, paths, harnesses, environments,
//! probes, prices and the two spellings of `merge`.
//!
//! Each checks its value while deserializing, so that its error lands on
//! that value's line and key (see `errors`). Messages say what the value
//! must be and what was found ("must be greater than 0, found -3"). The
//! same deserializers read an [`AgentConfig`](super::AgentConfig) from JSON
//! on the wire.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use corral_probes::ProbeSpec;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{MergeConfig, MergePolicy, MergeStrategy, Price};
use crate::sys::gate::Gate;

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// A duration greater than 0 (a budget's `wall` or `idle`).
pub(super) fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let duration = crate::model::duration::opt_text::deserialize(deserializer)?;
    if duration == Some(Duration::ZERO) {
        return Err(de::Error::custom("must be greater than 0, found 0"));
    }
    Ok(duration)
}

// ---------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------

/// A whole number greater than 0 that fits `max`.
struct PositiveInt {
    max: u64,
}

impl Visitor<'_> for PositiveInt {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a positive integer")
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::custom(format!("must be greater than 0, found {n}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        if n == 0 {
            Err(E::custom("must be greater than 0, found 0"))
        } else if n > self.max {
            Err(E::custom(format!("must be at most {}, found {n}", self.max)))
        } else {
            Ok(n)
        }
    }

    /// `5e6` is a float in TOML; a whole one is fine.
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
        if n.fract() == 0.0 && n > 0.0 && n <= self.max as f64 {
            Ok(n as u64)
        } else if n.fract() == 0.0 && n <= 0.0 {
            Err(E::custom(format!("must be greater than 0, found {n}")))
        } else {
            Err(E::custom(format!("must be a whole number from 1 to {}, found {n}", self.max)))
        }
    }
}

pub(super) fn positive_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    deserializer.deserialize_any(PositiveInt { max: u64::MAX }).map(Some)
}

pub(super) fn positive_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    // The visitor keeps the value within u32.
    deserializer.deserialize_any(PositiveInt { max: u64::from(u32::MAX) }).map(|n| Some(n as u32))
}

/// A finite number, checked by `accept`, which names the range in `expected`.
struct Number {
    expected: &'static str,
    accept: fn(f64) -> bool,
    must: &'static str,
}

impl Visitor<'_> for Number {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<f64, E> {
        self.visit_f64(n as f64)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<f64, E> {
        self.visit_f64(n as f64)
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<f64, E> {
        if n.is_finite() && (self.accept)(n) {
            Ok(n)
        } else {
            Err(E::custom(format!("must be {}, found {n}", self.must)))
        }
    }
}

pub(super) fn positive_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let number = Number { expected: "a positive number", accept: |n| n > 0.0, must: "greater than 0" };
    deserializer.deserialize_any(number).map(Some)
}

/// `warn_at`: in (0, 1].
pub(super) fn fraction<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let number = Number {
        expected: "a fraction greater than 0 and at most 1",
        accept: |n| n > 0.0 && n <= 1.0,
        must: "greater than 0 and at most 1",
    };
    deserializer.deserialize_any(number).map(Some)
}

fn price<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let number = Number { expected: "a price in USD per million tokens", accept: |n| n >= 0.0, must: "0 or more" };
    deserializer.deserialize_any(number)
}

fn opt_price<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    price(deserializer).map(Some)
}

/// `[prices."MODEL"]` as written: the cache prices may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    #[serde(deserialize_with = "price")]
    input: f64,
    #[serde(deserialize_with = "price")]
    output: f64,
    #[serde(default, deserialize_with = "opt_price")]
    cache_read: Option<f64>,
    #[serde(default, deserialize_with = "opt_price")]
    cache_write: Option<f64>,
}

impl From<RawPrice> for Price {
    fn from(raw: RawPrice) -> Price {
        Price {
            input: raw.input,
            output: raw.output,
            cache_read: raw.cache_read.unwrap_or(raw.input),
            cache_write: raw.cache_write.unwrap_or(raw.input),
        }
    }
}

/// A memory size: `"512M"`, `"2GiB"`, `"1.5G"`, or a whole number of bytes.
pub(super) fn memory<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct Memory;

    impl Visitor<'_> for Memory {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a memory size such as \"512M\" or \"2G\", or a number of bytes")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            crate::sys::sandbox::parse_bytes(text).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            PositiveInt { max: u64::MAX }.visit_i64(n)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            PositiveInt { max: u64::MAX }.visit_u64(n)
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
            PositiveInt { max: u64::MAX }.visit_f64(n)
        }
    }

    deserializer.deserialize_any(Memory).map(Some)
}

// ---------------------------------------------------------------------------
// Budgets
// ---------------------------------------------------------------------------

/// Serde for `budget = { ... }`: the one [`Budget`] type as corral.toml, and
/// the settings a spawn sends, spell it: `wall` and `idle` durations, every
/// limit checked to be greater than 0. `Budget`'s own serde is the
/// journal's (`wall_secs`, read as recorded, where a budget granted from
/// what was left may be 0), hence a spelling of the file's own, of exactly
/// `Budget`'s fields (serde's `remote`).
///
/// [`Budget`]: crate::model::budget::Budget
pub(crate) mod budget {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{fraction, positive_duration, positive_f64, positive_u64};
    use crate::model::budget::Budget;

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Budget", deny_unknown_fields)]
    struct File {
        #[serde(default, deserialize_with = "positive_u64", skip_serializing_if = "Option::is_none")]
        tokens: Option<u64>,
        #[serde(default, deserialize_with = "positive_u64", skip_serializing_if = "Option::is_none")]
        output_tokens: Option<u64>,
        #[serde(default, deserialize_with = "positive_f64", skip_serializing_if = "Option::is_none")]
        cost: Option<f64>,
        #[serde(default, deserialize_with = "positive_duration", skip_serializing_if = "Option::is_none")]
        #[serde(serialize_with = "crate::model::duration::opt_text::serialize")]
        wall: Option<Duration>,
        #[serde(default, deserialize_with = "positive_duration", skip_serializing_if = "Option::is_none")]
        #[serde(serialize_with = "crate::model::duration::opt_text::serialize")]
        idle: Option<Duration>,
        #[serde(default, deserialize_with = "fraction", skip_serializing_if = "Option::is_none")]
        warn_at: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_exceeded: Option<crate::model::budget::OnExceeded>,
    }

    pub fn serialize<S: Serializer>(value: &Option<Budget>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(budget) => File::serialize(budget, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Budget>, D::Error> {
        File::deserialize(deserializer).map(Some)
    }
}

// ---------------------------------------------------------------------------
// Strings, paths and tables
// ---------------------------------------------------------------------------

/// A non-empty string without control characters (a branch, model or effort).
pub(crate) fn name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(deserializer)?;
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(de::Error::custom(format!("must be a non-empty name without control characters, found {name:?}")));
    }
    Ok(Some(name))
}

/// A harness name (`claude`, ..., `generic`).
pub(super) fn harness<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<corral_harness::Harness>, D::Error> {
    let name = String::deserialize(deserializer)?;
    name.parse().map(Some).map_err(de::Error::custom)
}

/// An `http://` or `https://` base URL with a host (`[proxy.NAME] upstream`).
pub(super) fn base_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(deserializer)?;
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !url.chars().any(char::is_whitespace) => {
            Ok(Some(url.trim_end_matches('/').to_owned()))
        }
        _ => Err(de::Error::custom(format!("must be an http:// or https:// base URL with a host, found {url:?}"))),
    }
}

pub(super) fn absolute_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    let path = PathBuf::deserialize(deserializer)?;
    if !path.is_absolute() {
        return Err(de::Error::custom(format!("must be an absolute path, found {:?}", path.display().to_string())));
    }
    Ok(Some(path))
}

/// Environment variables: names without `=` or NUL, values without NUL.
pub(crate) fn env<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let env = BTreeMap::<String, String>::deserialize(deserializer)?;
    for (name, value) in &env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(de::Error::custom(format!("{name:?} is not a valid environment variable name")));
        }
        if value.contains('\0') {
            return Err(de::Error::custom(format!("the value of {name} holds a NUL byte")));
        }
    }
    Ok(Some(env))
}

/// Startup and liveness probes need `success_threshold = 1`, as in
/// Kubernetes (`ProbeSet::validate` says the same for sets built in code).
/// The message names the field as a probe's own errors do.
pub(super) fn startup_or_liveness<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ProbeSpec>, D::Error> {
    let spec = ProbeSpec::deserialize(deserializer)?;
    if spec.success_threshold != 1 {
        return Err(de::Error::custom(format!(
            "success_threshold: must be 1 for startup and liveness probes (as in Kubernetes), got {}",
            spec.success_threshold
        )));
    }
    Ok(Some(spec))
}

/// `merge = "auto"` (a policy alone) or `merge = { policy, target,
/// strategy, gate }`.
impl<'de> Deserialize<'de> for MergeConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MergeConfig, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(default)]
            policy: Option<MergePolicy>,
            #[serde(default, deserialize_with = "name")]
            target: Option<String>,
            #[serde(default)]
            strategy: Option<MergeStrategy>,
            #[serde(default)]
            gate: Option<Gate>,
        }

        struct MergeVisitor;

        impl<'de> Visitor<'de> for MergeVisitor {
            type Value = MergeConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a merge policy (\"auto\", \"manual\", \"never\") or a table")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<MergeConfig, E> {
                let policy = MergePolicy::deserialize(text.into_deserializer())?;
                Ok(MergeConfig { policy: Some(policy), ..MergeConfig::default() })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MergeConfig, A::Error> {
                let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(MergeConfig {
                    policy: table.policy,
                    target: table.target,
                    strategy: table.strategy,
                    gate: table.gate,
                })
            }
        }

        deserializer.deserialize_any(MergeVisitor)
    }
}
