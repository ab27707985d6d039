//! The typed report (`model`: per-layer figures, findings, bucket, table and
//! overall verdicts), rendered as a human table or JSON (`render`:
//! [`Report::render`]), exported as `metrics` gauges (`metrics`:
//! [`Report::record_metrics`]).

mod metrics;
mod model;
mod render;

pub use model::*;
pub use render::Format;
