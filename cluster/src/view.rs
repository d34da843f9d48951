//! What a running entity actor publishes for reads that need not wait in its mailbox: its
//! current answer to a read. The actor sets it, and clears it before it handles anything that
//! may change its state, so a read served from it never misses a write that was acknowledged.
//! Routers on the same node read it only while the actor runs and this node owns its key (see
//! [`crate::Router::view`]); each activation has a view of its own, so what an actor that
//! stopped published is never read.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

type Published = Arc<dyn Any + Send + Sync>;

/// One activation's published answer.
#[derive(Clone, Default)]
pub struct View(Arc<Inner>);

#[derive(Default)]
struct Inner {
    current: RwLock<Option<Published>>,
    /// Read since the actor last asked: reads served here keep it from passivating.
    read: AtomicBool,
}

impl View {
    /// Publishes `answer`, which readers take as the entity's current one.
    pub fn publish<V: Any + Send + Sync>(&self, answer: V) {
        *self
            .0
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(answer));
    }

    /// Withdraws the published answer: readers ask the actor until it publishes again.
    pub fn clear(&self) {
        *self
            .0
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether an answer is published.
    pub fn is_published(&self) -> bool {
        self.0
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Whether it was read since the last call.
    pub fn take_read(&self) -> bool {
        self.0.read.swap(false, Ordering::Relaxed)
    }

    /// The published answer, if there is one of type `V`.
    pub(crate) fn read<V: Any + Send + Sync>(&self) -> Option<Arc<V>> {
        let current = self
            .0
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        // Written only when it is not yet set: readers on every core share the flag's line.
        if !self.0.read.load(Ordering::Relaxed) {
            self.0.read.store(true, Ordering::Relaxed);
        }
        current.downcast().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_what_was_published_until_it_is_cleared() {
        let view = View::default();
        assert!(view.read::<u32>().is_none());
        assert!(!view.take_read(), "nothing published, nothing read");
        view.publish(7u32);
        assert!(view.is_published());
        assert_eq!(view.read::<u32>().as_deref(), Some(&7));
        assert!(view.read::<String>().is_none(), "another type is not read");
        assert!(view.take_read());
        assert!(!view.take_read(), "taken once");
        view.clear();
        assert!(view.read::<u32>().is_none());
        assert!(!view.is_published());
    }
}
