//! `IpcDirSink` beyond the conformance suite: the engine's late-row sweep
//! repairs into it, and a window commit is never lost to a racing repair
//! (both claim the next version; the window's fence is the watermark, which a
//! repair leaves unchanged, so the window takes the number after).

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, TimestampMicrosecondArray, UInt64Array};
use arrow_ipc::reader::FileReader;
use offload_core::memory::{MemorySource, MemoryStore, Row, schema};
use offload_core::{
    CommitMetadata, Error, Offloader, RepairMetadata, RunId, Sink, SinkTable, Staged, SystemClock,
    TableConfig, Watermark, Window,
};
use offload_examples::ipc_sink::{CommitKind, IpcDirSink};

fn table(name: &str) -> TableConfig {
    TableConfig::builder(name)
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap()
}

/// Every committed row, read back from the files the commits point at.
fn rows(sink: &IpcDirSink, t: &TableConfig) -> Vec<Row> {
    let mut out = Vec::new();
    for c in sink.commits(t).unwrap() {
        for b in FileReader::try_new(std::fs::File::open(&c.file).unwrap(), None).unwrap() {
            let b = b.unwrap();
            let col = |i: usize| b.column(i).clone();
            let ts = col(0);
            let ts = ts.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
            let seq = col(1);
            let seq = seq.as_any().downcast_ref::<UInt64Array>().unwrap();
            let v = col(2);
            let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
            out.extend((0..b.num_rows()).map(|i| (ts.value(i), seq.value(i), v.value(i))));
        }
    }
    out.sort_unstable();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_repairs_late_rows_into_ipc_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = table("trades");
    let source = Arc::new(MemorySource::new(SystemClock));
    let sink = IpcDirSink::new(dir.path());
    let engine = Offloader::builder(
        source.clone(),
        Arc::new(sink.clone()),
        Arc::new(MemoryStore::new(SystemClock)),
    )
    .build()
    .unwrap();
    let first: Vec<Row> = vec![(1_000, 1, 10), (1_000, 2, 11), (2_000, 1, 12)];
    source.insert("trades", &first);
    assert_eq!(engine.run_once(&t).await.unwrap().rows, 3);

    // Late: below the committed watermark (2000, 1), one at its very timestamp.
    let late: Vec<Row> = vec![(1_000, 0, 9), (1_500, 7, 13), (2_000, 0, 14)];
    source.insert("trades", &late);
    let run = engine.run_once(&t).await.unwrap();
    let sweep = run.sweep.expect("run_once sweeps");
    assert_eq!((sweep.late_rows, sweep.repaired_rows), (3, 3), "{sweep:?}");
    assert_eq!(run.rows, 0, "no new window");

    let mut want = first.clone();
    want.extend(late);
    want.sort_unstable();
    assert_eq!(rows(&sink, &t), want, "every row once");
    let commits = sink.commits(&t).unwrap();
    assert_eq!(
        commits.iter().map(|c| c.version).collect::<Vec<_>>(),
        [1, 2],
        "one window, one repair"
    );
    match &commits[1].kind {
        CommitKind::Repair { watermark, base, .. } => {
            assert_eq!(*watermark, Watermark::new(2_000, 1));
            assert_eq!(base.as_str(), "1");
        }
        other => panic!("expected a repair, got {other:?}"),
    }
    let handle = sink.open(&t).await.unwrap();
    let committed = handle.committed().await.unwrap().unwrap();
    assert_eq!(committed.until, Watermark::new(2_000, 1), "the watermark stays");
    assert_eq!(committed.version.as_str(), "2");

    // Nothing left to repair, and the next window still commits after the repair.
    source.insert("trades", &[(3_000, 1, 15)]);
    let run = engine.run_once(&t).await.unwrap();
    assert_eq!((run.rows, run.sweep.unwrap().late_rows), (1, 0));
    assert_eq!(sink.commits(&t).unwrap().len(), 3);
}

async fn stage(handle: &Arc<dyn SinkTable>, t: &TableConfig, rows: &[Row]) -> Box<dyn Staged> {
    let mut w = handle.begin(RunId::new(), schema(t)).await.unwrap();
    let ts = TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0)).with_timezone("UTC");
    let seq = UInt64Array::from_iter_values(rows.iter().map(|r| r.1));
    let v = Int64Array::from_iter_values(rows.iter().map(|r| r.2));
    w.write(RecordBatch::try_new(schema(t), vec![Arc::new(ts), Arc::new(seq), Arc::new(v)]).unwrap())
        .await
        .unwrap();
    w.finish().await.unwrap()
}

/// One window commit races several repairs, all staged at the same version:
/// the window always lands, at most one repair does (none if the window
/// moved the version first), and versions stay gapless. (The rare
/// interleaving where a repair takes the number between the window's fence
/// check and its rename, after which the window retries at the next number,
/// is not forced here: nothing in the sink lets a test pause between the two.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_commit_outlasts_racing_repairs() {
    const REPAIRS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let sink = IpcDirSink::new(dir.path());
    for round in 0..20 {
        let t = table(&format!("race_{round}"));
        let handle = sink.open(&t).await.unwrap();
        handle.prepare(schema(&t)).await.unwrap();
        let w0 = Watermark::new(10, 1);
        let a = stage(&handle, &t, &[(10, 1, 0)]).await;
        let first = CommitMetadata {
            window: Window::new(Watermark::MIN, w0).unwrap(),
            run_id: a.stats().run_id,
            engine_id: "test".into(),
            fencing_token: 1,
        };
        a.commit(&first).await.unwrap();
        let base = handle.committed().await.unwrap().unwrap().version;

        let barrier = Arc::new(tokio::sync::Barrier::new(REPAIRS + 1));
        let window = stage(&handle, &t, &[(20, 1, 1)]).await;
        let meta = CommitMetadata {
            window: Window::new(w0, Watermark::new(20, 1)).unwrap(),
            run_id: window.stats().run_id,
            engine_id: "test".into(),
            fencing_token: 1,
        };
        let b = barrier.clone();
        let window_task = tokio::spawn(async move {
            b.wait().await;
            window.commit(&meta).await
        });
        let mut repair_tasks = Vec::new();
        for r in 0..REPAIRS {
            let staged = stage(&handle, &t, &[(5, r as u64, 2)]).await;
            let m = RepairMetadata::new(base.clone(), w0, staged.stats().run_id, "test", 1, Vec::new(), 1);
            let b = barrier.clone();
            repair_tasks.push(tokio::spawn(async move {
                b.wait().await;
                staged.commit_repair(&m).await
            }));
        }
        window_task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: the window must land: {e}"));
        let mut repaired = 0;
        for task in repair_tasks {
            match task.await.unwrap() {
                Ok(()) => repaired += 1,
                Err(Error::RepairConflict { .. }) => {}
                Err(e) => panic!("round {round}: a losing repair must be a conflict, got {e}"),
            }
        }
        assert!(repaired <= 1, "round {round}: {repaired} repairs landed");
        let versions: Vec<u64> = sink.commits(&t).unwrap().iter().map(|c| c.version).collect();
        assert_eq!(
            versions,
            (1..=2 + repaired as u64).collect::<Vec<_>>(),
            "round {round}"
        );
        assert_eq!(rows(&sink, &t).len(), 2 + repaired, "round {round}");
        let committed = handle.committed().await.unwrap().unwrap();
        assert_eq!(committed.until, Watermark::new(20, 1), "round {round}");
    }
}
