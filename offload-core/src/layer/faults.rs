use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;

use super::{Op, Policy};
use crate::Error;

/// What a `:stop` point runs instead of aborting; gets the point's name.
pub type StopHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Fault injection for the reliability suite: acts when execution reaches a
/// named point for the N-th time.
///
/// A spec is a comma-separated list of `<op name>.before` / `<op name>.after`
/// points ([`Op::name`]; `after` = the call returned `Ok`), each optionally
/// followed by `=N` (the N-th hit, default the first) and `:stop`. A point
/// aborts the process (like `kill -9`: no destructors, no flushing); a `:stop`
/// point runs the hook given to [`on_stop`](Faults::on_stop) instead and then
/// lets the call go on (the `offload` program freezes itself there with
/// `SIGSTOP`; without a hook, `:stop` aborts too).
///
/// Clones share their counters, so one `Faults` can sit in the source, sink
/// and store stacks at once.
///
/// Points that are not around an operation (steps inside an adapter, such as
/// the Iceberg sink's `maintain.commit`) are parsed with
/// [`parse_with`](Faults::parse_with), which names the extra points a spec
/// may arm (same `=N` and `:stop` syntax, no `.before`/`.after`), and are
/// reached by calling [`hit`](Faults::hit) with their name.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use offload_core::layer::Faults;
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let faults = Faults::parse("sink.commit.before:stop, store.compare_and_set.after=2:stop")
///     .unwrap()
///     .on_stop(Arc::new(move |point: &str| log.lock().unwrap().push(point.to_owned())));
/// assert_eq!(faults.points(), ["sink.commit.before", "store.compare_and_set.after"]);
/// assert!(Faults::parse("sink.comit.before").is_err());
/// assert!(Faults::parse("").unwrap().is_empty());
/// # let _ = seen;
/// ```
#[derive(Clone)]
pub struct Faults {
    points: Arc<[Point]>,
    on_stop: Option<StopHook>,
}

struct Point {
    name: String,
    /// The operation and side, or `None` for a named point ([`Faults::hit`]).
    op: Option<(Op, bool)>,
    nth: u64,
    stop: bool,
    seen: AtomicU64,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("points", &self.points())
            .field("on_stop", &self.on_stop.is_some())
            .finish()
    }
}

impl Faults {
    /// Parses a spec (see the type's docs). An unknown operation or a bad
    /// count is an [`Error::InvalidConfig`] naming the entry.
    pub fn parse(spec: &str) -> Result<Self, Error> {
        Self::parse_with(spec, &[])
    }

    /// Like [`parse`](Self::parse), also accepting the points in `named`
    /// (reached with [`hit`](Self::hit), not by an operation).
    ///
    /// ```
    /// use offload_core::layer::Faults;
    /// let f = Faults::parse_with("maintain.commit=2, sink.maintain.after", &["maintain.commit"]).unwrap();
    /// assert_eq!(f.points(), ["maintain.commit", "sink.maintain.after"]);
    /// f.hit("maintain.commit"); // the first time: not armed yet
    /// f.hit("maintain.outputs"); // not armed at all
    /// assert!(Faults::parse("maintain.commit").is_err());
    /// assert!(Faults::parse_with("maintain.comit", &["maintain.commit"]).is_err());
    /// ```
    pub fn parse_with(spec: &str, named: &[&str]) -> Result<Self, Error> {
        let mut points = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |reason: &str| Error::InvalidConfig {
                field: "faults",
                reason: format!("{entry:?}: {reason}"),
            };
            let (rest, stop) = match entry.strip_suffix(":stop") {
                Some(rest) => (rest, true),
                None => (entry, false),
            };
            let (name, nth) = match rest.split_once('=') {
                Some((name, n)) => match n.parse::<u64>() {
                    Ok(n) if n >= 1 => (name, n),
                    _ => return Err(bad("the count after '=' must be a positive integer")),
                },
                None => (rest, 1),
            };
            let op = if named.contains(&name) {
                None
            } else {
                let (op, after) = if let Some(op) = name.strip_suffix(".before") {
                    (op, false)
                } else if let Some(op) = name.strip_suffix(".after") {
                    (op, true)
                } else if named.is_empty() {
                    return Err(bad("a point ends in .before or .after"));
                } else {
                    return Err(bad(&format!(
                        "a point ends in .before or .after, or is one of {}",
                        named.join(", ")
                    )));
                };
                Some((Op::parse(op).ok_or_else(|| bad("unknown operation"))?, after))
            };
            points.push(Point {
                name: name.to_owned(),
                op,
                nth,
                stop,
                seen: AtomicU64::new(0),
            });
        }
        Ok(Self {
            points: points.into(),
            on_stop: None,
        })
    }

    /// Runs `hook` at `:stop` points instead of aborting.
    pub fn on_stop(mut self, hook: StopHook) -> Self {
        self.on_stop = Some(hook);
        self
    }

    /// Whether no point is armed.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The armed points' names, in spec order.
    pub fn points(&self) -> Vec<&str> {
        self.points.iter().map(|p| p.name.as_str()).collect()
    }

    /// Reaches the named point `name` (one given to
    /// [`parse_with`](Self::parse_with)): on its N-th hit it aborts the
    /// process, or runs the stop hook for a `:stop` point. Points of
    /// operations are reached by the layer itself.
    pub fn hit(&self, name: &str) {
        self.reach(|p| p.op.is_none() && p.name == name);
    }

    fn hit_op(&self, op: Op, after: bool) {
        self.reach(|p| p.op == Some((op, after)));
    }

    fn reach(&self, matches: impl Fn(&Point) -> bool) {
        for p in self.points.iter().filter(|p| matches(p)) {
            if p.seen.fetch_add(1, Ordering::SeqCst) + 1 != p.nth {
                continue;
            }
            match (&self.on_stop, p.stop) {
                (Some(hook), true) => {
                    tracing::warn!(point = %p.name, "fault point reached: running the stop hook");
                    hook(&p.name);
                }
                _ => {
                    eprintln!("fault point {} reached: aborting", p.name);
                    std::process::abort();
                }
            }
        }
    }
}

impl Policy for Faults {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>> {
        Box::pin(async move {
            let _ = table;
            self.hit_op(op, false);
            let r = call().await;
            if r.is_ok() {
                self.hit_op(op, true);
            }
            r
        })
    }
}
