//! opencode (to be written)
