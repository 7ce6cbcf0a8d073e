//! The guest init (PID 1).
