//! kiln-optimizer
