//! claude (to be written)
