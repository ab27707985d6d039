//! Source suite.
