//! codex (to be written)
