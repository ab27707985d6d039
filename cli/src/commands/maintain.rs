//! `offload maintain`: maintain every table once, as `[maintenance]` (and
//! the flags, which override it) says, then exit: compaction of closed
//! partitions with many small files, manifest rewrite, snapshot expiry,
//! deletion of the files only expired snapshots referenced, and of orphans.
//! Never changes the committed rows or watermark; safe beside `offload run`.

use std::process::ExitCode;

use offload_core::{Error, MaintenanceSummary};
use serde_json::{Value, json};

use super::{Common, startup_failed};
use crate::app::{AppError, connect_sink};
use crate::config::{ByteSize, Dur, MaintenanceSection};
use crate::stack::Stack;

/// `offload maintain`.
#[derive(clap::Args, Debug, Clone)]
pub struct MaintainArgs {
    #[command(flatten)]
    common: Common,
    /// Size compaction aims its files at, e.g. 128MiB (maintenance.target_file_size).
    #[arg(long, value_name = "SIZE")]
    target_file_size: Option<ByteSize>,
    /// Live files a closed partition needs before it is compacted (maintenance.min_input_files).
    #[arg(long, value_name = "N")]
    min_input_files: Option<usize>,
    /// Also compact an unpartitioned table's one partition (maintenance.compact_open).
    #[arg(long, value_name = "BOOL")]
    compact_open: Option<bool>,
    /// Most entries per manifest a replace commit writes (maintenance.manifest_entries).
    #[arg(long, value_name = "N")]
    manifest_entries: Option<usize>,
    /// Manifests main may have before they are rewritten (maintenance.max_manifests).
    #[arg(long, value_name = "N")]
    max_manifests: Option<usize>,
    /// Snapshots younger than this are never expired (maintenance.snapshot_retention).
    #[arg(long, value_name = "DURATION")]
    snapshot_retention: Option<Dur>,
    /// Newest snapshots always kept (maintenance.keep_snapshots).
    #[arg(long, value_name = "N")]
    keep_snapshots: Option<usize>,
    /// Expire a snapshot only once it stopped being current this long ago (maintenance.delete_grace).
    #[arg(long, value_name = "DURATION")]
    delete_grace: Option<Dur>,
    /// Delete unreferenced files only once older than this (maintenance.orphan_grace).
    #[arg(long, value_name = "DURATION")]
    orphan_grace: Option<Dur>,
    /// Previous metadata files kept in the metadata log (maintenance.keep_metadata_files).
    #[arg(long, value_name = "N")]
    keep_metadata_files: Option<usize>,
    /// Attempts of a replace commit that keeps losing races (maintenance.max_commit_attempts).
    #[arg(long, value_name = "N")]
    max_commit_attempts: Option<u32>,
    /// Print JSON (one object with a `tables` array) instead of text.
    #[arg(long)]
    json: bool,
}

impl MaintainArgs {
    /// Puts the flags given over the file's values.
    pub fn apply(&self, m: &mut MaintenanceSection) {
        fn set<T: Copy>(to: &mut Option<T>, flag: Option<T>) {
            if flag.is_some() {
                *to = flag;
            }
        }
        set(&mut m.target_file_size, self.target_file_size);
        set(&mut m.min_input_files, self.min_input_files);
        set(&mut m.snapshot_retention, self.snapshot_retention);
        set(&mut m.keep_snapshots, self.keep_snapshots);
        set(&mut m.delete_grace, self.delete_grace);
        set(&mut m.orphan_grace, self.orphan_grace);
        set(&mut m.keep_metadata_files, self.keep_metadata_files);
        set(&mut m.compact_open, self.compact_open);
        set(&mut m.manifest_entries, self.manifest_entries);
        set(&mut m.max_manifests, self.max_manifests);
        set(&mut m.max_commit_attempts, self.max_commit_attempts);
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// What one maintenance did, as one line (without the table's name):
/// `compacted P partitions (F files -> N files, R rows, X MiB -> Y MiB),
/// manifests A -> B, expired S snapshots, deleted D files, O orphans`, or
/// `nothing to do`.
pub fn summary_line(s: &MaintenanceSummary) -> String {
    if s.is_noop() {
        return "nothing to do".to_owned();
    }
    format!(
        "compacted {} partitions ({} files -> {} files, {} rows, {} -> {}), manifests {} -> {}, \
         expired {} snapshots, deleted {} files, {} orphans",
        s.partitions_compacted,
        s.files_rewritten,
        s.files_written,
        s.rows_rewritten,
        mib(s.bytes_read),
        mib(s.bytes_written),
        s.manifests_before,
        s.manifests_after,
        s.snapshots_expired,
        s.files_deleted,
        s.orphans_deleted
    )
}

/// Every figure of a summary, as JSON.
pub fn summary_json(s: &MaintenanceSummary) -> Value {
    json!({
        "partitions_compacted": s.partitions_compacted,
        "files_rewritten": s.files_rewritten,
        "files_written": s.files_written,
        "rows_rewritten": s.rows_rewritten,
        "bytes_read": s.bytes_read,
        "bytes_written": s.bytes_written,
        "manifests_before": s.manifests_before,
        "manifests_after": s.manifests_after,
        "snapshots_expired": s.snapshots_expired,
        "files_deleted": s.files_deleted,
        "orphans_deleted": s.orphans_deleted,
        "commits": s.commits,
        "conflicts_retried": s.conflicts_retried,
        "noop": s.is_noop(),
    })
}

fn table_json(table: &str, r: &Result<MaintenanceSummary, Error>) -> Value {
    match r {
        Ok(s) => {
            let mut v = summary_json(s);
            v["table"] = json!(table);
            v["ok"] = json!(true);
            v
        }
        Err(e) => json!({
            "table": table,
            "ok": false,
            "kind": e.kind(),
            "error": e.to_string(),
        }),
    }
}

/// Runs the subcommand.
pub async fn main(args: MaintainArgs) -> ExitCode {
    let start = async {
        let mut cfg = args.common.load()?;
        args.apply(&mut cfg.maintenance);
        cfg.maintenance.validate()?;
        let sink = Stack::from_config(&cfg)?.sink(connect_sink(&cfg).await?);
        Ok::<_, AppError>((cfg.table_configs()?, sink))
    };
    let (tables, sink) = match start.await {
        Ok(v) => v,
        Err(e) => return startup_failed(&e),
    };
    let mut results = Vec::new();
    for t in &tables {
        let r = async { sink.open(t).await?.maintain().await }.await;
        if !args.json {
            match &r {
                Ok(s) => println!("{}: {}", t.name(), summary_line(s)),
                Err(e) => eprintln!("{}: FAILED ({}): {e}", t.name(), e.kind()),
            }
        }
        results.push((t.name().to_owned(), r));
    }
    if args.json {
        let doc = json!({
            "tables": results.iter().map(|(t, r)| table_json(t, r)).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values serialise")
        );
    }
    if results.iter().all(|r| r.1.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MaintainArgs,
    }

    #[test]
    fn every_flag_overrides_its_key_and_absent_flags_keep_the_file() {
        let mut m: MaintenanceSection = toml::from_str("keep_snapshots = 9\nmin_input_files = 3\n").unwrap();
        let cli = Cli::try_parse_from([
            "maintain",
            "--config",
            "x.toml",
            "--target-file-size",
            "64MiB",
            "--min-input-files",
            "4",
            "--compact-open",
            "true",
            "--manifest-entries",
            "7",
            "--max-manifests",
            "3",
            "--snapshot-retention",
            "2h",
            "--delete-grace",
            "0s",
            "--orphan-grace",
            "5m",
            "--keep-metadata-files",
            "6",
            "--max-commit-attempts",
            "2",
        ])
        .unwrap();
        cli.args.apply(&mut m);
        assert_eq!(m.target_file_size.map(|b| b.0), Some(64 << 20));
        assert_eq!(m.min_input_files, Some(4));
        assert_eq!(m.compact_open, Some(true));
        assert_eq!(m.manifest_entries, Some(7));
        assert_eq!(m.max_manifests, Some(3));
        assert_eq!(m.snapshot_retention.map(|d| d.0.as_secs()), Some(7200));
        assert_eq!(m.delete_grace.map(|d| d.0.as_secs()), Some(0));
        assert_eq!(m.orphan_grace.map(|d| d.0.as_secs()), Some(300));
        assert_eq!(m.keep_metadata_files, Some(6));
        assert_eq!(m.max_commit_attempts, Some(2));
        assert_eq!(m.keep_snapshots, Some(9), "no flag: the file's value stays");
    }
}
