//! event (to be written)
