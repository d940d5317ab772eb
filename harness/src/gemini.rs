//! gemini (to be written)
