//! A keeper: the supervisor of one long-lived local actor (the outbox relay, the search
//! indexer) that starts it linked, starts a new one with the same arguments whenever it
//! fails, and stops it when stopped itself.

use std::marker::PhantomData;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

/// Keeps one `A` running.
pub struct Keeper<A>(PhantomData<fn() -> A>);

impl<A> Default for Keeper<A> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// The keeper takes no messages of its own; it acts on its child's supervision events.
pub enum KeeperMessage {}

impl ractor::Message for KeeperMessage {}

/// The keeper's state: what a child starts with, and the one running.
pub struct KeeperState<A: Actor> {
    args: A::Arguments,
    child: ActorRef<A::Msg>,
    /// Restarts so far, for the logs.
    restarts: u64,
}

/// The child running now under `keeper` (a new one after each restart).
pub fn child<M: ractor::Message>(keeper: &ActorRef<KeeperMessage>) -> Option<ActorRef<M>> {
    keeper
        .get_children()
        .into_iter()
        .next()
        .map(ActorRef::<M>::from)
}

impl<A> Actor for Keeper<A>
where
    A: Actor + Default,
    A::Arguments: Clone + Sync,
{
    type Msg = KeeperMessage;
    type State = KeeperState<A>;
    type Arguments = A::Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<KeeperMessage>,
        args: A::Arguments,
    ) -> Result<KeeperState<A>, ActorProcessingErr> {
        let (child, _) =
            Actor::spawn_linked(None, A::default(), args.clone(), myself.get_cell()).await?;
        Ok(KeeperState {
            args,
            child,
            restarts: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<KeeperMessage>,
        state: &mut KeeperState<A>,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state
            .child
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<KeeperMessage>,
        event: SupervisionEvent,
        state: &mut KeeperState<A>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, reason) = event {
            state.restarts += 1;
            let kind = std::any::type_name::<A>();
            tracing::error!(%reason, restarts = state.restarts, kind, "an actor failed; starting it again");
            let (child, _) =
                Actor::spawn_linked(None, A::default(), state.args.clone(), myself.get_cell())
                    .await?;
            state.child = child;
        }
        Ok(())
    }
}
