//! The wire meters against the streams providers send and against streams
//! built to fool them: the charge is never below the truth.

use super::*;

const EST: Estimate = Estimate { input: 500, output: 4096 };

fn t(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
    TokenUsage { input, output, cache_read, cache_write }
}

/// Meters `body` fed in pieces of `step` bytes.
fn meter(provider: Provider, streamed: bool, body: &str, step: usize, end: End) -> Charge {
    let mut m = WireMeter::new(provider, 200, streamed);
    for piece in body.as_bytes().chunks(step.max(1)) {
        m.feed(piece);
    }
    m.finish(end, EST)
}

/// The same charge however the body is split.
fn meter_every_split(provider: Provider, body: &str) -> Charge {
    let whole = meter(provider, true, body, body.len(), End::Complete);
    for step in [1, 2, 3, 7, 64] {
        assert_eq!(meter(provider, true, body, step, End::Complete), whole, "split every {step} bytes");
    }
    whole
}

fn sse(events: &[&str]) -> String {
    events.iter().map(|e| format!("event: x\ndata: {e}\n\n")).collect()
}

fn anthropic_call(id: &str, input: u64, output: u64) -> Vec<String> {
    vec![
        format!(
            r#"{{"type":"message_start","message":{{"id":"{id}","model":"claude-x","usage":{{"input_tokens":{input},"output_tokens":1,"cache_read_input_tokens":30,"cache_creation_input_tokens":7}}}}}}"#
        ),
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.into(),
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#.into(),
        r#"{"type":"content_block_stop","index":0}"#.into(),
        format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn"}},"usage":{{"output_tokens":{output}}}}}"#
        ),
        r#"{"type":"message_stop"}"#.into(),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn anthropic_stream_counts_start_input_and_delta_output() {
    let body = sse(&refs(&anthropic_call("m1", 120, 70)));
    let charge = meter_every_split(Provider::Anthropic, &body);
    assert_eq!(charge.usage, t(120, 70, 30, 7));
    assert_eq!(charge.flag, None);
    assert_eq!(charge.model.as_deref(), Some("claude-x"));
}

#[test]
fn anthropic_crlf_lines_and_multiline_data_are_read() {
    let body = sse(&refs(&anthropic_call("m1", 120, 70))).replace('\n', "\r\n");
    assert_eq!(meter_every_split(Provider::Anthropic, &body).usage, t(120, 70, 30, 7));
}

#[test]
fn repeated_message_ids_in_one_response_never_lower_the_count() {
    // The same id started twice, the second time with smaller figures.
    let mut events = anthropic_call("same", 120, 70);
    events.insert(1, anthropic_call("same", 5, 1)[0].clone());
    let charge = meter_every_split(Provider::Anthropic, &sse(&refs(&events)));
    assert!(charge.usage.covers(&t(120, 70, 30, 7)), "{:?}", charge.usage);
}

#[test]
fn cumulative_usage_going_backwards_keeps_the_largest() {
    let mut events = anthropic_call("m1", 120, 70);
    events.insert(5, r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":3}}"#.into());
    assert_eq!(meter_every_split(Provider::Anthropic, &sse(&refs(&events))).usage, t(120, 70, 30, 7));
}

#[test]
fn events_out_of_order_count_in_full() {
    let mut events = anthropic_call("m1", 120, 70);
    events.swap(0, 4); // message_delta first, message_start late
    let charge = meter_every_split(Provider::Anthropic, &sse(&refs(&events)));
    assert_eq!(charge.usage, t(120, 70, 30, 7));
}

#[test]
fn a_stream_without_usage_is_charged_its_estimate_and_flagged() {
    let body = sse(&[
        r#"{"type":"message_start","message":{"id":"m1"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
        r#"{"type":"message_stop"}"#,
    ]);
    let charge = meter_every_split(Provider::Anthropic, &body);
    assert_eq!(charge.usage, t(EST.input, EST.output, 0, 0));
    assert!(charge.flag.is_some());
}

#[test]
fn usage_only_at_the_end_is_counted() {
    let body = sse(&[
        r#"{"type":"message_start","message":{"id":"m1"}}"#,
        r#"{"type":"message_delta","delta":{},"usage":{"input_tokens":900,"output_tokens":40,"cache_read_input_tokens":2}}"#,
        r#"{"type":"message_stop"}"#,
    ]);
    let charge = meter_every_split(Provider::Anthropic, &body);
    assert_eq!((charge.usage, charge.flag), (t(900, 40, 2, 0), None));
}

#[test]
fn a_cut_stream_is_charged_no_less_than_its_estimate() {
    let events = anthropic_call("m1", 120, 70);
    let body = sse(&refs(&events[..3]));
    for step in [1, 5, body.len()] {
        let charge = meter(Provider::Anthropic, true, &body[..body.len() - 3], step, End::Cut);
        // Input as seen (above the estimate's 500? no: 120 + cache 37 < 500,
        // so raised to the estimate), output the cap it was sent with.
        assert_eq!(charge.usage.input + charge.usage.cache_read + charge.usage.cache_write, EST.input);
        assert_eq!(charge.usage.output, EST.output);
        assert!(charge.flag.as_deref().unwrap().contains("cut"));
    }
}

#[test]
fn a_cut_after_the_final_usage_is_still_charged_no_less_than_its_estimate() {
    // The usage that came need not be the call's last: the rest of the
    // stream never arrived.
    let events = anthropic_call("m1", 120, 70);
    let body = sse(&refs(&events[..5]));
    let charge = meter(Provider::Anthropic, true, &body, 4, End::Cut);
    assert_eq!(charge.usage, t(EST.input - 37, EST.output, 30, 7));
    assert!(charge.flag.as_deref().unwrap().contains("cut"));
}

#[test]
fn usage_on_every_chunk_then_a_cut_is_charged_no_less_than_the_estimate() {
    // vLLM's `continuous_usage_stats`: usage with both sides on each chunk,
    // so the first chunk settles the call; then the stream is cut.
    let chunk = |completion: u64| {
        format!(
            "data: {{\"id\":\"c\",\"model\":\"m\",\"choices\":[{{\"delta\":{{\"content\":\"x\"}}}}],\
             \"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":{completion}}}}}\n\n"
        )
    };
    let body = format!("{}{}", chunk(1), chunk(2));
    let charge = meter(Provider::ChatCompletions, true, &body, 9, End::Cut);
    assert_eq!(charge.usage, t(EST.input, EST.output, 0, 0));
    // Read whole, its last figure stands.
    let body = format!("{}{}data: [DONE]\n\n", chunk(1), chunk(2000));
    assert_eq!(meter_every_split(Provider::ChatCompletions, &body).usage, t(10, 2000, 0, 0));
}

#[test]
fn an_input_above_the_estimate_is_kept() {
    let body = sse(&refs(&anthropic_call("m1", 9000, 70)[..1]));
    let charge = meter(Provider::Anthropic, true, &body, 9, End::Complete);
    assert_eq!(charge.usage, t(9000, EST.output, 30, 7));
}

#[test]
fn a_last_event_without_its_blank_line_counts() {
    let body = sse(&refs(&anthropic_call("m1", 120, 70)));
    let body = body.trim_end();
    assert_eq!(meter(Provider::Anthropic, true, body, 11, End::Complete).usage, t(120, 70, 30, 7));
}

#[test]
fn garbage_between_events_does_not_hide_usage() {
    let events = anthropic_call("m1", 120, 70);
    let mut body = String::from(": comment\n\ndata: {not json\n\n");
    body += &sse(&refs(&events));
    body.insert_str(body.len() / 2, "\nretry: 5\n");
    let charge = meter(Provider::Anthropic, true, &body, 13, End::Complete);
    assert!(charge.usage.covers(&t(120, 70, 30, 7)), "{:?}", charge.usage);
}

#[test]
fn anthropic_json_body_is_counted() {
    let body = r#"{"id":"m","type":"message","model":"claude-x","usage":{"input_tokens":12,"output_tokens":34,"cache_read_input_tokens":5}}"#;
    let charge = meter(Provider::Anthropic, false, body, 3, End::Complete);
    assert_eq!((charge.usage, charge.flag), (t(12, 34, 5, 0), None));
}

#[test]
fn an_error_status_is_charged_what_it_shows() {
    let mut m = WireMeter::new(Provider::Anthropic, 429, false);
    m.feed(br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#);
    assert_eq!(
        m.finish(End::Complete, EST),
        Charge { usage: TokenUsage::default(), flag: None, model: None, response_id: None }
    );
}

fn responses_completed(kind: &str, input: u64, cached: u64, output: u64) -> String {
    format!(
        r#"{{"type":"{kind}","response":{{"id":"r","object":"response","model":"gpt-x","usage":{{"input_tokens":{input},"input_tokens_details":{{"cached_tokens":{cached}}},"output_tokens":{output},"output_tokens_details":{{"reasoning_tokens":3}}}}}}}}"#
    )
}

#[test]
fn responses_stream_counts_the_final_event() {
    for kind in ["response.completed", "response.incomplete", "response.failed"] {
        let done = responses_completed(kind, 1000, 400, 50);
        let body = sse(&[
            r#"{"type":"response.created","response":{"id":"r","model":"gpt-x","usage":null}}"#,
            r#"{"type":"response.output_item.done","item":{"type":"message","role":"assistant","content":[]}}"#,
            &done,
        ]);
        let charge = meter_every_split(Provider::OpenAiResponses, &body);
        assert_eq!((charge.usage, charge.flag), (t(600, 50, 400, 0), None), "{kind}");
        assert_eq!(charge.model.as_deref(), Some("gpt-x"));
    }
}

#[test]
fn responses_without_a_final_event_is_charged_its_estimate() {
    let body = sse(&[r#"{"type":"response.created","response":{"id":"r","usage":null}}"#]);
    let charge = meter(Provider::OpenAiResponses, true, &body, 5, End::Cut);
    assert_eq!(charge.usage, t(EST.input, EST.output, 0, 0));
    assert!(charge.flag.is_some());
}

#[test]
fn responses_repeated_final_events_keep_the_largest() {
    let body = sse(&[
        &responses_completed("response.completed", 1000, 0, 50),
        &responses_completed("response.completed", 10, 0, 1),
    ]);
    assert_eq!(meter_every_split(Provider::OpenAiResponses, &body).usage, t(1000, 50, 0, 0));
}

#[test]
fn responses_json_body_is_counted() {
    let body = r#"{"id":"r","object":"response","model":"gpt-x","usage":{"input_tokens":70,"output_tokens":9}}"#;
    assert_eq!(meter(Provider::OpenAiResponses, false, body, 4, End::Complete).usage, t(70, 9, 0, 0));
}

#[test]
fn chat_completions_count_the_usage_chunk() {
    let body = concat!(
        "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":300,\"completion_tokens\":20,\"prompt_tokens_details\":{\"cached_tokens\":100}}}\n\n",
        "data: [DONE]\n\n"
    );
    let charge = meter_every_split(Provider::ChatCompletions, body);
    assert_eq!((charge.usage, charge.flag), (t(200, 20, 100, 0), None));
    assert_eq!(charge.model.as_deref(), Some("gpt-4o"));
}

#[test]
fn chat_completions_without_usage_is_charged_its_estimate() {
    let body = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let charge = meter_every_split(Provider::ChatCompletions, body);
    assert_eq!(charge.usage, t(EST.input, EST.output, 0, 0));
    assert!(charge.flag.is_some());
}

#[test]
fn chat_completions_json_body_is_counted() {
    let body = r#"{"id":"c","object":"chat.completion","model":"m","usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33}}"#;
    assert_eq!(meter(Provider::ChatCompletions, false, body, 5, End::Complete).usage, t(11, 22, 0, 0));
}

fn gemini_chunk(prompt: u64, candidates: u64, finish: bool) -> String {
    let finish = if finish { r#","finishReason":"STOP""# } else { "" };
    format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}],"role":"model"}}{finish}}}],"usageMetadata":{{"promptTokenCount":{prompt},"candidatesTokenCount":{candidates},"thoughtsTokenCount":4,"cachedContentTokenCount":10,"totalTokenCount":0}},"modelVersion":"gemini-2.5-pro"}}"#
    )
}

#[test]
fn gemini_stream_settles_on_the_finishing_chunk() {
    let body = format!("data: {}\r\n\r\ndata: {}\r\n\r\n", gemini_chunk(200, 3, false), gemini_chunk(200, 30, true));
    let charge = meter_every_split(Provider::Gemini, &body);
    assert_eq!((charge.usage, charge.flag), (t(190, 34, 10, 0), None));
    assert_eq!(charge.model.as_deref(), Some("gemini-2.5-pro"));
}

#[test]
fn gemini_cut_before_the_finish_is_charged_its_estimate() {
    let body = format!("data: {}\n\n", gemini_chunk(200, 3, false));
    let charge = meter(Provider::Gemini, true, &body, 6, End::Cut);
    assert_eq!(charge.usage, t(EST.input - 10, EST.output, 10, 0));
    assert!(charge.flag.is_some());
}

#[test]
fn gemini_counts_tools_prompts_and_whatever_else_its_total_holds() {
    let chunk = r#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":20,"toolUsePromptTokenCount":5000,"totalTokenCount":5120}}"#;
    let charge = meter_every_split(Provider::Gemini, &format!("data: {chunk}\n\n"));
    assert_eq!((charge.usage, charge.flag), (t(5100, 20, 0, 0), None));
    // A total above the parts it names: the rest is charged as output.
    let chunk = r#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":20,"totalTokenCount":900}}"#;
    assert_eq!(meter_every_split(Provider::Gemini, &format!("data: {chunk}\n\n")).usage, t(100, 800, 0, 0));
}

#[test]
fn gemini_json_array_body_is_counted() {
    let body = format!("[{},{}]", gemini_chunk(50, 1, false), gemini_chunk(50, 9, true));
    assert_eq!(meter(Provider::Gemini, false, &body, 8, End::Complete).usage, t(40, 13, 10, 0));
}

#[test]
fn an_overlong_event_line_flags_the_call_and_reading_goes_on() {
    let mut m = WireMeter::new(Provider::Anthropic, 200, true);
    m.feed(b"data: ");
    let junk = vec![b'x'; 1 << 20];
    for _ in 0..17 {
        m.feed(&junk);
    }
    m.feed(b"\n\n");
    for e in anthropic_call("m1", 120, 70) {
        m.feed(format!("data: {e}\n\n").as_bytes());
    }
    let charge = m.finish(End::Complete, EST);
    // The usage after it is read; the skipped line might have carried a
    // larger figure, so the call is charged no less than its estimate.
    assert_eq!(charge.usage, t(EST.input - 37, EST.output, 30, 7));
    assert!(charge.flag.as_deref().unwrap().contains("could not be read"), "{charge:?}");
}

#[test]
fn an_unreadable_event_after_the_final_usage_is_charged_no_less_than_the_estimate() {
    let mut events = anthropic_call("m1", 120, 70);
    events.push(r#"{"type":"message_delta","usage":{"output_tokens":99999"#.into());
    let charge = meter(Provider::Anthropic, true, &sse(&refs(&events)), 13, End::Complete);
    assert_eq!(charge.usage, t(EST.input - 37, EST.output, 30, 7));
    assert!(charge.flag.is_some());
}

#[test]
fn fractional_and_negative_counts_never_count_less() {
    let body = r#"{"type":"message","usage":{"input_tokens":10.2,"output_tokens":-5}}"#;
    let charge = meter(Provider::Anthropic, false, body, 100, End::Complete);
    // 10.2 rounds up; a negative output is no output figure at all, so the
    // call is unsettled and charged its estimate.
    assert_eq!(charge.usage, t(EST.input, EST.output, 0, 0));
    assert!(charge.flag.is_some());
}

#[test]
fn usage_spelled_with_escapes_is_still_read() {
    let mut events = anthropic_call("m1", 120, 70);
    events[4] = r#"{"type":"message_delta","delta":{},"\u0075sage":{"output_tokens":70}}"#.into();
    assert_eq!(meter_every_split(Provider::Anthropic, &sse(&refs(&events))).usage, t(120, 70, 30, 7));
}
