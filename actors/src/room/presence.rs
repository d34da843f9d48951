//! Presence in a room: who is joined on which node, the diffs gathered over a window, the state a
//! joiner receives, counts instead of lists above the room's presence limit, pages of presence
//! on request, and taking the members back after the room moved or a node went down.

use std::sync::Arc;

use ractor::ActorRef;
use serde_json::Value;

use crate::fanout::{members_on, send_frames};
use crate::protocol::{Meta, PresenceMode, Presences, ReplyBody, ServerFrame};

use super::{
    COUNT_WINDOW, Joiner, Member, PRESENCE_WINDOW, PresencePage, RoomCommand, RoomError, RoomState,
    STATE_CHUNK, message_frame,
};

impl RoomState {
    pub(super) fn name(&self) -> &str {
        self.key.id()
    }

    /// `{user_id: {"metas": [...]}}` over (user, meta) pairs.
    pub(super) fn presences<'a>(entries: impl Iterator<Item = (i64, &'a Meta)>) -> Presences {
        let mut by_user = Presences::new();
        for (user, meta) in entries {
            by_user
                .entry(user.to_string())
                .or_default()
                .metas
                .push(meta.clone());
        }
        by_user
    }

    pub(super) fn broadcast(&self, frame: &ServerFrame) {
        self.broadcast_frames(vec![frame.encode()]);
    }

    pub(super) fn diff(&self, joins: Presences, leaves: Presences) -> ServerFrame {
        ServerFrame::PresenceDiff {
            room: self.name().to_owned(),
            joins,
            leaves,
        }
    }

    /// The room's counts, as members in counts mode receive them.
    fn count_frame(&self) -> ServerFrame {
        ServerFrame::PresenceCount {
            room: self.name().to_owned(),
            connections: self.members.len(),
            users: self.users.len(),
        }
    }

    /// Sends `frames` once to every node with members.
    pub(super) fn broadcast_frames(&self, frames: Vec<Arc<str>>) {
        for node in self.nodes.keys() {
            send_frames(
                &self.cluster,
                &self.fanout,
                node,
                self.name(),
                None,
                frames.clone(),
            );
        }
    }

    /// The shared name of `node`.
    pub(super) fn node_name(&self, node: &str) -> Arc<str> {
        self.nodes
            .get_key_value(node)
            .map_or_else(|| Arc::from(node), |(k, _)| k.clone())
    }

    pub(super) fn add_member(&mut self, conn_id: u64, member: Member) {
        *self.nodes.entry(member.node.clone()).or_default() += 1;
        *self.users.entry(member.user_id).or_default() += 1;
        if let Some(old) = self.members.insert(conn_id, member) {
            self.forget(&old);
        }
    }

    fn remove_member(&mut self, conn_id: u64) -> Option<Member> {
        let member = self.members.remove(&conn_id)?;
        self.forget(&member);
        Some(member)
    }

    /// Takes a member that is no longer one out of the per-node and per-user counts.
    fn forget(&mut self, member: &Member) {
        if let Some(n) = self.nodes.get_mut(&member.node) {
            *n -= 1;
            if *n == 0 {
                self.nodes.remove(&member.node);
            }
        }
        if let Some(n) = self.users.get_mut(&member.user_id) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&member.user_id);
            }
        }
    }

    pub(super) async fn join(
        &mut self,
        myself: &ActorRef<RoomCommand>,
        joiner: Joiner,
        since: Option<i64>,
        join_ref: Value,
    ) -> Result<(), RoomError> {
        let Joiner {
            conn_id,
            user_id,
            node,
            meta,
        } = joiner;
        let may_publish = self.access(user_id).await?;
        let missed: Vec<Arc<str>> = match since {
            Some(since) => self
                .after(since)?
                .map(|m| message_frame(self.name(), m))
                .collect(),
            None => Vec::new(),
        };
        if self.members.contains_key(&conn_id) {
            self.leave(myself, conn_id);
        }
        let member = Member {
            node: self.node_name(&node),
            user_id,
            meta: meta.clone(),
            may_publish,
        };
        self.add_member(conn_id, member);
        let mode = if self.counts_mode {
            PresenceMode::Counts
        } else {
            PresenceMode::Full
        };
        let reply = ReplyBody {
            room: Some(self.name().to_owned()),
            seq: Some(self.seq),
            presence: Some(mode),
            ..ReplyBody::default()
        };
        let mut frames = vec![ServerFrame::ok(join_ref, reply).encode()];
        if self.counts_mode {
            // The joiner is counted at once; everyone else learns of it with the next count.
            frames.push(self.count_frame().encode());
        } else {
            self.pending_joins.push((conn_id, user_id, meta));
            frames.extend(self.state_frames());
        }
        frames.extend(missed);
        send_frames(
            &self.cluster,
            &self.fanout,
            &node,
            self.name(),
            Some(conn_id),
            frames,
        );
        self.schedule_flush(myself);
        Ok(())
    }

    pub(super) fn leave(&mut self, myself: &ActorRef<RoomCommand>, conn_id: u64) {
        let Some(member) = self.remove_member(conn_id) else {
            return;
        };
        if !self.counts_mode {
            self.pending_leaves
                .push((conn_id, member.user_id, member.meta));
        }
        self.schedule_flush(myself);
    }

    /// Metas per frame for `n` metas: [`STATE_CHUNK`], or more when that would take more than
    /// the room's frame budget.
    pub(super) fn chunk(&self, n: usize) -> usize {
        STATE_CHUNK.max(n.div_ceil(self.presence.frames))
    }

    /// The presence last broadcast, as a joiner receives it: a `presence_state` with the first
    /// metas, then `presence_diff` joins with the rest, a chunk of metas a frame, so frames
    /// (and the connections' write buffers) stay small.
    pub(super) fn state_frames(&mut self) -> Vec<Arc<str>> {
        if let Some(f) = &self.state_frames {
            return f.clone();
        }
        let chunk = self.chunk(self.published.len());
        let entries: Vec<(i64, &Meta)> = self.published.values().map(|(u, m)| (*u, m)).collect();
        let mut chunks = entries.chunks(chunk);
        let first = Self::presences(chunks.next().unwrap_or_default().iter().copied());
        let state = ServerFrame::PresenceState {
            room: self.name().to_owned(),
            presences: first,
        };
        let mut frames = vec![state.encode()];
        for chunk in chunks {
            let joins = Self::presences(chunk.iter().copied());
            frames.push(self.diff(joins, Presences::new()).encode());
        }
        self.state_frames = Some(frames.clone());
        frames
    }

    pub(super) fn schedule_flush(&mut self, myself: &ActorRef<RoomCommand>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            let window = if self.counts_mode {
                COUNT_WINDOW
            } else {
                PRESENCE_WINDOW
            };
            myself.send_after(window, || RoomCommand::FlushPresence);
        }
    }

    /// Sends what changed since the last flush. In full mode, one `presence_diff` for every
    /// join and leave (joins apply first, so a connection that came and went within the window
    /// nets out); in counts mode, a `presence_count` when the counts changed. Crossing the
    /// presence limit switches to counts (every member receives a `presence_count`); falling
    /// to half of it switches back (every member receives the whole presence again).
    pub(super) fn flush_presence(&mut self) {
        self.flush_scheduled = false;
        if self.counts_mode {
            if self.members.len() <= self.presence.limit / 2 {
                self.full_mode();
            } else if self.counted != (self.members.len(), self.users.len()) {
                self.send_count();
            }
            return;
        }
        if self.members.len() > self.presence.limit {
            self.counts_mode = true;
            self.pending_joins.clear();
            self.pending_leaves.clear();
            self.published.clear();
            self.state_frames = None;
            tracing::info!(room = %self.key, members = self.members.len(), "room sends presence counts");
            self.send_count();
            return;
        }
        let joins = std::mem::take(&mut self.pending_joins);
        let leaves = std::mem::take(&mut self.pending_leaves);
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        for (conn, user, meta) in &joins {
            self.published.insert(*conn, (*user, meta.clone()));
        }
        for (conn, _, _) in &leaves {
            self.published.remove(conn);
        }
        self.state_frames = None;
        // Joins go out before leaves, a chunk of metas a frame, so a burst of arrivals neither
        // makes one large frame nor more frames than a connection's queue holds.
        let size = self.chunk(joins.len() + leaves.len());
        for chunk in joins.chunks(size) {
            let joins = Self::presences(chunk.iter().map(|(_, u, m)| (*u, m)));
            self.broadcast(&self.diff(joins, Presences::new()));
        }
        for chunk in leaves.chunks(size) {
            let leaves = Self::presences(chunk.iter().map(|(_, u, m)| (*u, m)));
            self.broadcast(&self.diff(Presences::new(), leaves));
        }
    }

    fn send_count(&mut self) {
        self.counted = (self.members.len(), self.users.len());
        self.broadcast(&self.count_frame());
    }

    /// Back to presence lists: every member receives the whole presence, and diffs resume.
    fn full_mode(&mut self) {
        self.counts_mode = false;
        self.counted = (0, 0);
        self.published = self
            .members
            .iter()
            .map(|(conn, m)| (*conn, (m.user_id, m.meta.clone())))
            .collect();
        self.state_frames = None;
        tracing::info!(room = %self.key, members = self.members.len(), "room sends presence lists");
        let frames = self.state_frames();
        self.broadcast_frames(frames);
    }

    /// The connections after `after`, at most `limit`, grouped by user.
    pub(super) fn presence_page(&self, after: Option<u64>, limit: usize) -> PresencePage {
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        let mut taken: Vec<(&u64, &Member)> = self
            .members
            .range((from, std::ops::Bound::Unbounded))
            .take(limit.saturating_add(1))
            .collect();
        let more = taken.len() > limit;
        taken.truncate(limit);
        let next = taken.last().filter(|_| more).map(|(id, _)| **id);
        PresencePage {
            presences: Self::presences(taken.iter().map(|(_, m)| (m.user_id, &m.meta))),
            connections: self.members.len(),
            users: self.users.len(),
            next,
        }
    }

    /// Takes back the connections the node's fan-out still delivers to (after a crash the
    /// clients are still there; only the actor's memory of them was lost). Presence is as it
    /// was for them, so no diff goes out; publish rights are checked again on the next publish.
    pub(super) async fn retrack(&mut self) {
        for node in self.cluster.live_nodes() {
            let members = members_on(&self.cluster, &self.fanout, &node, self.name())
                .await
                .unwrap_or_default();
            for m in members {
                let member = Member {
                    node: self.node_name(&node),
                    user_id: m.user_id,
                    meta: m.meta,
                    may_publish: false,
                };
                self.add_member(m.conn_id, member);
            }
        }
        if self.members.is_empty() {
            return;
        }
        tracing::info!(room = %self.key, members = self.members.len(), "room took back its connections");
        // The members may have missed presence changes while the room was away: they get the
        // whole presence again, or the counts in a large room.
        if self.members.len() > self.presence.limit {
            self.counts_mode = true;
            self.send_count();
        } else {
            self.full_mode();
        }
    }

    /// Members whose node went down leave.
    pub(super) fn check_nodes(&mut self, myself: &ActorRef<RoomCommand>) {
        let gone: Vec<Arc<str>> = self
            .nodes
            .keys()
            .filter(|n| !self.cluster.is_live(n))
            .cloned()
            .collect();
        for node in gone {
            let conns: Vec<u64> = self
                .members
                .iter()
                .filter(|(_, m)| m.node == node)
                .map(|(id, _)| *id)
                .collect();
            tracing::info!(room = %self.key, %node, members = conns.len(), "members of a node that went down leave");
            for id in conns {
                self.leave(myself, id);
            }
        }
    }
}
