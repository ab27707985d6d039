//! Passwords never reach Debug, Display or logs (feature `postgres`). Its own
//! test binary because it installs a process-wide tracing subscriber.
#![cfg(feature = "postgres")]

mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::{self, TestSchema};
use offload_core::{Error, Watermark, WatermarkStore};
use offload_watermark_store::PostgresStore;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every event and span field, at every level, from every thread.
struct Capture {
    text: Arc<Mutex<String>>,
    next_id: AtomicU64,
}

struct Writer<'a>(&'a mut String);

impl Visit for Writer<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        span.record(&mut Writer(&mut self.text.lock().unwrap()));
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        values.record(&mut Writer(&mut self.text.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = self.text.lock().unwrap();
        let _ = write!(
            text,
            "\n{} {}: ",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut Writer(&mut text));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// `url` with `secret` as the password (or its own password, if it has one).
fn with_password(url: &str, secret: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (userinfo, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    match userinfo.split_once(':') {
        Some((_, existing)) => (url.to_owned(), existing.to_owned()),
        None => (
            format!("{scheme}://{userinfo}:{secret}@{host}"),
            secret.to_owned(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_debug_display_and_logs() {
    let logs = Arc::new(Mutex::new(String::new()));
    tracing::subscriber::set_global_default(Capture {
        text: Arc::clone(&logs),
        next_id: AtomicU64::new(1),
    })
    .expect("the only subscriber in this test binary");

    // Trust authentication ignores the password, so the store connects.
    let (url, secret) = with_password(&pg::url(), "hunter2-s3cret");
    let schema = TestSchema::new();
    let builder = PostgresStore::builder(&url).schema(&schema.name);
    let mut shown = format!("{builder:?}");
    let store = builder
        .connect()
        .await
        .expect("connect with a password in the URL");
    let lease = store
        .acquire_lease("t", "a", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .compare_and_set(&lease, None, Watermark::new(1, 0))
        .await
        .unwrap();
    let e = store
        .compare_and_set(&lease, None, Watermark::new(2, 0))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WatermarkMismatch { .. }));
    store.recover_stale().await.unwrap();
    let _ = write!(shown, "{store:?} {store:#?} {e} {e:?}");
    assert!(shown.contains(":***@"), "the URL is shown, redacted: {shown}");

    // Failures carrying the URL: a closed port, a missing database.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("postgres://postgres:{secret}@127.0.0.1:{closed}/postgres");
    let (prefix, _) = url.rsplit_once('/').unwrap();
    for bad in [unreachable, format!("{prefix}/no_such_db_ows")] {
        let e = PostgresStore::builder(&bad)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect_err("cannot connect");
        let core: Error = e.into();
        let _ = write!(shown, " {core} {core:?} {:?}", std::error::Error::source(&core));
    }

    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.contains("watermark store connected") && logs.contains(":***@"),
        "the capture must see the store's own logs, with the URL redacted:\n{logs}"
    );
    assert!(!shown.contains(&secret), "password in Debug/Display: {shown}");
    assert!(!logs.contains(&secret), "password in logs:\n{logs}");
}
