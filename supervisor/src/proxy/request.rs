//! A model call's request, before it goes upstream: its input estimate,
//! the output cap it asks for, and the rewrites corral makes to it (the
//! cap lowered to what a budget has left; Chat Completions told to report
//! usage in its stream).
//!
//! The estimate of a call's input comes from the agent's last call:
//! conversations grow, so the next request of a conversation reads at
//! least what the last one read, scaled by how much the body grew. The
//! first call of an agent has no such basis: it is estimated at no input,
//! so it goes upstream while anything of a budget is left, capped to what
//! is left. A size rule (four bytes a token) would refuse Claude Code's
//! first call (60 kB of tools and system prompt) on any budget under
//! 15,000 tokens, whatever the model server really charges; the price of
//! not guessing is an overshoot of at most that one call's input.
//!
//! What a call is charged when its answer never says (cut, or never
//! came) is another matter: it went upstream and was billed, so it is
//! charged no less than [`input_floor`], which for a first call is the
//! body's length in bytes, a bound (no text tokenizes to more tokens than
//! it has bytes) rather than a guess.
//!
//! Owns: the body fields that cap output, multiply it (answer counts) and
//! ask for usage. Never does:
//! I/O, budgets.

use serde_json::{json, Value};

use super::provider::Provider;

/// The output cap charged for a call that names none and is not capped by
/// a budget: the largest output current models allow.
pub const UNCAPPED_OUTPUT: u64 = 128_000;

/// What the agent's last metered call read, to scale the next estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LastCall {
    /// Input side tokens: input, cache read and cache write.
    pub input_tokens: u64,
    pub body_bytes: u64,
}

/// The input estimate of a request of `body_bytes`.
pub fn estimate_input(body_bytes: u64, last: Option<LastCall>) -> u64 {
    match last {
        Some(last) if last.body_bytes > 0 && last.input_tokens > 0 => {
            // Rounded up, in u128: a growing conversation never estimates low
            // by rounding, and no product overflows.
            let scaled = (last.input_tokens as u128 * body_bytes as u128).div_ceil(last.body_bytes as u128);
            u64::try_from(scaled).unwrap_or(u64::MAX)
        }
        _ => 0,
    }
}

/// The input a call that went upstream is charged at least when its
/// answer never said what it read: the estimate, or with no last call to
/// scale from, the body's bytes.
pub fn input_floor(body_bytes: u64, last: Option<LastCall>) -> u64 {
    match estimate_input(body_bytes, last) {
        0 => body_bytes,
        estimate => estimate,
    }
}

/// Why corral cannot bound or meter the request, if it cannot: a field
/// that multiplies or caps output written in a form corral does not read
/// (Gemini also takes its fields' proto names, `generation_config`,
/// `max_output_tokens`, `candidate_count`), an answer count that is not a
/// whole number from 1, or a Responses call run in the background (its
/// usage never comes through). Such a call is refused, never sent.
pub fn unbounded(provider: Provider, body: &Value) -> Option<String> {
    if provider == Provider::Gemini {
        let config = lookup(body, "generationConfig");
        let unread = [
            ("generation_config", lookup(body, "generation_config").is_some()),
            ("generationConfig.max_output_tokens", config.is_some_and(|c| c.get("max_output_tokens").is_some())),
            ("generationConfig.candidate_count", config.is_some_and(|c| c.get("candidate_count").is_some())),
        ];
        if let Some((field, _)) = unread.iter().find(|(_, present)| *present) {
            return Some(format!(
                "corral: the request sets `{field}`; corral bounds Gemini calls by `generationConfig.maxOutputTokens` \
                 and `generationConfig.candidateCount` and sends no call whose output it cannot bound"
            ));
        }
    }
    // A background response answers at once with no usage, and its
    // tokens are spent later, where no proxy sees them.
    if provider == Provider::OpenAiResponses && lookup(body, "background").is_some_and(|b| b != &json!(false)) {
        return Some(
            "corral: the request asks for a background response (`background`), whose usage never passes \
             corral's proxy; it was not sent"
                .to_owned(),
        );
    }
    let field = choices_field(provider)?;
    let value = lookup(body, field)?;
    value.as_u64().filter(|n| *n >= 1).is_none().then(|| {
        format!(
            "corral: the request's `{field}` is {value}, not a whole number from 1; corral sends no call whose \
             output it cannot bound"
        )
    })
}

/// The input a Responses call reads from what the upstream keeps rather
/// than from its body. `Ok(None)`: none, the body is the whole input.
/// `Ok(Some(id))`: the conversation up to response `id`
/// (`previous_response_id`), which the caller knows the size of only if
/// that response passed its proxy. `Err`: a stored input corral cannot
/// see the size of (`conversation`, a stored `prompt`, an id that is not
/// a string): the call is refused, never sent, since neither its estimate
/// nor, were its answer cut, its charge could hold what it reads.
pub fn stored_input(provider: Provider, body: &Value) -> Result<Option<String>, String> {
    if provider != Provider::OpenAiResponses {
        return Ok(None);
    }
    for (field, what) in [("conversation", "a stored conversation"), ("prompt", "a stored prompt")] {
        if lookup(body, field).is_some() {
            return Err(format!(
                "corral: the request reads {what} (`{field}`), whose size corral cannot see, so it cannot meter \
                 the call; it was not sent (send the input in the request instead)"
            ));
        }
    }
    match lookup(body, "previous_response_id") {
        None => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
        Some(other) => {
            Err(format!("corral: the request's `previous_response_id` is {other}, not a response id; it was not sent"))
        }
    }
}

/// How many answers the request asks for (Chat Completions' `n`, Gemini's
/// `generationConfig.candidateCount`; 1 when it says nothing): each may
/// run to the output cap. Call [`unbounded`] first.
pub fn choices(provider: Provider, body: &Value) -> u64 {
    choices_field(provider).and_then(|field| lookup(body, field)).and_then(Value::as_u64).unwrap_or(1).max(1)
}

fn choices_field(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::ChatCompletions => Some("n"),
        Provider::Gemini => Some("generationConfig.candidateCount"),
        Provider::Anthropic | Provider::OpenAiResponses => None,
    }
}

/// The output the request may run to by its own cap, if it names one:
/// the largest cap field it sets, times its [`choices`].
pub fn output_cap(provider: Provider, body: &Value) -> Option<u64> {
    let fields = provider.output_cap_fields().iter();
    let per_answer = fields.filter_map(|field| lookup(body, field).and_then(Value::as_u64)).max()?;
    Some(per_answer.saturating_mul(choices(provider, body)))
}

/// Lowers the request's output cap so that all its answers together stay
/// within `cap`: each cap field it sets (Chat Completions has two, and a
/// server may read either) is lowered to `cap` divided among its
/// [`choices`] (at least 1 each), or the API's own field is set when it
/// names none; a cap already lower is kept. Returns the output the call
/// may run to as sent (the cap per answer, times the answers).
pub fn lower_output_cap(provider: Provider, body: &mut Value, cap: u64) -> u64 {
    let answers = choices(provider, body);
    let per_answer = (cap / answers).max(1);
    let fields = provider.output_cap_fields();
    let present: Vec<&str> = fields.iter().copied().filter(|f| lookup(body, f).is_some()).collect();
    let targets = match (present.is_empty(), provider) {
        // Without either field, `max_tokens`: every server that speaks the
        // API knows it.
        (true, Provider::ChatCompletions) => vec!["max_tokens"],
        (true, _) => vec![fields[fields.len() - 1]],
        (false, _) => present,
    };
    let mut sent = 0;
    for field in targets {
        let lowered = lookup(body, field).and_then(Value::as_u64).map_or(per_answer, |asked| asked.min(per_answer));
        set(body, field, json!(lowered));
        sent = sent.max(lowered);
    }
    sent.saturating_mul(answers)
}

/// Chat Completions reports usage in a stream only when asked: ask.
pub fn ask_for_stream_usage(provider: Provider, body: &mut Value) {
    if provider != Provider::ChatCompletions || body.get("stream").and_then(Value::as_bool) != Some(true) {
        return;
    }
    if let Some(map) = body.as_object_mut() {
        let options = map.entry("stream_options").or_insert_with(|| json!({}));
        if !options.is_object() {
            *options = json!({});
        }
        options["include_usage"] = json!(true);
    }
}

/// The model the request names in its body.
pub fn model(body: &Value) -> Option<String> {
    body.get("model").and_then(Value::as_str).map(str::to_owned)
}

fn lookup<'a>(body: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(body, |v, key| v.get(key)).filter(|v| !v.is_null())
}

fn set(body: &mut Value, dotted: &str, value: Value) {
    let mut at = body;
    let mut keys = dotted.split('.').peekable();
    while let Some(key) = keys.next() {
        if !at.is_object() {
            *at = json!({});
        }
        let map = at.as_object_mut().expect("made an object above");
        if keys.peek().is_none() {
            map.insert(key.to_owned(), value);
            return;
        }
        at = map.entry(key.to_owned()).or_insert_with(|| json!({}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_is_estimated_at_nothing_then_from_the_last_call() {
        assert_eq!(estimate_input(4001, None), 0);
        let last = LastCall { input_tokens: 1000, body_bytes: 10_000 };
        assert_eq!(estimate_input(10_000, Some(last)), 1000);
        assert_eq!(estimate_input(12_001, Some(last)), 1201); // rounded up
        assert_eq!(estimate_input(u64::MAX, Some(LastCall { input_tokens: u64::MAX, body_bytes: 1 })), u64::MAX);
    }

    #[test]
    fn the_floor_of_a_first_call_is_its_bytes_then_the_estimate() {
        assert_eq!(input_floor(4001, None), 4001);
        let last = LastCall { input_tokens: 1000, body_bytes: 10_000 };
        assert_eq!(input_floor(12_001, Some(last)), 1201);
        assert_eq!(input_floor(500, Some(LastCall { input_tokens: 0, body_bytes: 10 })), 500);
    }

    #[test]
    fn the_cap_is_lowered_never_raised() {
        let mut body = json!({"model": "m", "max_tokens": 32000});
        assert_eq!(lower_output_cap(Provider::Anthropic, &mut body, 900), 900);
        assert_eq!(body["max_tokens"], 900);
        let mut body = json!({"max_tokens": 100});
        assert_eq!(lower_output_cap(Provider::Anthropic, &mut body, 900), 100);
        assert_eq!(body["max_tokens"], 100);
    }

    #[test]
    fn a_cap_is_set_where_each_api_reads_it() {
        let mut body = json!({"input": []});
        lower_output_cap(Provider::OpenAiResponses, &mut body, 50);
        assert_eq!(body["max_output_tokens"], 50);
        let mut body = json!({"messages": []});
        lower_output_cap(Provider::ChatCompletions, &mut body, 50);
        assert_eq!(body["max_tokens"], 50);
        let mut body = json!({"max_completion_tokens": 70});
        lower_output_cap(Provider::ChatCompletions, &mut body, 50);
        assert_eq!((body["max_completion_tokens"].as_u64(), body.get("max_tokens")), (Some(50), None));
        let mut body = json!({"contents": [], "generationConfig": {"temperature": 0.5}});
        lower_output_cap(Provider::Gemini, &mut body, 50);
        assert_eq!(body["generationConfig"], json!({"temperature": 0.5, "maxOutputTokens": 50}));
        assert_eq!(output_cap(Provider::Gemini, &body), Some(50));
    }

    #[test]
    fn every_cap_field_a_request_sets_is_lowered() {
        // A server may read either of Chat Completions' two fields.
        let mut body = json!({"max_completion_tokens": 100_000, "max_tokens": 10});
        assert_eq!(output_cap(Provider::ChatCompletions, &body), Some(100_000));
        assert_eq!(lower_output_cap(Provider::ChatCompletions, &mut body, 500), 500);
        assert_eq!((body["max_completion_tokens"].as_u64(), body["max_tokens"].as_u64()), (Some(500), Some(10)));
    }

    #[test]
    fn several_answers_share_the_cap_and_are_each_counted() {
        let mut body = json!({"n": 8, "max_tokens": 4000});
        assert_eq!(output_cap(Provider::ChatCompletions, &body), Some(32_000));
        assert_eq!(lower_output_cap(Provider::ChatCompletions, &mut body, 1000), 1000);
        assert_eq!(body["max_tokens"], 125);
        let mut body = json!({"n": 3});
        assert_eq!(lower_output_cap(Provider::ChatCompletions, &mut body, 1000), 999);
        assert_eq!(body["max_tokens"], 333);
        // Fewer tokens than answers: one each, counted as sent.
        let mut body = json!({"n": 8});
        assert_eq!(lower_output_cap(Provider::ChatCompletions, &mut body, 5), 8);
        let mut body = json!({"generationConfig": {"candidateCount": 4, "maxOutputTokens": 100}});
        assert_eq!(output_cap(Provider::Gemini, &body), Some(400));
        assert_eq!(lower_output_cap(Provider::Gemini, &mut body, 200), 200);
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 50);
        // Anthropic and Responses have no answer count: `n` is nothing to them.
        assert_eq!(output_cap(Provider::Anthropic, &json!({"n": 8, "max_tokens": 10})), Some(10));
    }

    #[test]
    fn what_corral_cannot_read_it_does_not_send() {
        for body in [json!({"n": 0}), json!({"n": 2.5}), json!({"n": "8"}), json!({"n": -1})] {
            let why = unbounded(Provider::ChatCompletions, &body).expect("refused");
            assert!(why.contains("`n`"), "{why}");
        }
        assert_eq!(unbounded(Provider::ChatCompletions, &json!({"n": 2, "max_tokens": 5})), None);
        assert_eq!(unbounded(Provider::ChatCompletions, &json!({"n": null})), None);
        for (body, field) in [
            (json!({"generation_config": {"max_output_tokens": 10}}), "generation_config"),
            (json!({"generationConfig": {"max_output_tokens": 10}}), "generationConfig.max_output_tokens"),
            (json!({"generationConfig": {"candidate_count": 2}}), "generationConfig.candidate_count"),
            (json!({"generationConfig": {"candidateCount": 0}}), "generationConfig.candidateCount"),
        ] {
            let why = unbounded(Provider::Gemini, &body).expect("refused");
            assert!(why.contains(&format!("`{field}`")), "{why}");
        }
        assert_eq!(unbounded(Provider::Gemini, &json!({"generationConfig": {"maxOutputTokens": 5}})), None);
        assert_eq!(unbounded(Provider::Anthropic, &json!({"n": "x"})), None);
        let why = unbounded(Provider::OpenAiResponses, &json!({"background": true})).expect("refused");
        assert!(why.contains("`background`"), "{why}");
        assert_eq!(unbounded(Provider::OpenAiResponses, &json!({"background": false})), None);
    }

    #[test]
    fn chat_streams_are_asked_for_usage() {
        let mut body = json!({"stream": true, "stream_options": {"include_usage": false}});
        ask_for_stream_usage(Provider::ChatCompletions, &mut body);
        assert_eq!(body["stream_options"]["include_usage"], true);
        let mut body = json!({"stream": false});
        ask_for_stream_usage(Provider::ChatCompletions, &mut body);
        assert!(body.get("stream_options").is_none());
    }
}
