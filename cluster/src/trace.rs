//! The trace context of the work in hand, as a W3C `traceparent`
//! (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`): set by an edge for the task that
//! handles a request, taken along when a message is forwarded to its owner on another node, and
//! logged on both sides, so one request's log lines share its trace id across the cluster.
//! When spans are exported, the program installs [`on_span`] so the request's span and the
//! forwarded message's span join the trace, and the `traceparent` carried on is the span's own.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// Makes a span the child of a `traceparent` and answers the span's own `traceparent`.
pub type Join = fn(&tracing::Span, &str) -> Option<String>;

static JOIN: OnceLock<Join> = OnceLock::new();

/// Installs the exporter's `join` (once per process).
pub fn on_span(join: Join) {
    let _ = JOIN.set(join);
}

/// The trace context of the work `span` covers: `given` continued (or a new trace), with
/// `span` joined to it when spans are exported. Records the trace id in the span's `trace_id`
/// field.
pub fn enter(span: &tracing::Span, given: Option<&str>) -> Arc<str> {
    let given = given.filter(|g| trace_id(g).is_some());
    let joined = JOIN
        .get()
        .and_then(|join| join(span, given.unwrap_or_default()))
        .filter(|own| trace_id(own).is_some());
    // `continue_or_start` makes a valid one: its trace id needs no second check.
    let own: Arc<str> = match joined {
        Some(own) => own.into(),
        None => Arc::from(continue_or_start(given).as_str()),
    };
    if let Some(id) = own.get(3..35) {
        span.record("trace_id", id);
    }
    own
}

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// Runs `work` with `traceparent` as its trace context. A plain function, not an `async` one:
/// the future it answers holds `work` once, not twice.
pub fn scope<F: Future>(traceparent: Arc<str>, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(traceparent, work)
}

/// Runs `work` with `traceparent` as its trace context when there is one.
pub async fn within<F: Future>(traceparent: Option<&str>, work: F) -> F::Output {
    match traceparent {
        Some(t) => CURRENT.scope(Arc::from(t), work).await,
        None => work.await,
    }
}

/// The trace context of the running task, owned, to put in a message.
pub fn carried() -> Option<String> {
    current().map(|t| t.to_string())
}

/// The trace context of the running task, if it has one.
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The trace id of a valid `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = parts.next().is_none()
        && hex(version, 2)
        && version != "ff"
        && hex(id, 32)
        && id.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then_some(id)
}

thread_local! {
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// `N` random bytes for ids that must not repeat but need not be unpredictable (trace, span and
/// request ids): a fast generator per thread, seeded from the operating system's.
pub fn id_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    IDS.with(|ids| ids.borrow_mut().fill_bytes(&mut bytes));
    bytes
}

/// A `traceparent` written in place, on the stack: every request makes one.
struct Written([u8; 55]);

impl Written {
    fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A new `traceparent` continuing `given` (its trace id, a new parent id) when it is valid, else
/// starting a new trace.
fn continue_or_start(given: Option<&str>) -> Written {
    // `00-` + 32 digits + `-` + 16 digits + `-01`.
    let mut out = *b"00-________________________________-________________-01";
    let (id, parent) = out[3..52].split_at_mut(32);
    match given.and_then(trace_id) {
        Some(given) => {
            id.copy_from_slice(given.as_bytes());
            id.make_ascii_lowercase();
        }
        None => {
            let mut fresh: [u8; 16] = id_bytes();
            fresh[15] |= 1; // never all zeros, which the format forbids
            let _ = hex::encode_to_slice(fresh, id);
        }
    }
    let mut span: [u8; 8] = id_bytes();
    span[7] |= 1;
    let _ = hex::encode_to_slice(span, &mut parent[1..]);
    Written(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_and_continued() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
        let next = continue_or_start(Some(tp));
        let next = next.as_str();
        assert_eq!(trace_id(next), trace_id(tp));
        assert_ne!(next, tp, "a new parent id");
        let fresh = continue_or_start(Some("garbage"));
        let fresh = fresh.as_str();
        assert!(trace_id(fresh).is_some());
        assert_eq!(fresh.len(), 55);
        let upper = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
        assert!(
            continue_or_start(Some(upper))
                .as_str()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }
}
