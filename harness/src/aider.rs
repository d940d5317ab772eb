//! aider (to be written)
