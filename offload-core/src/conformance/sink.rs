//! Sink suite.
