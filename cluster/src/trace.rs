//! The trace context of the work in hand, as a W3C `traceparent`
//! (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`): set by an edge for the task that
//! handles a request, taken along when a message is forwarded to its owner on another node, and
//! logged on both sides, so one request's log lines share its trace id across the cluster.

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// Runs `work` with `traceparent` as its trace context.
pub async fn scope<F: Future>(traceparent: Arc<str>, work: F) -> F::Output {
    CURRENT.scope(traceparent, work).await
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

/// A new `traceparent` continuing `given` (its trace id, a new parent id) when it is valid, else
/// starting a new trace.
pub fn continue_or_start(given: Option<&str>) -> String {
    let parent = format!("{:016x}", rand::random::<u64>() | 1);
    match given.and_then(trace_id) {
        Some(id) => format!("00-{}-{parent}-01", id.to_ascii_lowercase()),
        None => format!("00-{:032x}-{parent}-01", rand::random::<u128>() | 1),
    }
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
        assert_eq!(trace_id(&next), trace_id(tp));
        assert_ne!(next, tp, "a new parent id");
        let fresh = continue_or_start(Some("garbage"));
        assert!(trace_id(&fresh).is_some());
    }
}
