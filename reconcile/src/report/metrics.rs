//! The report as `metrics` gauges, for dashboards and alerts.

use super::Report;
use crate::Verdict;

impl Report {
    /// Sets the `metrics` gauges (through whatever recorder is installed):
    ///
    /// * `offload_reconcile_rows{table, layer}`: rows over the range per layer
    ///   (`kafka`, `clickhouse`, `clickhouse_committed`, `iceberg`);
    /// * `offload_reconcile_problem_buckets{table, verdict}`: buckets per
    ///   verdict, every verdict (zeros included, so alerts resolve);
    /// * `offload_reconcile_status{table}`: the table's exit code (0, 1, 2).
    pub fn record_metrics(&self) {
        for t in &self.tables {
            let layers = [
                ("kafka", t.totals.kafka),
                ("clickhouse", t.totals.clickhouse),
                ("clickhouse_committed", t.totals.clickhouse_committed),
                ("iceberg", t.totals.iceberg),
            ];
            for (layer, v) in layers {
                if let Some(v) = v {
                    ::metrics::gauge!("offload_reconcile_rows", "table" => t.table.clone(), "layer" => layer)
                        .set(v as f64);
                }
            }
            for v in Verdict::ALL {
                let n = t.bucket_verdicts.get(&v).copied().unwrap_or(0);
                ::metrics::gauge!(
                    "offload_reconcile_problem_buckets",
                    "table" => t.table.clone(),
                    "verdict" => v.as_str()
                )
                .set(n as f64);
            }
            ::metrics::gauge!("offload_reconcile_status", "table" => t.table.clone())
                .set(f64::from(t.verdict.exit_code()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{TableReport, Totals};
    use super::*;
    use crate::{BucketSize, Error, Thresholds};

    /// Captures gauge values by `name{label=value,...}`.
    #[derive(Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<BTreeMap<String, f64>>>);

    struct Slot(String, std::sync::Arc<std::sync::Mutex<BTreeMap<String, f64>>>);

    impl ::metrics::GaugeFn for Slot {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, v: f64) {
            self.1.lock().unwrap().insert(self.0.clone(), v);
        }
    }

    impl ::metrics::Recorder for Capture {
        fn describe_counter(
            &self,
            _: ::metrics::KeyName,
            _: Option<::metrics::Unit>,
            _: ::metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: ::metrics::KeyName,
            _: Option<::metrics::Unit>,
            _: ::metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: ::metrics::KeyName,
            _: Option<::metrics::Unit>,
            _: ::metrics::SharedString,
        ) {
        }
        fn register_counter(&self, _: &::metrics::Key, _: &::metrics::Metadata<'_>) -> ::metrics::Counter {
            ::metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &::metrics::Key, _: &::metrics::Metadata<'_>) -> ::metrics::Gauge {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            ::metrics::Gauge::from_arc(std::sync::Arc::new(Slot(name, self.0.clone())))
        }
        fn register_histogram(
            &self,
            _: &::metrics::Key,
            _: &::metrics::Metadata<'_>,
        ) -> ::metrics::Histogram {
            ::metrics::Histogram::noop()
        }
    }

    #[test]
    fn metrics_gauges_per_table_layer_and_verdict() {
        let mut t = TableReport::failed("trades", "trades", &Error::Task("x".into()), 0);
        t.verdict = Verdict::Missing;
        t.error = None;
        t.totals = Totals {
            kafka: Some(10),
            clickhouse: Some(9),
            clickhouse_committed: Some(9),
            iceberg: Some(8),
        };
        t.bucket_verdicts = BTreeMap::from([(Verdict::Ok, 3), (Verdict::Missing, 2)]);
        let report = Report {
            generated_at: 0,
            generated_at_utc: String::new(),
            range_start: 0,
            range_end: 1,
            bucket: BucketSize::Minute,
            thresholds: Thresholds::default(),
            tables: vec![t],
            verdict: Verdict::Missing,
        };
        let capture = Capture::default();
        ::metrics::with_local_recorder(&capture, || report.record_metrics());
        let got = capture.0.lock().unwrap();
        assert_eq!(got["offload_reconcile_rows{table=trades,layer=iceberg}"], 8.0);
        assert_eq!(got["offload_reconcile_rows{table=trades,layer=kafka}"], 10.0);
        assert_eq!(
            got["offload_reconcile_problem_buckets{table=trades,verdict=missing}"],
            2.0
        );
        assert_eq!(
            got["offload_reconcile_problem_buckets{table=trades,verdict=duplicated}"],
            0.0
        );
        assert_eq!(got["offload_reconcile_status{table=trades}"], 1.0);
        assert_eq!(got.len(), 4 + Verdict::ALL.len() + 1);
    }
}
