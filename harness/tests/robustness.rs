//! Hostile input for every parser: binary bytes, invalid UTF-8, a 1 MB
//! line, half a JSON object, empty lines, JSON of the wrong shape. None may
//! panic, and what comes out must be sensible: the structured parsers
//! (claude, codex, gemini, opencode) turn a non-JSON text line into
//! Progress, drop a line that starts like JSON but does not parse, and
//! ignore JSON of a shape they do not know; the text parsers (aider,
//! generic) turn anything readable into Progress. Text is always bounded.

use corral_harness::event::{
    parser_for, HarnessEvent, TokenUsage, UsageTotals, PROGRESS_MAX_CHARS, RESULT_TEXT_MAX_CHARS, SUMMARY_MAX_CHARS,
};

const ALL: [&str; 6] = ["claude", "codex", "gemini", "opencode", "aider", "generic"];
const STRUCTURED: [&str; 4] = ["claude", "codex", "gemini", "opencode"];

fn feed(harness: &str, line: &[u8]) -> Vec<HarnessEvent> {
    parser_for(harness).unwrap().feed_line(line)
}

/// Every text in `events` is within its bound.
fn assert_bounded(events: &[HarnessEvent]) {
    for e in events {
        match e {
            HarnessEvent::Progress { text } => {
                assert!(!text.is_empty());
                assert!(text.chars().count() <= PROGRESS_MAX_CHARS, "progress too long");
            }
            HarnessEvent::ToolUse { summary, .. } | HarnessEvent::ToolResult { summary, .. } => {
                assert!(summary.chars().count() <= SUMMARY_MAX_CHARS, "summary too long");
                assert!(!summary.contains('\n'));
            }
            HarnessEvent::Result { text: Some(t), .. } => {
                assert!(t.chars().count() <= RESULT_TEXT_MAX_CHARS, "result too long");
            }
            _ => {}
        }
    }
}

#[test]
fn empty_and_blank_lines_give_nothing() {
    for h in ALL {
        assert!(feed(h, b"").is_empty(), "{h}");
        assert!(feed(h, b"   \t  ").is_empty(), "{h}");
        assert!(feed(h, b"\r").is_empty(), "{h}");
    }
}

#[test]
fn binary_bytes_never_panic_and_stay_bounded() {
    let mut binary: Vec<u8> = (0u8..=255).collect();
    binary.extend((0u8..=255).rev());
    for h in ALL {
        let mut p = parser_for(h).unwrap();
        for chunk in binary.chunks(7) {
            assert_bounded(&p.feed_line(chunk));
        }
        let events = p.feed_line(&binary);
        assert_bounded(&events);
        assert_eq!(p.totals(), UsageTotals::default(), "{h}");
    }
}

#[test]
fn invalid_utf8_text_becomes_lossy_progress() {
    for h in ALL {
        let events = feed(h, b"warning: caf\xe9 \xff\xfe broken");
        assert_eq!(
            events,
            vec![HarnessEvent::Progress { text: "warning: caf\u{fffd} \u{fffd}\u{fffd} broken".into() }],
            "{h}"
        );
    }
}

#[test]
fn invalid_utf8_inside_json_is_dropped_by_structured_parsers() {
    let line = b"{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"\xff\"}]}}";
    for h in STRUCTURED {
        assert!(feed(h, line).is_empty(), "{h}");
    }
}

#[test]
fn half_a_json_object_is_dropped() {
    let halves: [&[u8]; 4] = [
        br#"{"type":"assistant","message":{"id":"m","content":[{"type":"text","te"#,
        br#"{"type":"turn.completed","usage":{"input_tokens":12"#,
        br#"{"#,
        br#"  {"type":"result","stats":"#,
    ];
    for h in STRUCTURED {
        let mut p = parser_for(h).unwrap();
        for half in halves {
            assert!(p.feed_line(half).is_empty(), "{h}");
        }
        assert_eq!(p.totals(), UsageTotals::default(), "{h}");
    }
}

#[test]
fn one_megabyte_lines_are_bounded() {
    let big_text = "é".repeat(512 * 1024); // 1 MB of UTF-8
    let plain = big_text.as_bytes();
    for h in ALL {
        let events = feed(h, plain);
        assert_eq!(events.len(), 1, "{h}");
        assert_bounded(&events);
    }
    // A 1 MB JSON line of each structured format, carrying a huge text.
    let claude = format!(
        r#"{{"type":"assistant","message":{{"id":"m1","content":[{{"type":"text","text":"{big_text}"}}],"usage":{{"input_tokens":3,"output_tokens":1}}}}}}"#
    );
    let codex = format!(
        r#"{{"type":"item.completed","item":{{"id":"item_0","type":"command_execution","command":"{big_text}","aggregated_output":"{big_text}","exit_code":0,"status":"completed"}}}}"#
    );
    let gemini = format!(r#"{{"type":"message","role":"assistant","content":"{big_text}"}}"#);
    let opencode = format!(r#"{{"type":"text","sessionID":"s","part":{{"type":"text","text":"{big_text}"}}}}"#);
    for (h, line, min_events) in
        [("claude", &claude, 2), ("codex", &codex, 2), ("gemini", &gemini, 1), ("opencode", &opencode, 2)]
    {
        let events = feed(h, line.as_bytes());
        assert!(events.len() >= min_events, "{h}: {}", events.len());
        assert_bounded(&events);
        let first_text = events.iter().find_map(|e| match e {
            HarnessEvent::Progress { text } => Some(text),
            HarnessEvent::ToolUse { summary, .. } => Some(summary),
            _ => None,
        });
        assert!(first_text.unwrap().ends_with('…'), "{h}");
    }
    // A huge Claude result text is bounded too.
    let result = format!(r#"{{"type":"result","subtype":"success","is_error":false,"result":"{big_text}"}}"#);
    assert_bounded(&feed("claude", result.as_bytes()));
}

#[test]
fn json_of_the_wrong_shape_is_ignored() {
    let wrong: [&[u8]; 14] = [
        br#"[1,2,3]"#,
        br#""just a string""#,
        br#"42"#,
        br#"null"#,
        br#"{}"#,
        br#"{"type":5}"#,
        br#"{"type":"assistant","message":"oops"}"#,
        br#"{"type":"assistant","message":{"content":"not blocks","usage":[1]}}"#,
        br#"{"type":"user","message":{"content":[{"type":"tool_result"}]}}"#,
        br#"{"type":"item.completed","item":[]}"#,
        br#"{"type":"turn.completed","usage":"lots"}"#,
        br#"{"type":"result","stats":"x","modelUsage":[1],"usage":7}"#,
        br#"{"type":"step_finish","part":{"tokens":"many","cost":"free"}}"#,
        br#"{"type":"tool_use","part":null,"parameters":7}"#,
    ];
    for h in STRUCTURED {
        let mut p = parser_for(h).unwrap();
        for line in wrong {
            let events = p.feed_line(line);
            assert_bounded(&events);
            for e in &events {
                // Nothing made-up: no usage from figures that are not numbers.
                if let HarnessEvent::Usage { total, .. } = e {
                    assert_eq!(*total, TokenUsage::default(), "{h}");
                }
            }
        }
        assert_eq!(p.totals().tokens, TokenUsage::default(), "{h}");
    }
    // Non-object lines and unknown types give nothing at all.
    for h in STRUCTURED {
        for line in &wrong[..6] {
            assert!(feed(h, line).is_empty(), "{h} {line:?}");
        }
    }
}

#[test]
fn odd_numbers_never_overflow_or_go_negative() {
    let lines: [&[u8]; 4] = [
        br#"{"type":"turn.completed","usage":{"input_tokens":-5,"cached_input_tokens":1e300,"output_tokens":18446744073709551615}}"#,
        br#"{"type":"assistant","message":{"id":"m","content":[],"usage":{"input_tokens":18446744073709551615,"output_tokens":18446744073709551615}}}"#,
        br#"{"type":"result","status":"success","stats":{"total_tokens":-1,"input_tokens":1.5,"output_tokens":null}}"#,
        br#"{"type":"step_finish","sessionID":"s","part":{"id":"p","tokens":{"input":18446744073709551615,"output":18446744073709551615,"reasoning":18446744073709551615},"cost":-3}}"#,
    ];
    for h in STRUCTURED {
        let mut p = parser_for(h).unwrap();
        for line in lines {
            assert_bounded(&p.feed_line(line));
            assert_bounded(&p.feed_line(line));
        }
        let totals = p.totals();
        let _ = totals.tokens.total(); // saturates rather than overflowing
        assert!(totals.cost_usd.is_none_or(|c| c >= 0.0), "{h}");
    }
}

#[test]
fn deeply_nested_json_does_not_blow_the_stack() {
    let mut line = String::from(r#"{"type":"assistant","message":"#);
    line.push_str(&"[".repeat(100_000));
    line.push_str(&"]".repeat(100_000));
    line.push('}');
    for h in ALL {
        assert_bounded(&feed(h, line.as_bytes()));
    }
}

#[test]
fn structured_parsers_show_plain_text_lines() {
    for h in STRUCTURED {
        assert_eq!(
            feed(h, b"\x1b[31mError: could not reach the API\x1b[0m"),
            vec![HarnessEvent::Progress { text: "Error: could not reach the API".into() }],
            "{h}"
        );
    }
}
