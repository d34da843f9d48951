//! A room's messages: the history it keeps, publishing (admitted, then stored in batches), and
//! who may publish.

use std::sync::Arc;

use chrono::{SecondsFormat, SubsecRound, Utc};
use ractor::ActorRef;
use serde_json::Value;

use crate::EntityError;
use crate::event::EventMessage;
use crate::protocol::ServerFrame;
use crate::store::{RoomMessage, StoreError};

use super::{HISTORY, PublishReply, RoomCommand, RoomError, RoomKind, RoomState};

/// The `message` frame of a stored message.
pub fn message_frame(room: &str, m: &RoomMessage) -> Arc<str> {
    ServerFrame::Message {
        room: room.to_owned(),
        seq: m.seq,
        from: m.from,
        body: m.body.clone(),
        ts: m.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
    }
    .encode()
}

impl RoomState {
    pub(super) fn oldest(&self) -> i64 {
        self.history.front().map_or(self.seq + 1, |m| m.seq)
    }

    /// Messages after `since`, or a gap if some of them are no longer kept.
    pub(super) fn after(
        &self,
        since: i64,
    ) -> Result<impl Iterator<Item = &RoomMessage>, RoomError> {
        if since + 1 < self.oldest() && since < self.seq {
            return Err(RoomError::HistoryGap {
                oldest: self.oldest(),
            });
        }
        Ok(self.history.iter().filter(move |m| m.seq > since))
    }

    pub(super) async fn access(&self, user_id: i64) -> Result<bool, RoomError> {
        match self.kind {
            RoomKind::Open => Ok(true),
            RoomKind::Event(id) => {
                let answer = self
                    .events
                    .ask(crate::event::key(id), |reply| EventMessage::Access {
                        user_id,
                        reply,
                    })
                    .await
                    .map_err(|_| RoomError::Unavailable)?;
                match answer {
                    Ok(a) => Ok(a.creator || a.attendee),
                    Err(EntityError::NotFound) => Err(RoomError::NotFound),
                    Err(_) => Err(RoomError::Unavailable),
                }
            }
        }
    }

    /// Checks that the connection may publish; the message then waits for the next commit.
    pub(super) async fn admit(&mut self, conn_id: u64) -> Result<i64, RoomError> {
        let member = self.members.get(&conn_id).ok_or(RoomError::NotJoined)?;
        let (user_id, may_publish) = (member.user_id, member.may_publish);
        if !may_publish {
            // The user may have registered since joining.
            if !self.access(user_id).await? {
                return Err(RoomError::Forbidden);
            }
            if let Some(m) = self.members.get_mut(&conn_id) {
                m.may_publish = true;
            }
        }
        Ok(user_id)
    }

    /// Admits a message to the next commit.
    pub(super) async fn queue(
        &mut self,
        myself: &ActorRef<RoomCommand>,
        from: i64,
        body: Value,
        reply: PublishReply,
    ) {
        self.pending.push((from, body, reply));
        if !self.publish_scheduled {
            // Queued behind the publishes already in the mailbox: one commit for all. A
            // draining room (being handed off) takes no new messages: it commits at once.
            self.publish_scheduled = true;
            if myself.cast(RoomCommand::CommitMessages).is_err() {
                self.commit_pending().await;
            }
        }
    }

    /// Stores every waiting message in one transaction, then broadcasts and acknowledges each:
    /// a publisher's `ok` means its message is stored.
    pub(super) async fn commit_pending(&mut self) {
        self.publish_scheduled = false;
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return;
        }
        let ts = Utc::now().trunc_subsecs(6);
        let messages: Vec<RoomMessage> = pending
            .iter()
            .zip(self.seq + 1..)
            .map(|((from, body, _), seq)| RoomMessage {
                seq,
                from: *from,
                body: body.clone(),
                ts,
            })
            .collect();
        match self
            .store
            .append_room(self.name(), &messages, HISTORY as i64)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                if e == StoreError::Conflict {
                    // Another activation wrote these seqs: take up its history; clients retry.
                    let _ = self.load().await;
                }
                for (_, _, reply) in pending {
                    let _ = reply.send(Err(RoomError::Unavailable));
                }
                return;
            }
        }
        for (message, (_, _, reply)) in messages.into_iter().zip(pending) {
            self.seq = message.seq;
            self.broadcast_frames(vec![message_frame(self.name(), &message)]);
            let _ = reply.send(Ok(message.seq));
            self.history.push_back(message);
        }
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    pub(super) async fn load(&mut self) -> Result<(), StoreError> {
        self.history = self
            .store
            .load_room(self.key.id(), HISTORY as i64)
            .await?
            .into();
        self.seq = self.history.back().map_or(0, |m| m.seq);
        Ok(())
    }
}
