//! The conformance suite against the file store, each check in a fresh directory.
#![cfg(feature = "file")]

mod common;

use common::Guarded;
use offload_watermark_store::FileStore;

async fn fresh() -> Guarded<FileStore> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStore::open(dir.path()).expect("open file store");
    Guarded::new(store, dir)
}

offload_watermark_store::conformance_tests!(fresh);
