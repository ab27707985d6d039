//! The report for humans (a table of the buckets that need attention) and
//! for machines (JSON).

use std::fmt::Write as _;

use offload_core::rfc3339_micros;

use super::{BucketReport, Report, TableReport};
use crate::Verdict;

/// How to print a [`Report`] ([`Report::render`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// The human-readable table ([`Report::render_table`]).
    Table {
        /// Every bucket, not only those that are not `ok`.
        all_buckets: bool,
    },
    /// Pretty-printed JSON ([`Report::to_json`]), which parses back into a [`Report`].
    Json,
}

impl Report {
    /// The report as pretty-printed JSON (fingerprints as 16 hex digits, sums
    /// as decimal strings, so nothing loses precision in JavaScript).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// The report in `format`, ending with a newline (print it with `print!`).
    ///
    /// ```
    /// # use offload_reconcile::*;
    /// let r = Report::empty(TimeRange::new(0, 60_000_000, BucketSize::Minute).unwrap(), Thresholds::default());
    /// let json = r.render(Format::Json);
    /// assert!(json.ends_with('\n'));
    /// assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    /// assert!(r.render(Format::Table { all_buckets: false }).contains("verdict: OK"));
    /// ```
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table { all_buckets } => self.render_table(all_buckets),
            Format::Json => {
                let mut s = self.to_json();
                s.push('\n');
                s
            }
        }
    }

    /// A human-readable table of the buckets that are not `ok` (or of all
    /// buckets with `all_buckets`), with totals and findings.
    pub fn render_table(&self, all_buckets: bool) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "offload-reconcile  {} .. {}  by {}  verdict: {}  (generated {})",
            rfc3339_micros(self.range_start),
            rfc3339_micros(self.range_end),
            self.bucket,
            self.verdict.as_str().to_uppercase(),
            self.generated_at_utc
        );
        for t in &self.tables {
            render_one(&mut o, t, all_buckets);
        }
        o
    }
}

/// What the engine's late-row sweep does about the table's `missing`
/// buckets (see [`TableReport::late_repairable_buckets`]): one line each for
/// the buckets it repairs and for those it does not.
pub(crate) fn late_rows_hints(t: &TableReport) -> Vec<String> {
    let Some(horizon) = t.late_horizon_micros else {
        return Vec::new();
    };
    let h = offload_core::duration::format_duration(std::time::Duration::from_micros(
        horizon.max(0).unsigned_abs(),
    ));
    let plural = |n: u64| if n == 1 { "bucket is" } else { "buckets are" };
    let mut out = Vec::new();
    if t.late_repairable_buckets > 0 {
        out.push(format!(
            "{} missing {} within late_horizon ({h}) of the committed watermark ({} row(s) from {}): \
             the next `offload run` sweep repairs them (rows that arrived late)",
            t.late_repairable_buckets,
            plural(t.late_repairable_buckets),
            t.late_repairable_rows,
            t.late_repairable_from.map(rfc3339_micros).unwrap_or_default(),
        ));
    }
    if t.late_unrepairable_buckets > 0 {
        let (n, rows) = (t.late_unrepairable_buckets, t.late_unrepairable_rows);
        out.push(match t.late_repairable_from {
            Some(from) => format!(
                "{n} missing {} older than late_horizon ({h}; {rows} row(s) before {}): \
                 not repaired by the sweep; raise late_horizon and run again, or backfill",
                plural(n),
                rfc3339_micros(from),
            ),
            None => format!(
                "{n} missing {} not repaired by the sweep ({rows} row(s); late_horizon is {h}, the sweep is off): \
                 set late_horizon and run again, or backfill",
                plural(n),
            ),
        });
    }
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn render_one(o: &mut String, t: &TableReport, all_buckets: bool) {
    let _ = writeln!(o);
    let _ = write!(o, "table {}: {}", t.table, t.verdict.as_str().to_uppercase());
    if let Some(e) = &t.error {
        let _ = writeln!(o, "\n  error: {e}");
        return;
    }
    let counts: Vec<String> = t
        .bucket_verdicts
        .iter()
        .map(|(v, n)| format!("{n} {}", v.as_str()))
        .collect();
    let _ = writeln!(o, "  ({} buckets: {})", t.buckets.len(), counts.join(", "));
    let mut src = format!("  clickhouse {}", t.clickhouse_table);
    if let Some(i) = &t.iceberg_table {
        let _ = write!(src, "  iceberg {i}");
    }
    if let Some(k) = &t.kafka_topic {
        let _ = write!(src, "  kafka {k} ({})", t.kafka_method.as_deref().unwrap_or("?"));
    }
    let _ = writeln!(o, "{src}");
    if let Some(w) = &t.committed_watermark {
        let at = w
            .split_once(':')
            .and_then(|(ts, _)| ts.parse::<i64>().ok())
            .map(rfc3339_micros)
            .unwrap_or_default();
        let _ = writeln!(o, "  committed watermark {w} ({at})");
    } else if t.iceberg_table.is_some() {
        let _ = writeln!(o, "  committed watermark: none (nothing offloaded yet)");
    }
    if let Some(e) = t.expired_before {
        let _ = writeln!(o, "  ClickHouse TTL horizon {}", rfc3339_micros(e));
    }
    let cols: Vec<&str> = t.content_columns.iter().map(|c| c.name.as_str()).collect();
    let _ = writeln!(
        o,
        "  fingerprint: key + [{}]{}",
        cols.join(", "),
        if t.sum_columns.is_empty() {
            String::new()
        } else {
            format!(
                "  sums: [{}]",
                t.sum_columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    for s in &t.skipped_columns {
        let _ = writeln!(o, "  not fingerprinted: {s}");
    }
    let _ = writeln!(
        o,
        "  totals: kafka {}  clickhouse {}  clickhouse<=watermark {}  iceberg {}  ({} ms)",
        opt(t.totals.kafka),
        opt(t.totals.clickhouse),
        opt(t.totals.clickhouse_committed),
        opt(t.totals.iceberg),
        t.elapsed_ms
    );
    for line in late_rows_hints(t) {
        let _ = writeln!(o, "  {line}");
    }
    let shown: Vec<&BucketReport> = t
        .buckets
        .iter()
        .filter(|b| all_buckets || b.verdict != Verdict::Ok)
        .collect();
    if shown.is_empty() {
        let _ = writeln!(o, "  every bucket ok");
        return;
    }
    let _ = writeln!(
        o,
        "  {:<28} {:>10} {:>10} {:>10} {:>10}  {:<18} detail",
        "bucket (UTC)", "kafka", "clickhouse", "ch<=wm", "iceberg", "verdict"
    );
    for b in shown {
        let detail = b
            .findings
            .iter()
            .map(|f| {
                let mut s = format!(
                    "{}{}: {}",
                    f.upstream.map(|u| format!("{u}->")).unwrap_or_default(),
                    f.layer,
                    f.message
                );
                if f.tolerated {
                    s.push_str(" (tolerated)");
                }
                if !f.offsets.is_empty() {
                    let offs: Vec<String> = f.offsets.iter().map(ToString::to_string).collect();
                    let _ = write!(s, "; offsets {}", offs.join(" "));
                }
                if !f.keys.is_empty() {
                    let keys: Vec<String> = f
                        .keys
                        .iter()
                        .map(|k| format!("{}#{} {}", k.at, k.seq, k.kind.as_str()))
                        .collect();
                    let _ = write!(s, "; keys {}", keys.join(", "));
                }
                if f.unlisted > 0 && (!f.keys.is_empty() || !f.offsets.is_empty()) {
                    let _ = write!(s, " (+{} more)", f.unlisted);
                }
                s
            })
            .collect::<Vec<_>>()
            .join(" | ");
        let _ = writeln!(
            o,
            "  {:<28} {:>10} {:>10} {:>10} {:>10}  {:<18} {}",
            b.start_utc,
            opt(b.kafka.as_ref().map(|k| k.messages)),
            opt(b.clickhouse.as_ref().map(|f| f.rows)),
            opt(b.clickhouse_committed.as_ref().map(|f| f.rows)),
            opt(b.iceberg.as_ref().map(|f| f.rows)),
            b.verdict.as_str(),
            detail
        );
    }
}
