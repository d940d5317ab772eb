//! What corral knows about each agent CLI (a *harness*): how to start it in
//! its headless structured mode, how to read its output into events and
//! token usage, and how to deliver a message to it. Also the scripted model
//! server (`mock_llm`) that stands in for a model provider on loopback.
//!
//! | module | what it holds |
//! |---|---|
//! | [`harness`] | [`Harness`], the CLIs as a type; every question about a harness is a method |
//! | [`claude`], [`codex`], [`gemini`], [`opencode`], [`aider`], [`generic`] | one CLI each: its command line, its output parser, its message delivery |
//! | [`launch`] | the shapes a launch shares ([`launch::Options`], [`launch::Launch`], [`launch::Delivery`]) |
//! | [`event`] | what every parser produces ([`HarnessEvent`], [`TokenUsage`], [`Parser`]) |
//! | [`mock_llm`] | the scripted model server |
//!
//! This crate depends on no other corral crate.

pub mod aider;
pub mod claude;
pub mod codex;
pub mod event;
pub mod gemini;
pub mod generic;
pub mod harness;
pub mod launch;
pub mod mock_llm;
pub mod opencode;

pub use claude::user_message_line;
pub use event::{parser_for, HarnessEvent, Parser, TokenUsage, UsageTotals};
pub use harness::{Harness, UnknownHarness};
