//! The user actor: owns one account's name, profile and role, and the revocation of its tokens.
//! Sign-up creates the row (no actor owns a user before it exists); every later change of the
//! account goes through its actor.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use convene_cluster::{Activation, EntityFactory, EntityKey, Inspect, ShardMessage, Spawning};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Value, json};

use crate::error::EntityError;
use crate::idle::{EntityArgs, Idle};
use crate::model::{DomainEvent, NewUser, User, topics};
use crate::store::{Store, StoreError};

convene_cluster::entity_messages! {
    /// Messages a user actor takes.
    pub enum UserMessage via UserRequest {
        ask {
            /// The account.
            Get {} -> Result<User, EntityError>,
            /// Change name and/or profile; answers the account as changed.
            Update {
                /// New display name.
                name: Option<String>,
                /// New profile object (replaces the old one).
                profile: Option<Value>,
                /// The caller's trace context, for the domain events.
                trace: Option<String>,
            } -> Result<User, EntityError>,
            /// Refuse a token of this user from now on.
            RevokeToken {
                /// The token's id.
                jti: String,
                /// When it expires anyway.
                expires_at: DateTime<Utc>,
            } -> Result<(), EntityError>,
        }
        tell {
            /// Panics inside the handler, for supervision tests and fault drills.
            InjectFault,
        }
        local {
            /// Idle check (sent by a timer).
            Tick,
        }
    }
}

/// The key of the user `id`.
pub fn key(id: i64) -> EntityKey {
    EntityKey::new(KIND, id)
}

/// The kind name of users in entity keys.
pub const KIND: &str = "user";

/// Creates an account; fails with `Conflict` (`email_taken`) when the address is in use.
pub async fn sign_up(store: &dyn Store, user: NewUser) -> Result<User, EntityError> {
    store.create_user(user).await.map_err(|e| match e {
        StoreError::Duplicate(_) => {
            EntityError::conflict("email_taken", "an account with this e-mail address exists")
        }
        other => other.into(),
    })
}

/// Starts user actors for the shard.
pub struct UserFactory {
    store: Arc<dyn Store>,
}

impl UserFactory {
    /// A factory whose actors keep their state in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl EntityFactory for UserFactory {
    type Msg = UserMessage;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn spawn(&self, key: EntityKey, activation: Activation<UserMessage>) -> Spawning<UserMessage> {
        let args = EntityArgs::new(key, self.store.clone(), &activation);
        activation.start(UserActor, args)
    }
}

/// The user actor.
pub struct UserActor;

/// Everything a user actor holds.
pub struct UserState {
    key: EntityKey,
    store: Arc<dyn Store>,
    shard: ActorRef<ShardMessage<UserMessage>>,
    idle: Idle,
    user: Option<User>,
}

impl Inspect for UserState {
    fn summary(&self) -> Value {
        match &self.user {
            Some(u) => serde_json::json!({
                "id": u.id,
                "name": u.name,
                "role": u.role.as_str(),
                "version": u.version,
            }),
            None => serde_json::json!({ "found": false }),
        }
    }
}

impl UserState {
    async fn load(&mut self) -> Result<(), StoreError> {
        self.user = self
            .store
            .load_user(self.key.numeric_id().unwrap_or(-1))
            .await?;
        Ok(())
    }

    async fn update(
        &mut self,
        name: Option<String>,
        profile: Option<Value>,
    ) -> Result<User, EntityError> {
        // One retry: a role granted from the command line bumps the version under the actor.
        for attempt in 0..2 {
            let current = self.user.clone().ok_or(EntityError::NotFound)?;
            let mut next = current.clone();
            if let Some(n) = &name {
                next.name = n.clone();
            }
            if let Some(p) = &profile {
                next.profile = p.clone();
            }
            next.version += 1;
            next.updated_at = Utc::now();
            let event = DomainEvent::new(
                topics::USER_UPDATED,
                self.key.to_string(),
                json!({"user_id": next.id, "name": next.name}),
                next.updated_at,
            );
            match self.store.save_user(&next, current.version, &[event]).await {
                Ok(()) => {
                    self.user = Some(next.clone());
                    return Ok(next);
                }
                Err(StoreError::Conflict) if attempt == 0 => self.load().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EntityError::conflict(
            "concurrent_update",
            "the account changed meanwhile; retry",
        ))
    }
}

impl Actor for UserActor {
    type Msg = UserMessage;
    type State = UserState;
    type Arguments = EntityArgs<UserMessage>;

    async fn pre_start(
        &self,
        myself: ActorRef<UserMessage>,
        args: EntityArgs<UserMessage>,
    ) -> Result<UserState, ActorProcessingErr> {
        let mut state = UserState {
            key: args.key,
            store: args.store,
            shard: args.shard,
            idle: Idle::new(args.idle_after),
            user: None,
        };
        state.load().await?;
        myself.send_interval(state.idle.tick_every(), || UserMessage::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<UserMessage>,
        message: UserMessage,
        state: &mut UserState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, UserMessage::Tick) {
            state.idle.touch();
        }
        match message {
            UserMessage::Get { reply } => {
                // The account is also written outside its actor (roles granted from the command
                // line), so a read refreshes it: one primary-key lookup.
                let answer = match state.load().await {
                    Ok(()) => state.user.clone().ok_or(EntityError::NotFound),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(answer);
            }
            UserMessage::Update {
                name,
                profile,
                trace,
                reply,
            } => {
                let answer =
                    convene_cluster::trace::within(trace.as_deref(), state.update(name, profile))
                        .await;
                let _ = reply.send(answer);
            }
            UserMessage::RevokeToken {
                jti,
                expires_at,
                reply,
            } => {
                let answer = match &state.user {
                    None => Err(EntityError::NotFound),
                    Some(_) => state
                        .store
                        .revoke_token(&jti, expires_at)
                        .await
                        .map_err(Into::into),
                };
                let _ = reply.send(answer);
            }
            UserMessage::Tick => state.idle.check(&state.shard, &state.key),
            UserMessage::InjectFault => panic!("fault injected into {}", state.key),
        }
        if state.user.is_none() {
            state.idle.release(&state.shard, &state.key);
        }
        Ok(())
    }
}
