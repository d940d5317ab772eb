//! corral-probes
